package layers

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"sync"
)

// A whole-buffer inflater for qcow2's zlib clusters (raw deflate, RFC 1951).
//
// Reading a compressed cluster is a whole-buffer job: the compressed bytes
// are all in memory and the output is exactly one cluster, so the decoder
// writes straight into the cluster, copies matches from the cluster itself
// (no 32 KiB window to copy through), and reads its input eight bytes at a
// time into a 64-bit bit buffer. Streaming decoders can do none of these,
// and the profile of a zlib image read (issue 10) was four fifths inflate.
//
// What it accepts is exactly what compress/flate accepts read the way
// QEMU's qcow2_zlib_decompress reads (output stops when the cluster is
// full; what follows is never looked at): the same bytes, or both refuse.
// FuzzInflate holds it to that on arbitrary input. Three rules of
// compress/flate matter for streams cut short or hostile, and are kept:
//   - before a literal/length symbol is decoded, at least as many bits as
//     the shortest code (or the end-of-block code, if longer) must be left
//     in the input, even when the symbol's own code is shorter;
//   - a Huffman code must be complete, except a code of one symbol of
//     length one, whose unused bit pattern is an error when met; an empty
//     code is accepted and is an error when used;
//   - a symbol is checked whole (code, extra bits, distance) before any of
//     its output is written, so a stream that fails fills the cluster only
//     with what came before the failure.

// Errors of inflate. Callers treat them all as "the cluster is corrupt";
// they differ for the log line.
var (
	errInflateShort   = errors.New("stream ends before one cluster")
	errInflateInput   = errors.New("deflate stream cut short")
	errInflateCorrupt = errors.New("invalid deflate stream")
)

// Table entries: one uint32 per bit pattern of the low table bits.
//
//	bits 0-4   code length in bits (0: no code has this pattern)
//	bit 5      literal: bits 16-23 hold the byte
//	bit 6      end of block
//	bit 7      link: bits 16-31 index the subtable (of 2^(15-table bits)
//	           entries, indexed by the bits after the table's)
//	bit 12     bad symbol (a length or distance code RFC 1951 reserves)
//	bits 8-11  extra bits to read after the code (lengths and distances)
//	bits 16-31 base length or distance
const (
	entLen     = 0x1f
	entLiteral = 1 << 5
	entEOB     = 1 << 6
	entLink    = 1 << 7
	entBad     = 1 << 12
)

const (
	litTableBits  = 10
	distTableBits = 8
	clTableBits   = 7 // code-length codes are at most 7 bits: no subtables
	// Table sizes for the worst case: the main table, and one subtable
	// of 2^(15-tableBits) entries per code longer than tableBits.
	litTableSize  = 1<<litTableBits + 288<<(15-litTableBits)
	distTableSize = 1<<distTableBits + 32<<(15-distTableBits)
	litSubMask    = 1<<(15-litTableBits) - 1
	distSubMask   = 1<<(15-distTableBits) - 1
)

// Per-symbol entries (without the code length), for the table builder.
var (
	litSyms  [288]uint32
	distSyms [32]uint32
	clSyms   [19]uint32
)

// The fixed Huffman tables of RFC 1951 section 3.2.6.
var (
	fixedLit     [litTableSize]uint32
	fixedDist    [distTableSize]uint32
	fixedLitMin  int
	fixedDistMin int
)

func init() {
	for s := 0; s < 256; s++ {
		litSyms[s] = entLiteral | uint32(s)<<16
	}
	litSyms[256] = entEOB
	base := [...]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	extra := [...]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	for i := range base {
		litSyms[257+i] = uint32(base[i])<<16 | uint32(extra[i])<<8
	}
	litSyms[286], litSyms[287] = entBad, entBad
	for s := 0; s < 30; s++ {
		var b, x int
		if s < 4 {
			b = s + 1
		} else {
			x = (s - 2) >> 1
			b = 1<<(x+1) + 1 + (s&1)<<x
		}
		distSyms[s] = uint32(b)<<16 | uint32(x)<<8
	}
	distSyms[30], distSyms[31] = entBad, entBad
	for s := range clSyms {
		clSyms[s] = uint32(s) << 16
	}

	var lens [288]uint8
	for i := range lens {
		switch {
		case i < 144:
			lens[i] = 8
		case i < 256:
			lens[i] = 9
		case i < 280:
			lens[i] = 7
		default:
			lens[i] = 8
		}
	}
	var ok bool
	if fixedLitMin, ok = buildTable(fixedLit[:], lens[:], litSyms[:], litTableBits); !ok {
		panic("fixed literal/length code")
	}
	for i := range 32 {
		lens[i] = 5
	}
	if fixedDistMin, ok = buildTable(fixedDist[:], lens[:32], distSyms[:], distTableBits); !ok {
		panic("fixed distance code")
	}
}

// buildTable fills t with the decoding table of the canonical Huffman code
// (RFC 1951 section 3.2.2) whose code lengths are lens (0: no code), for
// lookups by the low tableBits bits of the bit buffer; codes longer than
// that continue in a subtable per prefix. syms gives each symbol's entry.
// It returns the shortest code length, and false for a code that
// compress/flate's huffmanDecoder.init refuses: over-subscribed, or
// incomplete unless it is one code of length one. Unused patterns of an
// accepted code (none, for a complete one) are left zero: "no code".
func buildTable(t []uint32, lens []uint8, syms []uint32, tableBits uint) (minLen int, ok bool) {
	var count [16]int
	maxLen := 0
	for _, n := range lens {
		if n == 0 {
			continue
		}
		if minLen == 0 || int(n) < minLen {
			minLen = int(n)
		}
		maxLen = max(maxLen, int(n))
		count[n]++
	}
	clear(t[:1<<tableBits])
	if maxLen == 0 {
		return 0, true // empty: every lookup finds "no code"
	}
	var next [16]int
	code := 0
	for n := 1; n <= maxLen; n++ {
		code <<= 1
		next[n] = code
		code += count[n]
	}
	if code != 1<<maxLen && !(code == 1 && maxLen == 1) {
		return 0, false
	}
	// Codes longer than tableBits: their first tableBits bits (MSB-first
	// prefix p) are the values from firstLink up; each gets a subtable of
	// 2^subBits entries after the main table, as many as the longest code
	// deflate allows needs, so that lookups shift and mask by constants.
	subBits := 15 - tableBits
	firstLink := 1 << tableBits
	if uint(maxLen) > tableBits {
		firstLink = next[tableBits+1] >> 1
		for p := firstLink; p < 1<<tableBits; p++ {
			sub := 1<<tableBits + (p-firstLink)<<subBits
			t[reverse(p, tableBits)] = entLink | uint32(sub)<<16
		}
	}
	for s, n := range lens {
		if n == 0 {
			continue
		}
		c := next[n]
		next[n]++
		e := syms[s] | uint32(n)
		if uint(n) <= tableBits {
			for i := reverse(c, uint(n)); i < 1<<tableBits; i += 1 << n {
				t[i] = e
			}
			continue
		}
		rest := uint(n) - tableBits
		p := c >> rest
		sub := 1<<tableBits + (p-firstLink)<<subBits
		for i := reverse(c&(1<<rest-1), rest); i < 1<<subBits; i += 1 << rest {
			t[sub+i] = e
		}
	}
	return minLen, true
}

// reverse returns the low n bits of c in reverse order: deflate sends
// Huffman codes most significant bit first into a stream read from the
// least significant bit.
func reverse(c int, n uint) int {
	return int(bits.Reverse16(uint16(c)) >> (16 - n))
}

// inflater holds the tables of the dynamic blocks of one stream.
type inflater struct {
	lit  [litTableSize]uint32
	dist [distTableSize]uint32
	cl   [1 << clTableBits]uint32
	lens [286 + 30]uint8
}

var inflaters = sync.Pool{New: func() any { return new(inflater) }}

// inflate fills dst from the raw deflate stream src.
func inflate(dst, src []byte) error {
	f := inflaters.Get().(*inflater)
	defer inflaters.Put(f)
	return f.inflate(dst, src)
}

// bitReader is the input: a 64-bit buffer of the next bits of src (the
// next one lowest), refilled a byte at a time past the last 8 bytes of
// src, with zero bytes past its end that are counted in over: a field
// that reaches into them was cut short.
type bitReader struct {
	buf  uint64
	n    uint // valid bits in buf, padding included
	in   int  // next byte of src to load
	over int  // padding bytes loaded
	src  []byte
}

// refill loads bytes until at least 56 bits are buffered.
func (r *bitReader) refill() {
	if r.in+8 <= len(r.src) {
		// Load 8 bytes, keep whole bytes: the bits above n that the
		// next load repeats are the same bits, so ORing them is harmless.
		r.buf |= binary.LittleEndian.Uint64(r.src[r.in:]) << r.n
		r.in += int(63-r.n) >> 3
		r.n |= 56
		return
	}
	for r.n <= 56 {
		if r.in < len(r.src) {
			r.buf |= uint64(r.src[r.in]) << r.n
			r.in++
		} else {
			r.over++
		}
		r.n += 8
	}
}

// short reports whether fewer than need bits of real input are buffered.
// It costs one predictable branch until the input runs out.
func (r *bitReader) short(need int) bool {
	return r.over > 0 && int(r.n)-8*r.over < need
}

// consumed reports whether the bits consumed so far reach into the
// padding past the end of src.
func (r *bitReader) consumed() bool {
	return r.over > 0 && int(r.n) < 8*r.over
}

func (r *bitReader) bits(n uint) uint64 {
	v := r.buf & (1<<n - 1)
	r.buf >>= n
	r.n -= n
	return v
}

func (f *inflater) inflate(dst, src []byte) error {
	if len(dst) == 0 {
		return nil
	}
	r := bitReader{src: src}
	out := 0
	for {
		if r.n < 3 {
			r.refill()
		}
		if r.short(3) {
			return errInflateInput
		}
		final := r.bits(1) == 1
		var (
			lit             *[litTableSize]uint32
			dist            *[distTableSize]uint32
			litMin, distMin int
		)
		switch r.bits(2) {
		case 0:
			var err error
			if out, err = r.stored(dst, out); err != nil || out == len(dst) {
				return err
			}
			if final {
				return errInflateShort
			}
			continue
		case 1:
			lit, dist, litMin, distMin = &fixedLit, &fixedDist, fixedLitMin, fixedDistMin
		case 2:
			var err error
			if litMin, distMin, err = f.readTables(&r); err != nil {
				return err
			}
			lit, dist = &f.lit, &f.dist
		default:
			return errInflateCorrupt
		}
		var err error
		if out, err = huffmanBlock(dst, out, &r, lit, dist, litMin, distMin); err != nil || out == len(dst) {
			return err
		}
		if final {
			return errInflateShort
		}
	}
}

// stored copies a stored block (RFC 1951 section 3.2.4) into dst at out
// and returns the new output position. Input that ends inside the block
// leaves what it held in dst, as compress/flate does.
func (r *bitReader) stored(dst []byte, out int) (int, error) {
	// The block starts at the next byte boundary.
	pos := (r.in+r.over)*8 - int(r.n)
	in := (pos + 7) / 8
	r.buf, r.n, r.over = 0, 0, 0
	if in+4 > len(r.src) {
		r.in = len(r.src)
		return out, errInflateInput
	}
	n := int(binary.LittleEndian.Uint16(r.src[in:]))
	if uint16(n) != ^binary.LittleEndian.Uint16(r.src[in+2:]) {
		return out, errInflateCorrupt
	}
	in += 4
	k := min(n, len(r.src)-in, len(dst)-out)
	copy(dst[out:out+k], r.src[in:])
	out += k
	r.in = in + k
	if k < n && out < len(dst) {
		return out, errInflateInput
	}
	return out, nil
}

// readTables reads the code lengths of a dynamic block (RFC 1951 section
// 3.2.7) and builds its tables, with compress/flate's checks.
func (f *inflater) readTables(r *bitReader) (litMin, distMin int, err error) {
	r.refill()
	if r.short(14) {
		return 0, 0, errInflateInput
	}
	nlit := int(r.bits(5)) + 257
	ndist := int(r.bits(5)) + 1
	nclen := int(r.bits(4)) + 4
	if nlit > 286 || ndist > 30 {
		return 0, 0, errInflateCorrupt
	}
	order := [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
	var clens [19]uint8
	for i := 0; i < nclen; i++ {
		if r.n < 3 {
			r.refill()
		}
		if r.short(3) {
			return 0, 0, errInflateInput
		}
		clens[order[i]] = uint8(r.bits(3))
	}
	clMin, ok := buildTable(f.cl[:], clens[:], clSyms[:], clTableBits)
	if !ok {
		return 0, 0, errInflateCorrupt
	}
	lens := f.lens[:nlit+ndist]
	for i := 0; i < len(lens); {
		if r.n < 16 {
			r.refill()
		}
		if r.short(clMin) {
			return 0, 0, errInflateInput
		}
		e := f.cl[r.buf&(1<<clTableBits-1)]
		n := uint(e & entLen)
		if n == 0 {
			return 0, 0, errInflateCorrupt
		}
		r.bits(n)
		if r.consumed() {
			return 0, 0, errInflateInput
		}
		sym := e >> 16
		if sym < 16 {
			lens[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var prev uint8
		switch sym {
		case 16:
			if i == 0 {
				return 0, 0, errInflateCorrupt
			}
			prev = lens[i-1]
			rep = 3 + int(r.bits(2))
		case 17:
			rep = 3 + int(r.bits(3))
		default:
			rep = 11 + int(r.bits(7))
		}
		if r.consumed() {
			return 0, 0, errInflateInput
		}
		if i+rep > len(lens) {
			return 0, 0, errInflateCorrupt
		}
		for ; rep > 0; rep-- {
			lens[i] = prev
			i++
		}
	}
	if litMin, ok = buildTable(f.lit[:], lens[:nlit], litSyms[:], litTableBits); !ok {
		return 0, 0, errInflateCorrupt
	}
	if distMin, ok = buildTable(f.dist[:], lens[nlit:], distSyms[:], distTableBits); !ok {
		return 0, 0, errInflateCorrupt
	}
	// compress/flate reads at least the end-of-block code's length before
	// every literal/length symbol (huffmanDecoder.min is raised to it).
	litMin = max(litMin, int(lens[256]))
	return litMin, distMin, nil
}

// huffmanBlock decodes one Huffman-coded block into dst from out, and
// returns the new output position: len(dst) once the cluster is full,
// wherever the block stands.
func huffmanBlock(dst []byte, out int, r *bitReader, lit *[litTableSize]uint32, dist *[distTableSize]uint32, litMin, distMin int) (int, error) {
	var st int
	out, r.buf, r.n, r.in, st = huffmanFast(dst, out, r.buf, r.n, r.in, r.src, lit, dist)
	switch st {
	case blockEnd:
		return out, nil
	case blockCorrupt:
		return out, errInflateCorrupt
	}
	return huffmanTail(dst, out, r, lit, dist, litMin, distMin)
}

// How huffmanFast stops.
const (
	blockTail    = iota // near the end of the input or of dst: on to huffmanTail
	blockEnd            // end-of-block code
	blockCorrupt        // a code that is no code, or a distance too far
)

// huffmanFast is the hot loop of reading a zlib image. It runs while
// every refill can load 8 bytes, so that every buffered bit is input and
// no symbol can be cut short, and while a whole match (258 bytes, and the
// 8 its copy may write past its end) fits in dst: none of huffmanTail's
// checks for either end. The bit reader comes in and goes out by value,
// and the tables by array pointer (masked lookups need no bounds check),
// so that the loop's variables stay in registers.
func huffmanFast(dst []byte, out int, buf uint64, nb uint, in int, src []byte, lit *[litTableSize]uint32, dist *[distTableSize]uint32) (int, uint64, uint, int, int) {
	const litMask = 1<<litTableBits - 1
	const distMask = 1<<distTableBits - 1
	outLimit := len(dst) - 258 - 8
	inLimit := len(src) - 8
	for out < outLimit {
		// A length/distance pair takes at most 15+5+15+13 = 48 bits; a
		// refill leaves at least 56.
		if nb < 48 {
			if in > inLimit {
				break
			}
			buf |= binary.LittleEndian.Uint64(src[in:in+8]) << nb
			in += int(63-nb) >> 3
			nb |= 56
		}
		e := lit[buf&litMask]
		if e&entLink != 0 {
			e = lit[(e>>16)+uint32(buf>>litTableBits)&litSubMask]
		}
		n := uint(e & entLen)
		if e&entLiteral != 0 {
			buf >>= n
			nb -= n
			dst[out] = byte(e >> 16)
			out++
			// Literals come in runs: at least 33 bits are left, enough
			// for a second one without going round the loop.
			e = lit[buf&litMask]
			if e&entLiteral == 0 {
				continue // looked up again after the refill check
			}
			n = uint(e & entLen)
			buf >>= n
			nb -= n
			dst[out] = byte(e >> 16)
			out++
			continue
		}
		if e&(entEOB|entBad) != 0 || n == 0 {
			if e&entEOB != 0 {
				return out, buf >> n, nb - n, in, blockEnd
			}
			return out, buf, nb, in, blockCorrupt
		}
		xb := uint(e >> 8 & 15)
		length := int(e>>16) + int(buf>>n&(1<<xb-1))
		buf >>= n + xb
		nb -= n + xb

		d := dist[buf&distMask]
		if d&entLink != 0 {
			d = dist[(d>>16)+uint32(buf>>distTableBits)&distSubMask]
		}
		n = uint(d & entLen)
		xb = uint(d >> 8 & 15)
		distance := int(d>>16) + int(buf>>n&(1<<xb-1))
		buf >>= n + xb
		nb -= n + xb
		if n == 0 || d&entBad != 0 || distance > out {
			return out, buf, nb, in, blockCorrupt
		}
		// The match, LZ77-style (the source may overlap what is being
		// written), in place: a call here would cost every iteration of
		// the loop its registers. Eight bytes at a time where each load
		// reads only bytes already final (distance >= 8), and a run of
		// one byte (zeroes, mostly) by words too; the last store may run
		// up to 7 bytes past the match, into output that later symbols
		// overwrite.
		end := out + length
		from := out - distance
		switch {
		case distance >= 8:
			for ; out < end; out, from = out+8, from+8 {
				binary.LittleEndian.PutUint64(dst[out:], binary.LittleEndian.Uint64(dst[from:]))
			}
		case distance == 1:
			v := uint64(dst[from]) * 0x0101010101010101
			for ; out < end; out += 8 {
				binary.LittleEndian.PutUint64(dst[out:], v)
			}
		default:
			for ; out < end; out, from = out+1, from+1 {
				dst[out] = dst[from]
			}
		}
		out = end
	}
	return out, buf, nb, in, blockTail
}

// huffmanTail finishes a block near the end of the input, one field at a
// time, with compress/flate's rules for input that ends: a field that
// needs bits past the end fails, and a literal/length code is only looked
// for with at least litMin bits left.
func huffmanTail(dst []byte, out int, r *bitReader, lit *[litTableSize]uint32, dist *[distTableSize]uint32, litMin, distMin int) (int, error) {
	for out < len(dst) {
		if r.n < 48 {
			r.refill()
		}
		if r.short(litMin) {
			return out, errInflateInput
		}
		e := lit[r.buf&(1<<litTableBits-1)]
		if e&entLink != 0 {
			e = lit[(e>>16)+uint32(r.buf>>litTableBits)&litSubMask]
		}
		n := uint(e & entLen)
		r.bits(n)
		if r.consumed() {
			return out, errInflateInput
		}
		switch {
		case e&entLiteral != 0:
			dst[out] = byte(e >> 16)
			out++
			continue
		case e&entEOB != 0:
			return out, nil
		case e&entBad != 0 || n == 0:
			return out, errInflateCorrupt
		}
		length := int(e>>16) + int(r.bits(uint(e>>8&15)))
		if r.consumed() || r.short(distMin) {
			return out, errInflateInput
		}
		d := dist[r.buf&(1<<distTableBits-1)]
		if d&entLink != 0 {
			d = dist[(d>>16)+uint32(r.buf>>distTableBits)&distSubMask]
		}
		n = uint(d & entLen)
		r.bits(n)
		distance := int(d>>16) + int(r.bits(uint(d>>8&15)))
		if r.consumed() {
			return out, errInflateInput
		}
		if n == 0 || d&entBad != 0 || distance > out {
			return out, errInflateCorrupt
		}
		out = copyMatch(dst, out, distance, length)
	}
	return out, nil
}

// copyMatch copies length bytes from distance bytes back (LZ77: the source
// may overlap what is being written), stopping at the end of dst, and
// returns the new output position.
func copyMatch(dst []byte, out, distance, length int) int {
	end := min(out+length, len(dst))
	from := out - distance
	if distance >= 8 && end+8 <= len(dst) {
		// Eight bytes at a time: each load reads only bytes already final
		// (distance >= 8); the last store may run up to 7 bytes past end,
		// into output that later symbols overwrite.
		for ; out < end; out, from = out+8, from+8 {
			*(*[8]byte)(dst[out:]) = *(*[8]byte)(dst[from:])
		}
		return end
	}
	if distance >= end-out {
		copy(dst[out:end], dst[from:])
		return end
	}
	for ; out < end; out, from = out+1, from+1 {
		dst[out] = dst[from]
	}
	return end
}

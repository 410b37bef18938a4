package layers

import (
	"encoding/binary"
	"math/bits"
)

// Huffman decoding for the inflater (inflate.go): the tables a block's
// codes are looked up in, and the loops that decode a block's symbols.

// Table entries: one uint32 per bit pattern of the low table bits, laid
// out so that the hot loop consumes a symbol's code and its extra bits
// with one shift, and reads the extra bits back from the bits it shifted
// out (the layout of libdeflate's decode tables).
//
//	bits 0-5   bits to consume: code length plus extra bits (0: no code)
//	bits 8-11  code length: the extra bits follow it
//	bit 12     literal: bits 16-23 hold the byte
//	bit 13     end of block
//	bit 14     link: bits 16-31 index the subtable (of 2^(15-table bits)
//	           entries, indexed by the bits after the table's)
//	bit 15     exceptional: link, end of block, no code (a pattern an
//	           incomplete code leaves unused) or a length or distance
//	           code RFC 1951 reserves; never set on literals and matches
//	bits 16-31 byte, base length or distance
const (
	entBits    = 0x3f
	entLiteral = 1 << 12
	entEOB     = 1 << 13
	entLink    = 1 << 14
	entExc     = 1 << 15
)

// entCodeLen returns the code length of a table entry.
func entCodeLen(e uint32) uint { return uint(e >> 8 & 15) }

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

// Per-symbol entries for the table builder: flags, value and the number
// of extra bits, to which the builder adds the code length.
var (
	litSyms  [288]uint32
	distSyms [32]uint32
	clSyms   [19]uint32
)

// codeTables are the decoding tables of a block's two codes, in one
// struct so that the hot loop reaches both through one register, and the
// shortest code lengths compress/flate reads before a symbol of each.
type codeTables struct {
	lit             [litTableSize]uint32
	dist            [distTableSize]uint32
	litMin, distMin int
}

// The fixed Huffman tables of RFC 1951 section 3.2.6.
var fixedTables codeTables

func init() {
	for s := 0; s < 256; s++ {
		litSyms[s] = entLiteral | uint32(s)<<16
	}
	litSyms[256] = entEOB | entExc
	base := [...]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	extra := [...]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	for i := range base {
		litSyms[257+i] = uint32(base[i])<<16 | uint32(extra[i])
	}
	litSyms[286], litSyms[287] = entExc, entExc
	for s := 0; s < 30; s++ {
		var b, x int
		if s < 4 {
			b = s + 1
		} else {
			x = (s - 2) >> 1
			b = 1<<(x+1) + 1 + (s&1)<<x
		}
		distSyms[s] = uint32(b)<<16 | uint32(x)
	}
	distSyms[30], distSyms[31] = entExc, entExc
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
	t := &fixedTables
	var ok bool
	if t.litMin, ok = buildTable(t.lit[:], lens[:], litSyms[:], litTableBits); !ok {
		panic("fixed literal/length code")
	}
	for i := range 32 {
		lens[i] = 5
	}
	if t.distMin, ok = buildTable(t.dist[:], lens[:32], distSyms[:], distTableBits); !ok {
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
// accepted code (none, for a complete one) hold entExc alone: "no code".
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
	if maxLen <= 1 {
		// Empty, or one or two codes of length one: the only codes
		// that may leave patterns unused.
		for i := range t[:1<<tableBits] {
			t[i] = entExc
		}
		if maxLen == 0 {
			return 0, true // empty: every lookup finds "no code"
		}
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
			t[reverse(p, tableBits)] = entLink | entExc | uint32(sub)<<16
		}
	}
	for s, n := range lens {
		if n == 0 {
			continue
		}
		c := next[n]
		next[n]++
		e := syms[s] + uint32(n)<<8 + uint32(n)
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

// huffmanBlock decodes one Huffman-coded block into dst from out, and
// returns the new output position: len(dst) once the cluster is full,
// wherever the block stands.
func huffmanBlock(dst []byte, out int, r *bitReader, t *codeTables) (int, error) {
	var st int
	out, r.buf, r.n, r.in, st = huffmanFast(dst, out, r.buf, r.n, r.in, r.src, t)
	switch st {
	case blockEnd:
		return out, nil
	case blockCorrupt:
		return out, errInflateCorrupt
	}
	return huffmanTail(dst, out, r, t)
}

// How huffmanFast stops.
const (
	blockTail    = iota // near the end of the input or of dst: on to huffmanTail
	blockEnd            // end-of-block code
	blockCorrupt        // a code that is no code, or a distance too far
)

// huffmanFast is the hot loop of reading a zlib image, on the pattern of
// libdeflate's fast loop. It runs while two refills can each load 8
// bytes, so that every buffered bit is input and no symbol can be cut
// short, and while a whole match (258 bytes, and the 8 its copy may write
// past its end) fits in dst: none of huffmanTail's checks for either end.
// Each round refills without a branch, and the next literal/length entry
// is looked up as soon as the bits before it are consumed, before the
// output of the current symbol is written. The bit reader comes in and
// goes out by value, and the tables by pointer (masked lookups need no
// bounds check), so that the loop's variables stay in registers.
func huffmanFast(dst []byte, out int, buf uint64, nb uint, in int, src []byte, t *codeTables) (int, uint64, uint, int, int) {
	const litMask = 1<<litTableBits - 1
	const distMask = 1<<distTableBits - 1
	// The limits, recomputed where they are compared so that they hold
	// no register: three literals, a whole match and 8 bytes of slack in
	// dst, and room
	// in src for two 8-byte loads, each after 7 bytes.
	const outSlack, inSlack = 3 + 258 + 8, 15
	// (A bit reader holds 64 bits only after byte-wise refills at the
	// end of src, where this loop does not run.)
	if out >= len(dst)-outSlack || in >= len(src)-inSlack || nb > 63 {
		return out, buf, nb, in, blockTail
	}
	// A refill keeps whole bytes and leaves 56 to 63 bits; the bits above
	// nb that the next load repeats are the same bits, so ORing them is
	// harmless.
	buf |= binary.LittleEndian.Uint64(src[in:]) << (nb & 63)
	in += int(63-nb) >> 3
	nb |= 56
	e := t.lit[buf&litMask] // the next entry, looked up with at least 10 bits
	for out < len(dst)-outSlack && in < len(src)-inSlack {
		buf |= binary.LittleEndian.Uint64(src[in:]) << (nb & 63)
		in += int(63-nb) >> 3
		nb |= 56
		if e&entExc != 0 {
			if e&entLink != 0 {
				e = t.lit[(e>>16)+uint32(buf>>litTableBits)&litSubMask]
			}
			if e&entExc != 0 {
				if e&entEOB != 0 {
					n := entCodeLen(e)
					return out, buf >> n, nb - n, in, blockEnd
				}
				return out, buf, nb, in, blockCorrupt
			}
		}
		saved := buf
		buf >>= e & entBits
		nb -= uint(e & entBits)
		if e&entLiteral != 0 {
			// Literals come in runs. Of the 56 bits, the first takes
			// at most 15 and each from the main table 10: three fit,
			// with the next entry's 10 bits. They are gathered in a
			// word that one store writes (dst has slack for it).
			w := uint64(e >> 16)
			k := 1
			e = t.lit[buf&litMask]
			if e&entLiteral != 0 {
				buf >>= e & entBits
				nb -= uint(e & entBits)
				w |= uint64(e>>16) << 8
				k = 2
				e = t.lit[buf&litMask]
				if e&entLiteral != 0 {
					buf >>= e & entBits
					nb -= uint(e & entBits)
					w |= uint64(e>>16) << 16
					k = 3
					e = t.lit[buf&litMask]
				}
			}
			binary.LittleEndian.PutUint64(dst[out:], w)
			out += k
			if e&(entLiteral|entExc) != 0 {
				continue
			}
			// A length after the literals: at least 21 bits are left,
			// enough for it, so it is decoded here, without a round
			// of the loop (dst's slack covers the literals' 3 bytes).
			saved = buf
			buf >>= e & entBits
			nb -= uint(e & entBits)
		}
		length := int(e>>16) + int(saved&(1<<(e&entBits)-1)>>entCodeLen(e))
		// The distance takes at most 15+13 bits, and the next lookup 10;
		// the distance's entry is looked up before the refill, with the
		// at least 36 bits the length left.
		d := t.dist[buf&distMask]
		if nb < 38 {
			buf |= binary.LittleEndian.Uint64(src[in:]) << (nb & 63)
			in += int(63-nb) >> 3
			nb |= 56
		}
		if d&entExc != 0 {
			if d&entLink != 0 {
				d = t.dist[(d>>16)+uint32(buf>>distTableBits)&distSubMask]
			}
			if d&entExc != 0 {
				return out, buf, nb, in, blockCorrupt
			}
		}
		saved = buf
		buf >>= d & entBits
		nb -= uint(d & entBits)
		distance := int(d>>16) + int(saved&(1<<(d&entBits)-1)>>entCodeLen(d))
		if distance > out {
			return out, buf, nb, in, blockCorrupt
		}
		e = t.lit[buf&litMask]
		// The match, LZ77-style (the source may overlap what is being
		// written), in place: a call here would cost every iteration of
		// the loop its registers. Eight bytes at a time where each load
		// reads only bytes already final (distance >= 8): five words
		// whatever the length (most matches are shorter than 40 bytes,
		// and a loop's exit is a branch the CPU mispredicts), then the
		// rest. A run of one byte (zeroes, mostly) by words too, and
		// shorter distances by words that each carry distance bytes.
		// Stores past the match land in output that later symbols
		// overwrite (dst has 269 bytes of slack here).
		from := out - distance
		switch {
		case distance >= 8:
			w := dst[out : out+40]
			v := dst[from : from+40]
			binary.LittleEndian.PutUint64(w[0:], binary.LittleEndian.Uint64(v[0:]))
			binary.LittleEndian.PutUint64(w[8:], binary.LittleEndian.Uint64(v[8:]))
			binary.LittleEndian.PutUint64(w[16:], binary.LittleEndian.Uint64(v[16:]))
			binary.LittleEndian.PutUint64(w[24:], binary.LittleEndian.Uint64(v[24:]))
			binary.LittleEndian.PutUint64(w[32:], binary.LittleEndian.Uint64(v[32:]))
			if length > 40 {
				for i := 40; i < length; i += 8 {
					binary.LittleEndian.PutUint64(dst[out+i:], binary.LittleEndian.Uint64(dst[from+i:]))
				}
			}
		case distance == 1:
			v := uint64(dst[from]) * 0x0101010101010101
			w := dst[out : out+40]
			binary.LittleEndian.PutUint64(w[0:], v)
			binary.LittleEndian.PutUint64(w[8:], v)
			binary.LittleEndian.PutUint64(w[16:], v)
			binary.LittleEndian.PutUint64(w[24:], v)
			binary.LittleEndian.PutUint64(w[32:], v)
			if length > 40 {
				for i := 40; i < length; i += 8 {
					binary.LittleEndian.PutUint64(dst[out+i:], v)
				}
			}
		default:
			// Each load holds distance final bytes and the store
			// writes them on; the next load starts where they end.
			for i := 0; i < length; i += distance {
				binary.LittleEndian.PutUint64(dst[out+i:], binary.LittleEndian.Uint64(dst[from+i:]))
			}
		}
		out += length
	}
	return out, buf, nb, in, blockTail
}

// huffmanTail finishes a block near the end of the input, one field at a
// time, with compress/flate's rules for input that ends: a field that
// needs bits past the end fails, and a literal/length code is only looked
// for with at least litMin bits left.
func huffmanTail(dst []byte, out int, r *bitReader, t *codeTables) (int, error) {
	for out < len(dst) {
		if r.n < 48 {
			r.refill()
		}
		if r.short(t.litMin) {
			return out, errInflateInput
		}
		e := t.lit[r.buf&(1<<litTableBits-1)]
		if e&entLink != 0 {
			e = t.lit[(e>>16)+uint32(r.buf>>litTableBits)&litSubMask]
		}
		n := entCodeLen(e)
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
		case e&entExc != 0:
			return out, errInflateCorrupt // no code, or a reserved one
		}
		length := int(e>>16) + int(r.bits(uint(e&entBits)-n))
		if r.consumed() || r.short(t.distMin) {
			return out, errInflateInput
		}
		d := t.dist[r.buf&(1<<distTableBits-1)]
		if d&entLink != 0 {
			d = t.dist[(d>>16)+uint32(r.buf>>distTableBits)&distSubMask]
		}
		n = entCodeLen(d)
		r.bits(n)
		distance := int(d>>16) + int(r.bits(uint(d&entBits)-n))
		if r.consumed() {
			return out, errInflateInput
		}
		if d&entExc != 0 || distance > out {
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

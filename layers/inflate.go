package layers

import (
	"encoding/binary"
	"errors"
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

// inflater holds the tables of the dynamic blocks of one stream.
type inflater struct {
	dyn  codeTables
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
		var t *codeTables
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
			t = &fixedTables
		case 2:
			if err := f.readTables(&r); err != nil {
				return err
			}
			t = &f.dyn
		default:
			return errInflateCorrupt
		}
		var err error
		if out, err = huffmanBlock(dst, out, &r, t); err != nil || out == len(dst) {
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
// 3.2.7) and builds its tables in f.dyn, with compress/flate's checks.
func (f *inflater) readTables(r *bitReader) error {
	r.refill()
	if r.short(14) {
		return errInflateInput
	}
	nlit := int(r.bits(5)) + 257
	ndist := int(r.bits(5)) + 1
	nclen := int(r.bits(4)) + 4
	if nlit > 286 || ndist > 30 {
		return errInflateCorrupt
	}
	order := [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
	var clens [19]uint8
	for i := 0; i < nclen; i++ {
		if r.n < 3 {
			r.refill()
		}
		if r.short(3) {
			return errInflateInput
		}
		clens[order[i]] = uint8(r.bits(3))
	}
	clMin, ok := buildTable(f.cl[:], clens[:], clSyms[:], clTableBits)
	if !ok {
		return errInflateCorrupt
	}
	lens := f.lens[:nlit+ndist]
	for i := 0; i < len(lens); {
		if r.n < 16 {
			r.refill()
		}
		if r.short(clMin) {
			return errInflateInput
		}
		e := f.cl[r.buf&(1<<clTableBits-1)]
		n := entCodeLen(e)
		if n == 0 {
			return errInflateCorrupt
		}
		r.bits(n)
		if r.consumed() {
			return errInflateInput
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
				return errInflateCorrupt
			}
			prev = lens[i-1]
			rep = 3 + int(r.bits(2))
		case 17:
			rep = 3 + int(r.bits(3))
		default:
			rep = 11 + int(r.bits(7))
		}
		if r.consumed() {
			return errInflateInput
		}
		if i+rep > len(lens) {
			return errInflateCorrupt
		}
		for ; rep > 0; rep-- {
			lens[i] = prev
			i++
		}
	}
	t := &f.dyn
	if t.litMin, ok = buildTable(t.lit[:], lens[:nlit], litSyms[:], litTableBits); !ok {
		return errInflateCorrupt
	}
	if t.distMin, ok = buildTable(t.dist[:], lens[nlit:], distSyms[:], distTableBits); !ok {
		return errInflateCorrupt
	}
	// compress/flate reads at least the end-of-block code's length before
	// every literal/length symbol (huffmanDecoder.min is raised to it).
	t.litMin = max(t.litMin, int(lens[256]))
	return nil
}

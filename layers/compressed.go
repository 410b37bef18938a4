package layers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Decompression follows QEMU's block/qcow2-threads.c: a cluster is good
// only when its stream inflates to exactly one cluster. Output is capped at
// one cluster whatever the stream says, and trailing input is ignored, as
// compressed streams are padded to 512-byte sectors.

// inflateZlib inflates the raw deflate stream src into dst (inflate.go),
// accepting what compress/flate accepts, which agrees with zlib on every
// stream QEMU writes.
func inflateZlib(dst, src []byte) error { return inflate(dst, src) }

var zstdPool sync.Pool // of *zstd.Decoder

var errZstdTooLong = errors.New("zstd frame holds more than one cluster")

// decodeSlack is how far past the end of its output klauspost's zstd
// decoder may write on its fast path (the sequence copies store whole
// words): with less room it takes a path with a bounds check per copy,
// about a third slower on a cluster. Cluster buffers are allocated with
// it (clusterBufs).
const decodeSlack = 16

// inflateZstd fills dst from the zstd frames of src the way QEMU's
// qcow2_zstd_decompress does: it decodes frame after frame (skippable
// frames are passed over) until dst is full, and the frame that fills dst
// must end exactly there. Anything after that frame is never looked at;
// a stream that runs out, or a frame with more output, is corrupt.
//
// The decoder writes into dst's spare capacity up to decodeSlack bytes;
// with less spare capacity it decodes into a pooled buffer and copies.
// So a caller whose buffer goes on past dst must cut dst's capacity
// (dst[:n:n]).
//
// Frames may not need a window larger than maxZstdWindow. QEMU allows
// libzstd's default (128 MiB), but QEMU itself never writes a window
// larger than a cluster (2 MiB at most), and a hostile image must not make
// every read of a cluster allocate 128 MiB.
func inflateZstd(dst, src []byte) error {
	if cap(dst)-len(dst) < decodeSlack {
		buf := clusterBufs.get(int64(len(dst)))
		defer clusterBufs.put(buf)
		if err := inflateZstd(buf, src); err != nil {
			return err
		}
		copy(dst, buf)
		return nil
	}
	var d *zstd.Decoder
	if v := zstdPool.Get(); v != nil {
		d = v.(*zstd.Decoder)
	} else {
		var err error
		// DecodeAll decodes a frame straight into dst, and with the
		// cap limit never past dst's slack.
		d, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(maxZstdWindow),
			zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return err
		}
	}
	defer zstdPool.Put(d)
	out := dst[: 0 : len(dst)+decodeSlack]
	for len(out) < len(dst) {
		var modes []int
		fixed := 0 // output of the frame's raw and RLE blocks
		n, skip, err := walkZstdFrame(src, func(b zstdBlock) {
			if b.typ != zstdCompressed {
				fixed += b.out
			} else if i, ok := seqModesByte(src[b.at : b.at+b.size]); ok && src[b.at+i]&3 != 0 {
				modes = append(modes, b.at+i)
			}
		})
		if err != nil {
			return err
		}
		frame := src[:n]
		src = src[n:]
		if skip {
			continue
		}
		if fixed > len(dst)-len(out) {
			// Known before decoding; the decoder would find it after
			// appending past the cap limit, and say so on stderr.
			return errZstdTooLong
		}
		if modes != nil {
			frame = clearReservedModeBits(frame, modes)
		}
		out, err = d.DecodeAll(frame, out)
		switch {
		case err == zstd.ErrDecoderSizeExceeded || len(out) > len(dst):
			return errZstdTooLong
		case err != nil:
			return err
		}
	}
	return nil
}

// The reserved low bits of a compressed block's Symbol_Compression_Modes
// byte (RFC 8878, section 3.1.1.3.2.1) are ignored by the libzstd that
// QEMU reads with here (Debian 12's 1.5.4: ZSTD_decodeSeqHeaders reads
// the three modes from the upper six bits and looks no further), while
// klauspost's decoder, like libzstd since 1.5.6, refuses the block. A
// cluster QEMU reads must read (the differential fuzzer found one), so
// the bits are cleared, in a copy, before the frame is decoded.

// seqModesByte returns where, in the content of a compressed block, the
// Symbol_Compression_Modes byte of its sequences section is: after the
// literals section (its header and its content) and the number of
// sequences; ok is false when the block has no sequences or is too short
// to say, which the decoder then judges itself.
func seqModesByte(block []byte) (i int, ok bool) {
	if len(block) == 0 {
		return 0, false
	}
	b0 := int(block[0])
	var hdr, size int
	switch typ, format := b0&3, b0>>2&3; {
	case typ < 2: // raw or RLE literals: the regenerated size only
		switch format {
		case 0, 2:
			hdr, size = 1, b0>>3
		case 1:
			if len(block) < 2 {
				return 0, false
			}
			hdr, size = 2, b0>>4|int(block[1])<<4
		default:
			if len(block) < 3 {
				return 0, false
			}
			hdr, size = 3, b0>>4|int(block[1])<<4|int(block[2])<<12
		}
		if typ == 1 {
			size = 1 // one byte repeated
		}
	default: // Huffman-coded literals: their compressed size
		hdr = [4]int{3, 3, 4, 5}[format]
		if len(block) < hdr {
			return 0, false
		}
		switch format {
		case 0, 1:
			size = int(block[1])>>6 | int(block[2])<<2
		case 2:
			size = int(block[2])>>2 | int(block[3])<<6
		default:
			size = int(block[2])>>6 | int(block[3])<<2 | int(block[4])<<10
		}
	}
	i = hdr + size
	if i >= len(block) {
		return 0, false
	}
	switch n := block[i]; {
	case n == 0:
		return 0, false // no sequences, no modes byte
	case n < 128:
		i++
	case n < 255:
		i += 2
	default:
		i += 3
	}
	return i, i < len(block)
}

// clearReservedModeBits returns a copy of frame with the reserved bits of
// the modes bytes at the given offsets cleared.
func clearReservedModeBits(frame []byte, at []int) []byte {
	frame = bytes.Clone(frame)
	for _, i := range at {
		frame[i] &^= 3
	}
	return frame
}

// maxZstdWindow bounds the window (history) a zstd frame may ask for.
const maxZstdWindow = 4 << 20

// zstdFrameLen returns the length of the zstd frame at the start of b,
// found by walking its block headers (RFC 8878, section 3.1), and whether
// it is a skippable frame.
func zstdFrameLen(b []byte) (n int, skippable bool, err error) {
	return walkZstdFrame(b, nil)
}

// Block types of a zstd frame (RFC 8878, section 3.1.1.2.2).
const (
	zstdRaw = iota
	zstdRLE
	zstdCompressed
)

// zstdBlock is a block of a zstd frame as its header tells it: its type,
// where its content starts in the frame and how long it is there, and,
// for raw and RLE blocks, how many bytes it regenerates.
type zstdBlock struct {
	typ, at, size, out int
}

// walkZstdFrame is zstdFrameLen, calling visit (when not nil) with each
// block it passes.
func walkZstdFrame(b []byte, visit func(zstdBlock)) (n int, skippable bool, err error) {
	le := binary.LittleEndian
	if len(b) < 4 {
		return 0, false, io.ErrUnexpectedEOF
	}
	magic := le.Uint32(b)
	if magic&^0xf == 0x184d2a50 {
		if len(b) < 8 {
			return 0, true, io.ErrUnexpectedEOF
		}
		size := uint64(le.Uint32(b[4:]))
		if size > uint64(len(b)-8) {
			return 0, true, io.ErrUnexpectedEOF
		}
		return 8 + int(size), true, nil
	}
	if magic != 0xfd2fb528 {
		return 0, false, fmt.Errorf("not a zstd frame (magic %#08x)", magic)
	}
	if len(b) < 5 {
		return 0, false, io.ErrUnexpectedEOF
	}
	fhd := b[4]
	n = 5
	single := fhd&0x20 != 0
	if !single {
		n++ // window descriptor
	}
	n += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	switch fhd >> 6 {              // frame content size
	case 0:
		if single {
			n++
		}
	case 1:
		n += 2
	case 2:
		n += 4
	case 3:
		n += 8
	}
	for {
		if len(b)-n < 3 {
			return 0, false, io.ErrUnexpectedEOF
		}
		h := uint32(b[n]) | uint32(b[n+1])<<8 | uint32(b[n+2])<<16
		n += 3
		typ, size := int(h>>1&3), int(h>>3)
		out := size
		switch typ {
		case zstdRLE: // one byte stands for size bytes
			size = 1
		case zstdCompressed:
			out = 0 // known once decoded
		case 3:
			return 0, false, errors.New("reserved zstd block type")
		}
		if size > len(b)-n {
			return 0, false, io.ErrUnexpectedEOF
		}
		if visit != nil {
			visit(zstdBlock{typ: typ, at: n, size: size, out: out})
		}
		n += size
		if h&1 != 0 {
			break
		}
	}
	if fhd&4 != 0 { // content checksum
		n += 4
	}
	if n > len(b) {
		return 0, false, io.ErrUnexpectedEOF
	}
	return n, false, nil
}

// inflateCluster reads and inflates the compressed cluster described by
// ext into dst (one cluster long), whose spare capacity it may write to
// (see inflateZstd).
func (q *qcow2Image) inflateCluster(dst []byte, ext *Extent) error {
	if ext.HostOffset >= q.file.Size() {
		// QEMU reads zeroes there, which never inflate: the read fails
		// in both, and this says why.
		return corrupt(q.name, "compressed cluster for guest offset %#x at %#x lies beyond end of file (%#x)",
			ext.Offset&^(q.csize-1), ext.HostOffset, q.file.Size())
	}
	// A descriptor's length is at most two clusters (its sector count has
	// cluster_bits-8 bits), so one pooled buffer of that size always fits.
	buf := clusterBufs.get(2 * q.csize)
	defer clusterBufs.put(buf)
	src := buf[:ext.CompressedSize]
	if _, err := q.file.ReadAt(src, ext.HostOffset); err != nil {
		return &FormatError{File: q.name, Msg: fmt.Sprintf("read compressed cluster at %#x", ext.HostOffset), Err: err}
	}
	var err error
	if q.hdr.CompressionType == CompressionZstd {
		err = inflateZstd(dst, src)
	} else {
		err = inflateZlib(dst, src)
	}
	if err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF || err == errInflateShort {
			err = fmt.Errorf("stream ends before one cluster (%d bytes)", len(dst))
		}
		return corrupt(q.name, "compressed cluster at %#x (%d bytes) for guest offset %#x does not inflate to one cluster: %v",
			ext.HostOffset, ext.CompressedSize, ext.Offset&^(q.csize-1), err)
	}
	return nil
}

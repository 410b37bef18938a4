package layers

import (
	"bytes"
	"compress/flate"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// FuzzCompressed inflates fuzzed streams into one cluster, as reading a
// compressed cluster does. It must never panic or write past the cluster
// (or past its spare capacity, when it has some: inflateZstd),
// must agree with an independent decoder on what a stream holds, and
// must leave its pooled decoders fit for the next cluster, whatever the
// stream did to them.
//
// The first argument picks the cluster size (512 bytes to 2 MiB) and the
// method: bit 7 set is zstd, else zlib (raw deflate, as qcow2 stores it).
func FuzzCompressed(f *testing.F) {
	plain := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			if i%4096 < 2048 {
				b[i] = byte(i/3) + seed
			}
		}
		return b
	}
	for _, sel := range []uint8{0, 3, 7, 12} {
		cs := 512 << (sel % 13)
		p := plain(cs, sel)
		f.Add(sel, deflate(p))
		f.Add(sel, deflate(p[:cs-1]))
		f.Add(sel, append(deflate(p), 0xa5, 0xa5))
		f.Add(sel|0x80, zstdEncode(p))
		f.Add(sel|0x80, zstdEncode(append(p, 1)))
		f.Add(sel|0x80, append(append([]byte{0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9}, zstdEncode(p[:cs/2])...), zstdEncode(p[cs/2:])...))
		f.Add(sel|0x80, append(zstdEncode(p), 0xff))
	}
	// The compressed clusters of the committed seed images, found by
	// their stream headers rather than by parsing the image.
	for _, name := range []string{"zlib.qcow2", "zstd.qcow2"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		for off := 512; off+512 <= len(b); off += 512 {
			if name == "zstd.qcow2" && bytes.HasPrefix(b[off:], []byte{0x28, 0xb5, 0x2f, 0xfd}) {
				f.Add(uint8(0x80), b[off:off+512])
			}
			if name == "zlib.qcow2" && off >= 2048 {
				f.Add(uint8(0), b[off:off+512]) // some are streams, some not
			}
		}
	}
	f.Fuzz(func(t *testing.T, sel uint8, src []byte) {
		useZstd := sel&0x80 != 0
		cs := 512 << (sel & 0x7f % 13)
		// The cluster sits between guard bytes that must survive.
		const guard = 64
		buf := make([]byte, guard+cs+guard)
		for i := range buf {
			buf[i] = 0xee
		}
		dst := buf[guard : guard+cs : guard+cs]
		inflate := inflateZlib
		if useZstd {
			inflate = inflateZstd
		}
		err := inflate(dst, bytes.Clone(src))
		for i := range guard {
			if buf[i] != 0xee || buf[guard+cs+i] != 0xee {
				t.Fatalf("inflate wrote outside the cluster")
			}
		}
		want, ok := referenceInflate(src, cs, useZstd)
		switch {
		case err == nil && ok && !bytes.Equal(dst, want):
			t.Fatalf("inflated cluster differs from the reference decoder's at %d", firstDiffInternal(dst, want))
		case err != nil && ok:
			t.Fatalf("inflate refuses a stream the reference decoder fills the cluster from: %v", err)
		}
		// Same answer a second time, from whatever the pools now hold,
		// into a buffer with the spare capacity of the cluster cache's
		// (zstd then decodes into it directly): nothing past that spare
		// capacity may change.
		buf2 := make([]byte, cs+decodeSlack+guard)
		for i := range buf2 {
			buf2[i] = 0xee
		}
		again := buf2[: cs : cs+decodeSlack]
		err2 := inflate(again, src)
		for _, b := range buf2[cs+decodeSlack:] {
			if b != 0xee {
				t.Fatalf("inflate wrote past the cluster's spare capacity")
			}
		}
		if (err2 == nil) != (err == nil) || (err == nil && !bytes.Equal(again, dst)) {
			t.Fatalf("second inflate: %v, first: %v, or different bytes", err2, err)
		}
		// The pooled decoder still reads a good cluster.
		good, stream := goodStream(cs, useZstd)
		if err := inflate(again, stream); err != nil || !bytes.Equal(again, good) {
			t.Fatalf("a good stream after the fuzzed one: %v", err)
		}
	})
}

// referenceInflate decodes src with a decoder the fast path does not use
// (the standard library's flate, which agrees with zlib on every case
// known; zstd's DecodeAll over the whole input) and says whether QEMU's
// rule would accept it: zlib, the stream fills the cluster (what follows
// does not matter); zstd, the frames hold exactly one cluster.
//
// Streams inflate accepts and the reference refuses are allowed: for
// zlib, klauspost's flate accepts a dynamic Huffman block without an
// end-of-block code, which zlib and the standard library refuse
// ("invalid code -- missing end-of-block",
// testdata/fuzz/FuzzCompressed/263d6fd6d2fca0df); for zstd, DecodeAll
// needs the whole input to be complete frames, while QEMU ignores what
// follows the frame that fills the cluster. The other way round, a stream
// the reference fills a cluster from must be accepted, with the same
// bytes: 6606dcd41cf3912c is one that klauspost's flate alone stopped
// short on, for want of input after the symbols that fill the cluster.
func referenceInflate(src []byte, cs int, useZstd bool) (out []byte, ok bool) {
	if useZstd {
		out, err := refZstd.DecodeAll(src, nil)
		return out, err == nil && len(out) == cs
	}
	r := flate.NewReader(bytes.NewReader(src))
	defer r.Close()
	out = make([]byte, cs)
	_, err := io.ReadFull(r, out)
	return out, err == nil
}

// goodStreams caches goodStream's results by cluster size and method.
var goodStreams sync.Map // [2]int{cs, zstd} -> [2][]byte{plain, stream}

// goodStream returns a cluster of cs bytes and a stream it compresses to.
func goodStream(cs int, useZstd bool) (plain, stream []byte) {
	key := [2]int{cs, 0}
	if useZstd {
		key[1] = 1
	}
	if v, ok := goodStreams.Load(key); ok {
		p := v.([2][]byte)
		return p[0], p[1]
	}
	plain = bytes.Repeat([]byte{1, 2, 3, 0}, cs/4)
	if useZstd {
		stream = zstdEncode(plain)
	} else {
		stream = deflate(plain)
	}
	goodStreams.Store(key, [2][]byte{plain, stream})
	return plain, stream
}

// refZstd is the reference zstd decoder; DecodeAll is safe for
// concurrent use.
var refZstd = func() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxZstdWindow), zstd.WithDecoderMaxWindow(maxZstdWindow))
	if err != nil {
		panic(err)
	}
	return d
}()

func deflate(b []byte) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstdEncode(b []byte) []byte {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer e.Close()
	return e.EncodeAll(b, nil)
}

func firstDiffInternal(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestInflateZlibInputEndsAtTheCluster: a stream longer than a cluster, cut
// right after the bytes that fill the cluster, is good for QEMU (zlib
// stops when its output is full); so it is for inflateZlib, whichever
// decoder answers.
func TestInflateZlibInputEndsAtTheCluster(t *testing.T) {
	const cs = 64 << 10
	plain := make([]byte, cs+4096)
	for i := range plain {
		plain[i] = byte(i*7) ^ byte(i>>11)
	}
	stream := deflate(plain)
	// The shortest prefix the standard library fills a cluster from.
	n := sort.Search(len(stream), func(n int) bool {
		out := make([]byte, cs)
		_, err := io.ReadFull(flate.NewReader(bytes.NewReader(stream[:n])), out)
		return err == nil
	})
	if n == len(stream) {
		t.Fatal("no prefix of the stream fills a cluster")
	}
	for _, m := range []int{n, n + 1, len(stream)} {
		dst := make([]byte, cs)
		if err := inflateZlib(dst, stream[:m]); err != nil || !bytes.Equal(dst, plain[:cs]) {
			t.Errorf("stream cut at %d of %d bytes (%d fill the cluster): %v, or wrong bytes", m, len(stream), n, err)
		}
	}
	dst := make([]byte, cs)
	if err := inflateZlib(dst, stream[:n-1]); err == nil {
		t.Errorf("stream cut at %d bytes, one short of filling the cluster: accepted", n-1)
	}
}

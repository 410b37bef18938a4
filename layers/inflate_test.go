package layers

import (
	"bytes"
	"compress/flate"
	"io"
	"math/rand/v2"
	"testing"
)

// FuzzInflate holds the whole-buffer inflater to compress/flate read as
// QEMU reads a cluster (io.ReadFull of the cluster: output past it and
// input after it are never looked at): for any input and any cluster
// size, both fill the cluster with the same bytes, or both refuse. It
// must never write outside the cluster, whatever the input.
func FuzzInflate(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 1))
	text := []byte("qcow2 cluster backing chain layer guest host offset zero data compressed ")
	var plain []byte
	for len(plain) < 70000 {
		switch rng.IntN(8) {
		case 0:
			plain = append(plain, make([]byte, rng.IntN(3000))...)
		case 1:
			for i := rng.IntN(500); i > 0; i-- {
				plain = append(plain, byte(rng.Uint32()))
			}
		default:
			i := rng.IntN(len(text) - 8)
			plain = append(plain, text[i:i+1+rng.IntN(len(text)-i-1)]...)
		}
	}
	for _, level := range []int{flate.NoCompression, flate.BestSpeed, flate.DefaultCompression, flate.BestCompression, flate.HuffmanOnly} {
		for _, n := range []int{1, 100, 512, 4096, 65536} {
			s := deflateLevel(plain[:n], level)
			f.Add(uint32(n), s)
			f.Add(uint32(n), s[:len(s)/2])
			f.Add(uint32(n-1), s)
			f.Add(uint32(n+1), s)
		}
	}
	f.Add(uint32(512), []byte{0x03, 0x00}) // empty fixed block, final
	f.Add(uint32(512), []byte{0x04, 0xc0, 0x03, 0x82, 0x22, 0x00, 0x00, 0x00, 0xc0, 0x7f, 0x7f, 0x1f, 0x41})
	f.Fuzz(func(t *testing.T, size uint32, src []byte) {
		size %= 1 << 17
		want := make([]byte, size)
		_, werr := io.ReadFull(flate.NewReader(bytes.NewReader(src)), want)
		const guard = 16
		buf := bytes.Repeat([]byte{0xee}, guard+int(size)+guard)
		dst := buf[guard : guard+int(size) : guard+int(size)]
		err := inflate(dst, src)
		if !bytes.Equal(buf[:guard], buf[len(buf)-guard:]) || buf[0] != 0xee || buf[len(buf)-1] != 0xee {
			t.Fatal("inflate wrote outside the cluster")
		}
		switch {
		case err == nil && werr != nil:
			t.Fatalf("inflate fills %d bytes from a stream compress/flate refuses (%v)", size, werr)
		case err != nil && werr == nil:
			t.Fatalf("inflate refuses (%v) a stream compress/flate fills %d bytes from", err, size)
		case err == nil && !bytes.Equal(dst, want):
			t.Fatalf("inflate and compress/flate differ at byte %d of %d", firstDiffInternal(dst, want), size)
		}
	})
}

func deflateLevel(b []byte, level int) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, level)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

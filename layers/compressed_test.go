package layers_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/klauspost/compress/zstd"
)

func zstdFrame(t *testing.T, b []byte) []byte {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(b, nil)
}

// zstdStreamFrame is zstdFrame with the header a streaming encoder writes
// when it does not know the size in advance (RFC 8878, section 3.1.1.1):
// a window descriptor (1 MiB) instead of a content size, so a decoder
// learns how long the output is only by decoding it.
func zstdStreamFrame(t *testing.T, b []byte) []byte {
	f := zstdFrame(t, b)
	fhd := f[4]
	if fhd&3 != 0 || fhd&0x20 == 0 {
		t.Fatalf("frame header descriptor %#x: want single segment, no dictionary", fhd)
	}
	fcs := [4]int{1, 2, 4, 8}[fhd>>6]
	out := append([]byte{}, f[:4]...)
	out = append(out, fhd&4, 10<<3) // checksum flag kept; window 2^(10+10)
	return append(out, f[5+fcs:]...)
}

// TestCompressedStreamEdges puts hand-made compressed streams in a qcow2
// image and checks that chainfs accepts exactly the streams QEMU accepts,
// reading the same bytes: QEMU needs a stream to fill one cluster; zlib
// output past the cluster is ignored, a zstd frame must end where the
// cluster does.
func TestCompressedStreamEdges(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	const cs = 64 * KiB
	data := func(n int, seed byte) []byte {
		b := make([]byte, n)
		copy(b, bytes.Repeat([]byte{seed, seed + 1, seed + 2, 0}, n/8)) // half pattern, half zero
		return b
	}
	cluster := data(cs, 1)
	rows := []struct {
		name, ctype string
		stream      func(t *testing.T) []byte
	}{
		{"zlib, one cluster", "zlib", func(t *testing.T) []byte { return imagetest.DeflateRaw(t, cluster) }},
		{"zlib, more than one cluster", "zlib", func(t *testing.T) []byte { return imagetest.DeflateRaw(t, data(cs+4096, 1)) }},
		{"zlib, less than one cluster", "zlib", func(t *testing.T) []byte { return imagetest.DeflateRaw(t, data(cs-1, 1)) }},
		{"zlib, garbage after the stream", "zlib", func(t *testing.T) []byte {
			return append(imagetest.DeflateRaw(t, cluster), bytes.Repeat([]byte{0xa5}, 700)...)
		}},
		{"zlib, two streams of half a cluster", "zlib", func(t *testing.T) []byte {
			return append(imagetest.DeflateRaw(t, cluster[:cs/2]), imagetest.DeflateRaw(t, cluster[cs/2:])...)
		}},
		{"zstd, one cluster", "zstd", func(t *testing.T) []byte { return zstdFrame(t, cluster) }},
		{"zstd, more than one cluster", "zstd", func(t *testing.T) []byte { return zstdFrame(t, data(cs+4096, 1)) }},
		{"zstd, less than one cluster", "zstd", func(t *testing.T) []byte { return zstdFrame(t, data(cs-1, 1)) }},
		{"zstd, garbage after the frame", "zstd", func(t *testing.T) []byte {
			return append(zstdFrame(t, cluster), bytes.Repeat([]byte{0xa5}, 700)...)
		}},
		{"zstd, two frames of half a cluster", "zstd", func(t *testing.T) []byte {
			return append(zstdFrame(t, cluster[:cs/2]), zstdFrame(t, cluster[cs/2:])...)
		}},
		{"zstd, two frames, the second reaching past the cluster", "zstd", func(t *testing.T) []byte {
			return append(zstdFrame(t, cluster[:cs/2]), zstdFrame(t, cluster)...)
		}},
		{"zstd, skippable frame then one cluster", "zstd", func(t *testing.T) []byte {
			skip := []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}
			return append(skip, zstdFrame(t, cluster)...)
		}},
		{"zstd without content size, one cluster", "zstd", func(t *testing.T) []byte { return zstdStreamFrame(t, cluster) }},
		{"zstd without content size, more than one cluster", "zstd", func(t *testing.T) []byte { return zstdStreamFrame(t, data(cs+4096, 1)) }},
		{"zstd without content size, zeroes past the cluster", "zstd", func(t *testing.T) []byte { return zstdStreamFrame(t, make([]byte, 5*cs)) }},
		{"zstd, frame cut short", "zstd", func(t *testing.T) []byte { f := zstdFrame(t, cluster); return f[:len(f)-3] }},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := imagetest.Create(t, dir, "c.qcow2", "qcow2", 1*MiB, "compression_type="+r.ctype)
			imagetest.QemuIO(t, "qcow2", p, "write -c -P 1 0 64k", "write -P 2 64k 64k")
			stream := r.stream(t)
			host := (fileSize(t, p) + 511) &^ 511
			// Pad to whole sectors, as QEMU writes streams.
			stream = append(stream, make([]byte, (512-len(stream)%512)%512)...)
			sectors := uint64(len(stream) / 512)
			if sectors > 256 {
				t.Fatalf("stream of %d sectors does not fit a descriptor", sectors)
			}
			imagetest.Patch(t, p, host, stream)
			l2off := l2(t, p, 0)
			if e := imagetest.ReadBE64(t, p, l2off); e&compBit == 0 {
				t.Fatalf("cluster 0 is not compressed: %#x", e)
			}
			imagetest.PatchBE64(t, p, l2off, compBit|(sectors-1)<<54|uint64(host))

			out := filepath.Join(dir, "out.raw")
			_, stderr, qerr := imagetest.RunErr(t, dir, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", p, out)
			log, _ := testLog()
			c, err := layers.Open(p, &layers.Options{Log: log})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := make([]byte, c.Top().Size)
			_, rerr := c.Top().ReadAt(got, 0)
			switch {
			case qerr != nil && rerr == nil:
				t.Fatalf("QEMU refuses the stream (%s), chainfs reads it", bytes.TrimSpace([]byte(stderr)))
			case qerr == nil && rerr != nil:
				t.Fatalf("QEMU reads the stream, chainfs refuses it: %v", rerr)
			case qerr != nil:
				mustIs(t, rerr, layers.ErrCorrupt)
				t.Logf("both refuse: QEMU %s; chainfs %v", bytes.TrimSpace([]byte(stderr)), rerr)
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("reads differ from QEMU at %#x", i)
			}
			t.Logf("both read it")
		})
	}
}

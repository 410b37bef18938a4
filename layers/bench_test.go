package layers_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// Read-path benchmarks: sequential 1 MiB reads (as the kernel sends them
// with max_read 1 MiB) and 4 KiB random reads, over a 3-layer chain of
// incompressible data and over zlib and zstd compressed images of
// text-like data. Images are built with qemu-img once per run.
//
//	go test ./layers -run XXX -bench Read -benchtime 3s

const benchSize = 64 << 20

// textLike returns n bytes of compressible, non-uniform data: words from a
// small vocabulary with runs of zeroes and stretches of random bytes.
func textLike(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("qcow2 cluster backing chain layer guest host offset zero data " +
		"compressed subcluster bitmap refcount snapshot header extension table entry")
	b := make([]byte, 0, n)
	for len(b) < n {
		switch rng.IntN(20) {
		case 0:
			b = append(b, make([]byte, rng.IntN(8192))...)
		case 1:
			for i := rng.IntN(2048); i > 0; i-- {
				b = append(b, byte(rng.Uint32()))
			}
		default:
			b = append(b, words[rng.IntN(len(words))]...)
			b = append(b, ' ')
		}
	}
	return b[:n]
}

func benchImage(b *testing.B, kind string) string {
	b.Helper()
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	switch kind {
	case "chain":
		rnd := make([]byte, benchSize)
		rng := rand.New(rand.NewPCG(3, 4))
		for i := range rnd {
			rnd[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(src, rnd, 0o644); err != nil {
			b.Fatal(err)
		}
		imagetest.Create(b, dir, "mid.qcow2", "qcow2", benchSize, "backing_file=src.raw", "backing_fmt=raw")
		top := imagetest.Create(b, dir, "top.qcow2", "qcow2", benchSize, "backing_file=mid.qcow2", "backing_fmt=qcow2")
		var mid, tp []string
		for c := 0; c < benchSize>>16; c++ {
			if c%3 == 0 {
				mid = append(mid, fmt.Sprintf("write -P %d %dk 64k", c%251, c*64))
			}
			if c%5 == 0 {
				tp = append(tp, fmt.Sprintf("write -P %d %dk 64k", c%241, c*64))
			}
		}
		imagetest.QemuIO(b, "qcow2", filepath.Join(dir, "mid.qcow2"), mid...)
		imagetest.QemuIO(b, "qcow2", top, tp...)
		return top
	default: // "zlib", "zstd"
		if err := os.WriteFile(src, textLike(benchSize), 0o644); err != nil {
			b.Fatal(err)
		}
		out := filepath.Join(dir, kind+".qcow2")
		imagetest.QemuImg(b, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type="+kind, src, out)
		return out
	}
}

func BenchmarkReadAt(b *testing.B) {
	for _, kind := range []string{"chain", "zlib", "zstd"} {
		path := benchImage(b, kind)
		c, err := layers.Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		l := c.Top()
		b.Run(kind+"/seq-1MiB", func(b *testing.B) {
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			off := int64(0)
			for i := 0; i < b.N; i++ {
				if _, err := l.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
				off = (off + int64(len(buf))) % l.Size
			}
		})
		b.Run(kind+"/rand-4KiB", func(b *testing.B) {
			buf := make([]byte, 4096)
			rng := rand.New(rand.NewPCG(5, 6))
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := l.ReadAt(buf, rng.Int64N(l.Size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
		c.Close()
	}
}

package layers_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// BenchmarkDeepReadAt reads the same 256 MiB of guest data through 256
// layers and through 3 (issue 13: >= 0.9x): a random base, with 255
// clusters written by 255 overlays, or by 2. "warm" reads an opened chain
// whose resolved windows and tables are cached after the first pass;
// "cold" opens the chain for every pass.
//
//	go test ./layers -run XXX -bench DeepReadAt -benchtime 20x
func BenchmarkDeepReadAt(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	raw := filepath.Join(dir, "base.raw")
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil
	tops := map[string]string{}
	for _, shape := range []string{"256 layers", "3 layers"} {
		d := filepath.Join(dir, fmt.Sprint(len(tops)))
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
		base := filepath.Join(d, "base.qcow2")
		imagetest.QemuImg(b, "convert", "-f", "raw", "-O", "qcow2", raw, base)
		if shape == "256 layers" {
			tops[shape] = imagetest.Overlays(b, base, 255, 1<<20)
			continue
		}
		prev := "base.qcow2"
		for _, part := range [][2]int{{1, 127}, {128, 255}} {
			name := fmt.Sprintf("o%d.qcow2", part[0])
			p := imagetest.Create(b, d, name, "qcow2", size, "backing_file="+prev, "backing_fmt=qcow2")
			var cmds []string
			for i := part[0]; i <= part[1]; i++ {
				cmds = append(cmds, fmt.Sprintf("write -q -P %d %d 64k", i%250+2, i<<20))
			}
			imagetest.QemuIO(b, "qcow2", p, cmds...)
			prev, tops[shape] = name, p
		}
	}
	buf := make([]byte, 1<<20)
	pass := func(b *testing.B, l *layers.Layer) {
		for off := int64(0); off < l.Size; off += int64(len(buf)) {
			if _, err := l.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, shape := range []string{"256 layers", "3 layers"} {
		b.Run(shape+"/warm seq 1MiB", func(b *testing.B) {
			c, err := layers.Open(tops[shape], nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			pass(b, c.Top())
			b.SetBytes(size)
			b.ResetTimer()
			for b.Loop() {
				pass(b, c.Top())
			}
		})
		b.Run(shape+"/cold seq 1MiB", func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				c, err := layers.Open(tops[shape], nil)
				if err != nil {
					b.Fatal(err)
				}
				pass(b, c.Top())
				c.Close()
			}
		})
		b.Run(shape+"/warm rand 4KiB", func(b *testing.B) {
			c, err := layers.Open(tops[shape], nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			pass(b, c.Top())
			rng := rand.New(rand.NewPCG(5, 6))
			b.SetBytes(4096)
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Top().ReadAt(buf[:4096], rng.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package imagetest

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

// DeepChain describes a backing chain of many layers, each holding a
// random mix of data, zeroes, discards and compressed clusters at random
// offsets, as incremental backups stack them. A fixed Seed builds the
// same chain on every run.
type DeepChain struct {
	Layers int    // layers, base included
	Size   int64  // virtual size of each layer (a multiple of 128 KiB)
	Seed   uint64 // what each layer holds
	Ops    int    // qemu-io writes per layer (default 6)
	// Mixed varies the layers: a raw base (unless QcowBase); cluster
	// sizes of 4, 16 and 64 KiB; extended L2 entries; some layers half as
	// long as the others.
	Mixed, QcowBase bool
}

// DeepLayer is one built layer of a DeepChain.
type DeepLayer struct {
	Path, Format string
}

// Build makes the chain in dir, base first (l000), and returns its layers
// top first, as chainfs numbers them. Every layer is created over the one
// below with qemu-img and written with qemu-io, so discards and zero
// writes are what QEMU makes of them over a backing file.
func (d DeepChain) Build(t testing.TB, dir string) []DeepLayer {
	t.Helper()
	rng := rand.New(rand.NewPCG(d.Seed, uint64(d.Layers)))
	ops := d.Ops
	if ops == 0 {
		ops = 6
	}
	var built []DeepLayer
	for i := range d.Layers {
		name := fmt.Sprintf("l%03d", i)
		size := d.Size
		if d.Mixed && i > 0 && rng.IntN(5) == 0 {
			size /= 2
		}
		cluster := int64(64 << 10)
		var layer DeepLayer
		if d.Mixed && !d.QcowBase && i == 0 {
			layer = DeepLayer{Path: Create(t, dir, name+".raw", "raw", size), Format: "raw"}
		} else {
			opts := []string{}
			if d.Mixed {
				cluster = []int64{4 << 10, 16 << 10, 64 << 10}[rng.IntN(3)]
				if cluster >= 16<<10 && rng.IntN(3) == 0 {
					opts = append(opts, "extended_l2=on")
				}
				if rng.IntN(2) == 0 {
					opts = append(opts, "compression_type=zstd")
				}
			}
			opts = append(opts, fmt.Sprintf("cluster_size=%d", cluster))
			if i > 0 {
				below := built[len(built)-1]
				opts = append(opts, "backing_file="+filepath.Base(below.Path), "backing_fmt="+below.Format)
			}
			layer = DeepLayer{Path: Create(t, dir, name+".qcow2", "qcow2", size, opts...), Format: "qcow2"}
		}
		// QEMU writes a compressed cluster only where the image holds
		// nothing yet: those go first, each to its own cluster.
		var compressed, cmds []string
		seen := map[string]bool{}
		for range ops {
			c, isCompressed := deepOp(rng, layer.Format, size, cluster, i)
			switch {
			case !isCompressed:
				cmds = append(cmds, c)
			case !seen[c]:
				seen[c] = true
				compressed = append(compressed, c)
			}
		}
		QemuIO(t, layer.Format, layer.Path, append(compressed, cmds...)...)
		built = append(built, layer)
	}
	slices.Reverse(built)
	return built
}

// deepOp picks one write for layer i: data (of a pattern naming the layer)
// or zeroes of 512 bytes to three clusters anywhere, a discard, or one
// compressed cluster.
func deepOp(rng *rand.Rand, format string, size, cluster int64, i int) (cmd string, compressed bool) {
	length := 512 * (1 + rng.Int64N(3*cluster/512))
	off := 512 * rng.Int64N(size/512)
	length = min(length, size-off)
	pattern := 1 + i%250
	switch k := rng.IntN(10); {
	case k < 4:
		return fmt.Sprintf("write -P %d %d %d", pattern, off, length), false
	case k < 6:
		return fmt.Sprintf("write -z %d %d", off, length), false
	case k < 7:
		return fmt.Sprintf("write -z -u %d %d", off, length), false
	case k < 8 || format == "raw":
		return fmt.Sprintf("discard %d %d", off, length), false
	default:
		off = cluster * rng.Int64N(size/cluster)
		return fmt.Sprintf("write -c -P %d %d %d", pattern, off, cluster), true
	}
}

// Overlays stacks n overlays on the qcow2 image base, each of base's
// virtual size, overlay i (from 1) holding one 64 KiB cluster of pattern
// i%250+2 at i*step, as tests/bench/deep.sh builds its chains; it returns
// the path of the top. Each overlay is written alone (whole clusters, so
// nothing is copied up from below) and then rebased unsafely onto the one
// below: writing through a growing chain would open it whole every time.
func Overlays(t testing.TB, base string, n int, step int64) string {
	t.Helper()
	dir := filepath.Dir(base)
	size := System.Info(t, base, "qcow2").VirtualSize
	prev := base
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("o%03d.qcow2", i)
		p := Create(t, dir, name, "qcow2", size, "cluster_size=65536")
		QemuIO(t, "qcow2", p, fmt.Sprintf("write -q -P %d %d 64k", i%250+2, int64(i)*step))
		QemuImg(t, "rebase", "-q", "-u", "-f", "qcow2", "-b", filepath.Base(prev), "-F", "qcow2", p)
		prev = p
	}
	return prev
}

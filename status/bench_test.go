package status_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// The map benchmarks time chainfs and `qemu-img map --output=json` on the
// same image in the same run; divide the two ns/op for the ratio.
//
//	go test ./status -run XXX -bench Map -benchtime 5x

var benchImages struct {
	once               sync.Once
	dir                string
	prealloc, fragment string
	err                error
}

func benchSetup(b *testing.B) (prealloc, fragment string) {
	b.Helper()
	benchImages.once.Do(func() {
		dir, err := os.MkdirTemp("", "chainfs-bench-")
		if err != nil {
			benchImages.err = err
			return
		}
		benchImages.dir = dir
		// (a) 1 TiB with preallocation=metadata: 16M L2 entries.
		benchImages.prealloc = imagetest.Create(b, dir, "prealloc.qcow2", "qcow2", 1<<40, "preallocation=metadata")
		// (b) two layers of 4 KiB clusters, each with tens of thousands of
		// 4 KiB extents interleaved with the other's.
		base := imagetest.Create(b, dir, "frag-base.qcow2", "qcow2", 1<<30, "cluster_size=4k")
		top := imagetest.Create(b, dir, "frag-top.qcow2", "qcow2", 1<<30, "cluster_size=4k", "backing_file=frag-base.qcow2", "backing_fmt=qcow2")
		var sb, st strings.Builder
		for i := int64(0); i < 40000; i++ {
			off := i * 3 * 4096
			fmt.Fprintf(&sb, "write -P %d %d 4k\n", i%251, off)
			if i%2 == 0 {
				fmt.Fprintf(&st, "write -P %d %d 4k\n", i%253, off+4096)
			} else {
				fmt.Fprintf(&st, "write -z %d 4k\n", off+4096)
			}
		}
		for _, s := range []struct{ path, script string }{{base, sb.String()}, {top, st.String()}} {
			cmd := exec.Command("qemu-io", "-f", "qcow2", s.path)
			cmd.Stdin = strings.NewReader(s.script)
			cmd.Stdout = io.Discard
			if err := cmd.Run(); err != nil {
				benchImages.err = fmt.Errorf("qemu-io %s: %v", s.path, err)
				return
			}
		}
		benchImages.fragment = top
	})
	if benchImages.err != nil {
		b.Fatal(benchImages.err)
	}
	return benchImages.prealloc, benchImages.fragment
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchImages.dir != "" {
		os.RemoveAll(benchImages.dir)
	}
	os.Exit(code)
}

func benchMap(b *testing.B, path string) {
	b.Run("chainfs", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			c, err := layers.Open(path, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := status.WriteMapJSON(io.Discard, c.Top()); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			cmd := exec.Command("qemu-img", "map", "--output=json", "-f", "qcow2", path)
			cmd.Stdout = io.Discard
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMapPreallocMetadata1TiB(b *testing.B) {
	p, _ := benchSetup(b)
	benchMap(b, p)
}

func BenchmarkMapFragmented(b *testing.B) {
	_, f := benchSetup(b)
	benchMap(b, f)
}

// BenchmarkDeepChain is issue 13's third target: the map and the depth of
// every layer of a 256-layer chain, rendered in one process, against one
// map of its top (both open the chain first). The chain is
// $CHAINFS_DEEP_TOP (tests/bench/deep.sh passes its own), or 256 layers of
// 1 GiB built here: a base holding 1 MiB, each overlay one 64 KiB cluster
// at its own offset.
//
//	go test ./status -run XXX -bench DeepChain -benchtime 3x
func BenchmarkDeepChain(b *testing.B) {
	top := os.Getenv("CHAINFS_DEEP_TOP")
	if top == "" {
		dir := b.TempDir()
		base := imagetest.Create(b, dir, "base.qcow2", "qcow2", 1<<30)
		imagetest.QemuIO(b, "qcow2", base, "write -q -P 1 0 1M")
		top = imagetest.Overlays(b, base, 255, 4<<20)
	}
	b.Run("open, map of the top", func(b *testing.B) {
		for b.Loop() {
			c, err := layers.Open(top, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := status.WriteMapJSON(io.Discard, c.Top()); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("open, map and depth of every layer", func(b *testing.B) {
		for b.Loop() {
			c, err := layers.Open(top, nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, l := range c.Layers {
				if err := status.WriteMapJSON(io.Discard, l); err != nil {
					b.Fatal(err)
				}
				if err := status.WriteDepth(io.Discard, l); err != nil {
					b.Fatal(err)
				}
			}
			c.Close()
		}
	})
}

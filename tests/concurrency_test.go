package tests

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// TestConcurrentReads: 8 goroutines read random ranges of every layer's
// view of a five-layer chain (compressed clusters, subclusters, zero
// clusters, a raw base with holes) through the mount at once, each byte
// checked against qemu-img convert of the layer. Half the readers open the
// views with O_DIRECT and the others drop their page cache now and then,
// so that the reads reach the daemon rather than the kernel's cache. Under
// -race the daemon is built with the race detector too (race_test.go), and
// a race it reports fails the test through the mount's log.
func TestConcurrentReads(t *testing.T) {
	var c chainCase
	for _, cc := range chainCases {
		if cc.name == "five layers, compressed clusters with subclusters" {
			c = cc
		}
	}
	dir := t.TempDir()
	chain := c.build(t, dir)
	mnt := mount(t, chain[0].path)
	type view struct {
		path string
		ref  []byte
	}
	var views []view
	for i, l := range chain {
		views = append(views, view{filepath.Join(mnt, viewName(i, l)+".raw"), imagetest.ConvertRaw(t, l.path, l.format)})
	}

	const readers = 8
	duration := 3 * time.Second
	if testing.Short() {
		duration = time.Second
	}
	deadline := time.Now().Add(duration)
	var reads, bytesRead atomic.Int64
	var wg sync.WaitGroup
	for g := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 0xc0ffee))
			flag := os.O_RDONLY
			if g%2 == 0 {
				flag |= syscall.O_DIRECT
			}
			files := make([]*os.File, len(views))
			for i, v := range views {
				f, err := os.OpenFile(v.path, flag, 0)
				if err != nil {
					t.Error(err)
					return
				}
				defer f.Close()
				files[i] = f
			}
			buf := make([]byte, 1<<20)
			for n := 0; time.Now().Before(deadline); n++ {
				i := rng.IntN(len(views))
				v, f := views[i], files[i]
				size := int64(len(v.ref))
				off := rng.Int64N(size + 4096)
				if rng.IntN(2) == 0 {
					off &^= 4095
				}
				length := 1 + rng.IntN(len(buf))
				if rng.IntN(3) == 0 {
					length = 4096
				}
				got, err := f.ReadAt(buf[:length], off)
				want := v.ref[min(off, size):min(off+int64(length), size)]
				if (err != nil && err != io.EOF) || got != len(want) || !bytes.Equal(buf[:got], want) {
					t.Errorf("%s: read of %d at %d: %d bytes, %v; want %d bytes as qemu-img reads them",
						filepath.Base(v.path), length, off, got, err, len(want))
					return
				}
				reads.Add(1)
				bytesRead.Add(int64(got))
				if flag&syscall.O_DIRECT == 0 && n%16 == 15 {
					unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d reads, %d bytes from %d readers over %d views", reads.Load(), bytesRead.Load(), readers, len(views))
	if reads.Load() < readers*10 {
		t.Errorf("only %d reads in %v", reads.Load(), duration)
	}
}

package tests

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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

// TestDirectQueue: QEMU reads a view as a VM's disk or a backup tool
// does, with Linux AIO (io_submit), O_DIRECT and 16 requests in flight
// (qemu-img convert -m 16, aio=native, cache.direct=on), and gets the
// bytes qemu-img convert reads from the image itself. The requests reach
// the daemon together, not one at a time: that takes FUSE_ASYNC_DIO,
// which go-fuse does not ask for by itself. The daemon's statistics,
// logged on SIGUSR1, show the most reads it served at once.
func TestDirectQueue(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 64<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x5a 0 64M")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.QemuIO(t, "qcow2", top, "write -P 0x6b 1M 8M", "write -c -P 0x7c 20M 4M", "write -z 40M 2M")
	mnt := mount(t, top)

	out := filepath.Join(dir, "out.raw")
	imagetest.QemuImg(t, "convert", "-m", "16", "-W", "--image-opts",
		"driver=raw,file.driver=file,file.aio=native,cache.direct=on,file.filename="+filepath.Join(mnt, "0-top.qcow2.raw"),
		"-O", "raw", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := imagetest.ConvertRaw(t, top, "qcow2"); !bytes.Equal(got, want) {
		t.Fatalf("read with Linux AIO and O_DIRECT (%d bytes): differs from qemu-img convert of the image (%d bytes)", len(got), len(want))
	}

	if err := syscall.Kill(serverPID(t, mnt), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	peak := regexp.MustCompile(`reads_at_once_peak=(\d+)`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m := peak.FindStringSubmatch(mountLog(t, mnt)); m != nil {
			if n, _ := strconv.Atoi(m[1]); n < 2 {
				t.Fatalf("16 O_DIRECT reads in flight reached the daemon one at a time (%s)", m[0])
			}
			t.Logf("%s", m[0])
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no statistics logged 10 s after SIGUSR1")
		}
	}
}

package fs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// strictLog returns a logger that fails t on every warning or error it
// receives, except those whose message or fields contain one of allow: a
// panic or an unexpected EIO is a bug.
func strictLog(t *testing.T, allow ...string) *logrus.Logger {
	log := logrus.New()
	log.SetOutput(os.Stderr)
	if testing.Verbose() {
		log.SetLevel(logrus.DebugLevel)
	}
	log.AddHook(&failHook{t: t, allow: allow})
	return log
}

type failHook struct {
	t     *testing.T
	allow []string
}

func (h *failHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (h *failHook) Fire(e *logrus.Entry) error {
	line := e.Message + " " + fmt.Sprint(e.Data)
	for _, a := range h.allow {
		if strings.Contains(line, a) {
			return nil
		}
	}
	h.t.Errorf("unexpected %s logged: %s %v", e.Level, e.Message, e.Data)
	return nil
}

// testChain builds top.qcow2 -> base.raw in a temporary directory: data,
// a compressed cluster, zero clusters and holes, 2 MiB.
func testChain(t *testing.T) (dir string, chain *layers.Chain) {
	t.Helper()
	dir = t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 2<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 512k", "write -P 0x12 1M 64k")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.QemuIO(t, "qcow2", top, "write -z 64k 64k", "write -c -P 0x21 768k 128k", "write -P 0x22 1500k 3k")
	chain, err := layers.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	return dir, chain
}

// mountChain mounts chain in-process and unmounts it at cleanup.
func mountChain(t *testing.T, chain *layers.Chain, opts *Options) string {
	t.Helper()
	mnt := t.TempDir()
	opts.Debug = testing.Verbose()
	srv, err := Mount(mnt, chain, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return mnt
}

func TestTree(t *testing.T) {
	_, chain := testChain(t)
	mnt := mountChain(t, chain, &Options{Log: strictLog(t)})
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"0-top.qcow2.raw", "0-top.qcow2.map.json", "0-top.qcow2.depth", "1-base.raw.raw", "1-base.raw.map.json", "1-base.raw.depth"}
	if !slices.Equal(names, want) {
		t.Errorf("readdir: %q, want %q", names, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil || st.Mode != syscall.S_IFDIR|0o555 {
		t.Errorf("root: mode %o, %v", st.Mode, err)
	}
	for i, n := range want {
		if err := syscall.Stat(filepath.Join(mnt, n), &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != uint64(2+i) {
			t.Errorf("%s: inode %d, want %d (stable across mounts)", n, st.Ino, 2+i)
		}
	}
}

// TestGeneratedLazily: readdir renders nothing; the first stat renders
// the file, with its exact size.
func TestGeneratedLazily(t *testing.T) {
	_, chain := testChain(t)
	opts := &Options{Log: strictLog(t), Debug: testing.Verbose()}
	root := NewRoot(chain, opts).(*rootNode)
	mnt := t.TempDir()
	srv, err := gofs.Mount(mnt, root, GoFuseOptions(chain, opts))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatal(err)
	}
	gens := map[string]*renderedNode{}
	for name, ch := range root.Children() {
		if g, ok := ch.Operations().(*renderedNode); ok {
			gens[name] = g
		}
	}
	if len(gens) != 2*len(chain.Layers) {
		t.Fatalf("%d generated files, want %d", len(gens), 2*len(chain.Layers))
	}
	for name, n := range gens {
		n.mu.Lock()
		done := n.done
		n.mu.Unlock()
		if done {
			t.Errorf("%s rendered by readdir", name)
		}
	}
	for name, n := range gens {
		fi, err := os.Stat(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(len(b)) || len(b) == 0 {
			t.Errorf("%s: st_size %d, read %d bytes", name, fi.Size(), len(b))
		}
		n.mu.Lock()
		done := n.done
		n.mu.Unlock()
		if !done {
			t.Errorf("%s not kept after stat", name)
		}
	}
}

// TestParallelReads reads the views from many goroutines at random
// offsets and compares with qemu-img convert (run under -race).
func TestParallelReads(t *testing.T) {
	_, chain := testChain(t)
	mnt := mountChain(t, chain, &Options{Log: strictLog(t)})
	for i, l := range chain.Layers {
		ref := imagetest.ConvertRaw(t, l.Path, l.Format.String())
		view := filepath.Join(mnt, entryName(i, filepath.Base(l.Path), ".raw"))
		got, err := os.ReadFile(view)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ref) {
			t.Fatalf("%s differs from qemu-img convert", view)
		}
		f, err := os.Open(view)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), 1))
				buf := make([]byte, 256<<10)
				for range 50 {
					off := rng.Int64N(int64(len(ref)) + 4096)
					n, err := f.ReadAt(buf[:rng.IntN(len(buf))+1], off)
					want := ref[min(off, int64(len(ref))):min(off+int64(n), int64(len(ref)))]
					if (err != nil && n == 0 && off < int64(len(ref))) || !bytes.Equal(buf[:n], want) {
						t.Errorf("%s: read at %d: %d bytes, %v; differs", view, off, n, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		f.Close()
	}
}

// TestSeekAndEdges: lseek's ENXIO rules, empty reads past the end, and
// EROFS for every way of writing.
func TestSeekAndEdges(t *testing.T) {
	_, chain := testChain(t)
	mnt := mountChain(t, chain, &Options{Log: strictLog(t)})
	f, err := os.Open(filepath.Join(mnt, "0-top.qcow2.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	size := chain.Top().Size
	type seek struct {
		off    int64
		whence int
		want   int64
		err    error
	}
	for _, s := range []seek{
		{0, unix.SEEK_DATA, 0, nil},
		{0, unix.SEEK_HOLE, 64 << 10, nil}, // zero clusters at 64k
		{64 << 10, unix.SEEK_DATA, 128 << 10, nil},
		{size, unix.SEEK_DATA, 0, unix.ENXIO},
		{size, unix.SEEK_HOLE, 0, unix.ENXIO},
		{size - 1, unix.SEEK_HOLE, size - 1, nil},   // a hole at the end
		{1536 << 10, unix.SEEK_DATA, 0, unix.ENXIO}, // after the last cluster written
	} {
		got, err := unix.Seek(fd, s.off, s.whence)
		if err != s.err || (err == nil && got != s.want) {
			t.Errorf("lseek(%d, %d) = %d, %v; want %d, %v", s.off, s.whence, got, err, s.want, s.err)
		}
	}
	buf := make([]byte, 100)
	if n, _ := f.ReadAt(buf, size); n != 0 {
		t.Errorf("read at the end: %d bytes", n)
	}
	for _, name := range []string{"0-top.qcow2.raw", "0-top.qcow2.depth"} {
		p := filepath.Join(mnt, name)
		if _, err := os.OpenFile(p, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
			t.Errorf("open %s O_RDWR: %v, want EROFS", name, err)
		}
		if err := os.Truncate(p, 0); !errors.Is(err, syscall.EROFS) {
			t.Errorf("truncate %s: %v, want EROFS", name, err)
		}
	}
}

// TestWriteMethodsRefuse calls the write paths directly, as a mount
// without "ro" would reach them.
func TestWriteMethodsRefuse(t *testing.T) {
	f := file{layer: &layers.Layer{}, log: logrus.New()}
	f = f.named("x")
	if _, errno := f.Write(nil, nil, []byte("x"), 0); errno != syscall.EROFS {
		t.Errorf("Write: %v", errno)
	}
	if errno := f.Setattr(nil, nil, &fuse.SetAttrIn{}, &fuse.AttrOut{}); errno != syscall.EROFS {
		t.Errorf("Setattr: %v", errno)
	}
	if errno := f.Allocate(nil, nil, 0, 1, 0); errno != syscall.EROFS {
		t.Errorf("Allocate: %v", errno)
	}
	for _, fl := range []uint32{syscall.O_WRONLY, syscall.O_RDWR, syscall.O_RDONLY | syscall.O_TRUNC} {
		if errno := f.openFlags(fl); errno != syscall.EROFS {
			t.Errorf("open %#x: %v", fl, errno)
		}
	}
	if errno := f.openFlags(syscall.O_RDONLY | syscall.O_NOATIME); errno != 0 {
		t.Errorf("open read-only: %v", errno)
	}
}

// TestPanicHandler: a panic in a request becomes EIO and an error line
// with the stack.
func TestPanicHandler(t *testing.T) {
	_, chain := testChain(t)
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	opts := GoFuseOptions(chain, &Options{Log: log})
	if st := opts.PanicHandler("boom"); st != fuse.EIO {
		t.Errorf("status %v, want EIO", st)
	}
	if s := buf.String(); !strings.Contains(s, "level=error") || !strings.Contains(s, "BUG: panic") || !strings.Contains(s, "boom") || !strings.Contains(s, "fs_test.go") {
		t.Errorf("log: %s", s)
	}
}

func TestEntryName(t *testing.T) {
	if got := entryName(3, "x.qcow2", ".raw"); got != "3-x.qcow2.raw" {
		t.Errorf("got %q", got)
	}
	long := strings.Repeat("a", 300) + ".qcow2"
	got := entryName(12, long, ".map.json")
	if len(got) != 255 || !strings.HasPrefix(got, "12-aaa") || !strings.HasSuffix(got, "a.qcow2.map.json") || !strings.Contains(got, "...") {
		t.Errorf("long name: %d bytes, %q", len(got), got)
	}
}

func TestLogWriter(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	w := &logWriter{log: log}
	w.Write([]byte("first line\nsecond "))
	w.Write([]byte("half\n\n"))
	s := buf.String()
	if strings.Count(s, "level=warning") != 2 || !strings.Contains(s, `"second half"`) {
		t.Errorf("log:\n%s", s)
	}
}

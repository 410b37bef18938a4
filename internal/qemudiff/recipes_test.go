package qemudiff

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// The images the differential fuzzer breaks: one of every kind the other
// tests build (see layers/layers_test.go and status/status_test.go), kept
// small so that QEMU's tools answer quickly. Each is built once per test
// process, bottom first, in a directory of its own; a case copies the
// whole directory and mutates the top image.

const (
	kiB = 1 << 10
	miB = 1 << 20
)

type recipe struct {
	name string
	// build makes the chain in dir and returns the top image's file name.
	build func(t testing.TB, dir string) string
}

func create(t testing.TB, dir, name, format string, size int64, opts ...string) string {
	return filepath.Base(imagetest.Create(t, dir, name, format, size, opts...))
}

func qio(t testing.TB, dir, name, format string, cmds ...string) {
	imagetest.QemuIO(t, format, filepath.Join(dir, name), cmds...)
}

var recipes = []recipe{
	{"v3, 64 KiB clusters: data, zero, discarded and compressed clusters", func(t testing.TB, dir string) string {
		p := create(t, dir, "top.qcow2", "qcow2", 1*miB)
		qio(t, dir, p, "qcow2", "write -P 1 0 128k", "write -z 128k 64k", "write -c -P 2 256k 64k", "write -c -P 3 320k 64k",
			"write -P 4 512k 64k", "discard 512k 64k", "write -P 5 960k 64k")
		return p
	}},
	{"v2, 4 KiB clusters", func(t testing.TB, dir string) string {
		p := create(t, dir, "v2.qcow2", "qcow2", 512*kiB, "compat=0.10", "cluster_size=4096")
		qio(t, dir, p, "qcow2", "write -P 1 0 16k", "write -c -P 2 64k 4k", "write -P 3 500k 4k")
		return p
	}},
	{"512-byte clusters over several L2 tables", func(t testing.TB, dir string) string {
		p := create(t, dir, "small.qcow2", "qcow2", 160*kiB, "cluster_size=512")
		qio(t, dir, p, "qcow2", "write -P 1 0 2k", "write -z 40k 1k", "write -c -P 2 70k 512", "write -P 3 100k 8k")
		return p
	}},
	// No compressed cluster here: qemu-img convert --salvage retries a
	// broken one sector by sector, inflating all 2 MiB 4096 times (40 s).
	{"2 MiB clusters", func(t testing.TB, dir string) string {
		p := create(t, dir, "big.qcow2", "qcow2", 6*miB, "cluster_size=2M")
		qio(t, dir, p, "qcow2", "write -P 1 0 64k", "write -P 2 2M 2M")
		return p
	}},
	{"extended L2 over a raw backing file", func(t testing.TB, dir string) string {
		b := create(t, dir, "base.raw", "raw", 1*miB)
		qio(t, dir, b, "raw", "write -P 0x77 0 1M")
		p := create(t, dir, "ext.qcow2", "qcow2", 1*miB, "extended_l2=on", "cluster_size=64k", "backing_file=base.raw", "backing_fmt=raw")
		qio(t, dir, p, "qcow2", "write -P 1 0 2k", "write -P 2 6k 4k", "write -z 64k 4k", "write -z 128k 64k",
			"write -P 3 256k 64k", "discard 256k 2k", "write -z -u 512k 64k", "write -c -P 4 768k 64k")
		return p
	}},
	{"extended L2, the file ending inside its last cluster", func(t testing.TB, dir string) string {
		p := create(t, dir, "ext.qcow2", "qcow2", 1*miB, "extended_l2=on")
		qio(t, dir, p, "qcow2", "write -P 1 64k 64k", "write -P 2 0 2k")
		return p
	}},
	{"zlib, qemu-img convert -c", func(t testing.TB, dir string) string {
		src := filepath.Join(t.TempDir(), "src.raw")
		imagetest.QemuImg(t, "create", "-q", "-f", "raw", src, "1M")
		imagetest.QemuIO(t, "raw", src, "write -P 0x5a 0 256k", "write -P 0x5b 512k 64k")
		p := filepath.Join(dir, "zlib.qcow2")
		imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", src, p)
		return filepath.Base(p)
	}},
	{"zstd, qemu-img convert -c, over a qcow2 backing file", func(t testing.TB, dir string) string {
		b := create(t, dir, "base.qcow2", "qcow2", 1*miB)
		qio(t, dir, b, "qcow2", "write -P 0x11 0 1M")
		src := filepath.Join(t.TempDir(), "src.raw")
		imagetest.QemuImg(t, "create", "-q", "-f", "raw", src, "1M")
		imagetest.QemuIO(t, "raw", src, "write -P 0x5a 0 128k", "write -P 0x5b 512k 64k")
		p := filepath.Join(dir, "zstd.qcow2")
		imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", "-B", "base.qcow2", "-F", "qcow2", src, p)
		return filepath.Base(p)
	}},
	{"backing file whose format is not recorded", func(t testing.TB, dir string) string {
		b := create(t, dir, "base.img", "raw", 1*miB)
		qio(t, dir, b, "raw", "write -P 0x21 0 1M")
		p := create(t, dir, "top.qcow2", "qcow2", 1*miB, "backing_file=base.img", "backing_fmt=raw")
		qio(t, dir, p, "qcow2", "write -P 0x22 64k 64k", "write -z 192k 64k")
		imagetest.DropBackingFormat(t, filepath.Join(dir, p))
		return p
	}},
	{"external data file", func(t testing.TB, dir string) string {
		p := create(t, dir, "top.qcow2", "qcow2", 1*miB, "data_file=top.data")
		qio(t, dir, p, "qcow2", "write -P 0x62 64k 64k", "write -z 256k 64k", "write -P 0x63 512k 128k")
		return p
	}},
	{"external data file, data_file_raw", func(t testing.TB, dir string) string {
		p := create(t, dir, "top.qcow2", "qcow2", 1000*kiB, "data_file=top.data", "data_file_raw=on")
		qio(t, dir, p, "qcow2", "write -P 0x62 64k 64k", "write -z 256k 64k", "write -P 0x63 900k 100k")
		return p
	}},
	{"internal snapshots", func(t testing.TB, dir string) string {
		p := create(t, dir, "snap.qcow2", "qcow2", 1*miB)
		qio(t, dir, p, "qcow2", "write -P 1 0 128k")
		imagetest.QemuImg(t, "snapshot", "-c", "first", filepath.Join(dir, p))
		qio(t, dir, p, "qcow2", "write -P 2 64k 128k")
		imagetest.QemuImg(t, "snapshot", "-c", "second", filepath.Join(dir, p))
		qio(t, dir, p, "qcow2", "write -z 0 64k")
		return p
	}},
	{"persistent dirty bitmaps", func(t testing.TB, dir string) string {
		p := create(t, dir, "bitmap.qcow2", "qcow2", 1*miB)
		imagetest.QemuImg(t, "bitmap", "--add", filepath.Join(dir, p), "b0")
		imagetest.QemuImg(t, "bitmap", "--add", "-g", "128k", filepath.Join(dir, p), "b1")
		qio(t, dir, p, "qcow2", "write -P 1 0 64k", "write -P 2 512k 192k")
		return p
	}},
	{"preallocation=metadata", func(t testing.TB, dir string) string {
		p := create(t, dir, "pre.qcow2", "qcow2", 2*miB, "preallocation=metadata")
		qio(t, dir, p, "qcow2", "write -P 1 0 64k", "write -z 1M 64k")
		return p
	}},
	{"unaligned virtual size over a longer backing file", func(t testing.TB, dir string) string {
		b := create(t, dir, "base.qcow2", "qcow2", 2*miB)
		qio(t, dir, b, "qcow2", "write -P 1 0 2M")
		p := create(t, dir, "top.qcow2", "qcow2", 1000000, "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, dir, p, "qcow2", "write -P 2 64k 64k", "write -P 3 983040 16960")
		return p
	}},
}

// built holds each recipe's directory, top image name and layout, built
// once per process.
var built struct {
	sync.Mutex
	root    string
	recipes map[int]builtRecipe
}

type builtRecipe struct {
	dir, top string
	lay      *layout
}

// recipeLayout returns the top image of recipe i and where its structures
// lie.
func recipeLayout(t testing.TB, i int) (string, *layout) {
	t.Helper()
	r := recipeBuilt(t, i)
	return filepath.Join(r.dir, r.top), r.lay
}

// recipeDir returns the directory holding recipe i's images and the top
// image's name.
func recipeDir(t testing.TB, i int) (string, string) {
	t.Helper()
	r := recipeBuilt(t, i)
	return r.dir, r.top
}

// recipeBuilt builds recipe i on first use.
func recipeBuilt(t testing.TB, i int) builtRecipe {
	t.Helper()
	built.Lock()
	defer built.Unlock()
	if r, ok := built.recipes[i]; ok {
		return r
	}
	if built.root == "" {
		r, err := os.MkdirTemp("", "qemudiff-recipes-")
		if err != nil {
			t.Fatal(err)
		}
		built.root = r
	}
	d := filepath.Join(built.root, fmt.Sprint(i))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	top := recipes[i].build(t, d)
	b, err := os.ReadFile(filepath.Join(d, top))
	if err != nil {
		t.Fatal(err)
	}
	r := builtRecipe{d, top, layoutOf(t, b)}
	if built.recipes == nil {
		built.recipes = map[int]builtRecipe{}
	}
	built.recipes[i] = r
	return r
}

// copyDir copies the files of src into dst with cp, which keeps holes
// where the source has them: QEMU's preallocation guess and the maps of
// preallocated images depend on them.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	imagetest.Run(t, "", "cp", "-r", "--sparse=auto", src+"/.", dst)
}

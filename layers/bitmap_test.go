package layers_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// TestBitmapsAgainstQEMU checks the bitmap directory of every layer of each
// chain against `qemu-img info` of both QEMUs (names, granularities,
// flags), and that the runs of each bitmap tile its disk as qemu-nbd's
// context does. The runs themselves are compared with qemu-nbd in the
// status package.
func TestBitmapsAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	for _, c := range imagetest.BitmapCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			top := c.Build(t, t.TempDir())
			log, hook := testLog()
			chain, err := layers.Open(top, &layers.Options{Log: log})
			if err != nil {
				t.Fatal(err)
			}
			defer chain.Close()
			if w := warnings(hook); len(w) > 0 {
				t.Errorf("unexpected warnings: %q", w)
			}
			seen := 0
			for _, l := range chain.Layers {
				bms := l.Bitmaps()
				seen += len(bms)
				for _, q := range oracles {
					checkBitmapList(t, q, l)
				}
				for i := range bms {
					checkRuns(t, l, &bms[i])
				}
			}
			if seen == 0 {
				t.Fatal("the chain has no bitmaps")
			}
		})
	}
}

// checkBitmapList compares the bitmap directory with what q's `qemu-img
// info` lists.
func checkBitmapList(t *testing.T, q imagetest.QEMU, l *layers.Layer) {
	t.Helper()
	var got []imagetest.BitmapInfo
	for _, b := range l.Bitmaps() {
		flags := []string{}
		if b.InUse() {
			flags = append(flags, "in-use")
		}
		if b.Auto() {
			flags = append(flags, "auto")
		}
		got = append(got, imagetest.BitmapInfo{Name: b.Name, Granularity: b.Granularity, Flags: flags})
	}
	want := q.Info(t, l.Path, l.Format.String()).FormatSpecific.Data.Bitmaps
	if !slices.EqualFunc(got, want, func(a, b imagetest.BitmapInfo) bool {
		return a.Name == b.Name && a.Granularity == b.Granularity && slices.Equal(a.Flags, b.Flags)
	}) {
		t.Errorf("layer %d: bitmaps %+v, %s lists %+v", l.Index, got, q.Name(t), want)
	}
}

// checkRuns: the runs of b alternate between dirty and clean, start on
// granularity boundaries and tile the disk.
func checkRuns(t *testing.T, l *layers.Layer, b *layers.Bitmap) {
	t.Helper()
	at, first, last := int64(0), true, false
	err := b.Runs(func(off, length int64, dirty bool) error {
		if off != at || length <= 0 || off%b.Granularity != 0 || (!first && dirty == last) {
			t.Fatalf("layer %d bitmap %q: run [%#x, +%#x) dirty %v after %#x", l.Index, b.Name, off, length, dirty, at)
		}
		at, first, last = off+length, false, dirty
		return nil
	})
	if err != nil {
		t.Fatalf("layer %d bitmap %q: %v", l.Index, b.Name, err)
	}
	if at != l.Size {
		t.Errorf("layer %d bitmap %q: runs end at %#x, the disk at %#x", l.Index, b.Name, at, l.Size)
	}
}

// TestBitmapChecks holds the bitmap directory and tables to the checks
// QEMU makes when it opens an image: each row breaks one thing, and both
// QEMUs and Open refuse the image, Open with the reason.
func TestBitmapChecks(t *testing.T) {
	oracles := imagetest.Oracles(t)
	entry := imagetest.BitmapEntry
	table := func(t *testing.T, p string, i int) int64 { return int64(imagetest.ReadBE64(t, p, entry(t, p, i))) }
	rows := []struct {
		name, want string
		edit       func(t *testing.T, p string)
	}{
		{"two bitmaps of one name", `bitmap directory entry 1 at 0x`, func(t *testing.T, p string) {
			imagetest.Patch(t, p, entry(t, p, 1)+24, []byte("b0"))
		}},
		{"reserved bits in a table entry", `bitmap "b0": invalid table entry 0 (0x`, func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, table(t, p, 0), imagetest.ReadBE64(t, p, table(t, p, 0))|2)
		}},
		{"the all-ones flag with a cluster", `bitmap "b0": invalid table entry 0`, func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, table(t, p, 0), imagetest.ReadBE64(t, p, table(t, p, 0))|1)
		}},
		{"a table of the wrong size", `bitmap "b1": table of 2 entries, where the disk size 1048576 at granularity 4096 needs 1`, func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, entry(t, p, 1)+8, 2)
		}},
		{"extra data in a directory entry", "bitmap extra data is not supported (8 bytes)", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, entry(t, p, 0)+20, 8)
		}},
		{"a granularity under 512 bytes", `bitmap "b1" does not satisfy the constraints: granularity 2^8 outside 2^9..2^31`, func(t *testing.T, p string) {
			imagetest.Patch(t, p, entry(t, p, 1)+17, []byte{8})
		}},
		{"reserved flags", `bitmap "b0" does not satisfy the constraints: reserved flags 0x4 set`, func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, entry(t, p, 0)+12, imagetest.ReadBE32(t, p, entry(t, p, 0)+12)|4)
		}},
		{"a type other than dirty tracking", `bitmap "b1" does not satisfy the constraints: type 2`, func(t *testing.T, p string) {
			imagetest.Patch(t, p, entry(t, p, 1)+16, []byte{2})
		}},
		{"an unaligned bitmap table", `bitmap "b0" does not satisfy the constraints: bitmap table offset`, func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, entry(t, p, 0), uint64(table(t, p, 0)+512))
		}},
		{"more bitmaps than the extension gives", "more bitmaps found than the 1 the bitmaps extension gives", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, findExtension(t, p, 0x23852875)+8, 1)
		}},
		{"fewer bitmaps than the extension gives", "less bitmaps found (2) than the 3 the bitmaps extension gives", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, findExtension(t, p, 0x23852875)+8, 3)
		}},
		{"a directory cut inside an entry", "bitmap directory at 0x", func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, findExtension(t, p, 0x23852875)+16, 50)
		}},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := twoBitmaps(t, dir)
			r.edit(t, p)
			log, _ := testLog()
			c, err := layers.Open(p, &layers.Options{Log: log})
			if err == nil {
				c.Close()
				t.Fatalf("Open succeeded; want %q", r.want)
			}
			mustIs(t, err, layers.ErrCorrupt)
			contains(t, err, "b.qcow2: ", r.want)
			for _, q := range oracles {
				if _, stderr, err := q.ImgErr(t, dir, "info", p); err == nil {
					t.Errorf("%s opens the image", q.Name(t))
				} else {
					t.Logf("%s: %s", q.Name(t), strings.TrimSpace(stderr))
				}
			}
		})
	}
}

// twoBitmaps is a 1 MiB image with bitmaps b0 (64 KiB granularity) and b1
// (4 KiB) that recorded a few writes.
func twoBitmaps(t *testing.T, dir string) string {
	p := imagetest.Create(t, dir, "b.qcow2", "qcow2", 1*MiB)
	imagetest.AddBitmap(t, p, "b0", "-g", "64k")
	imagetest.AddBitmap(t, p, "b1", "-g", "4k")
	imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 100k", "write -P 2 600k 4k")
	return p
}

// TestBitmapsQEMUDoesNotTrust: bitmaps in use (a writer was killed, or the
// flag was set by hand on one) are listed with ErrInconsistent and never
// read; the others still are. Bitmaps of an image whose bitmaps autoclear
// bit a program cleared are left out with a warning. qemu-nbd refuses to
// export any of them.
func TestBitmapsQEMUDoesNotTrust(t *testing.T) {
	oracles := imagetest.Oracles(t)
	rows := []struct {
		name    string
		edit    func(t *testing.T, p string)
		inUse   []string // bitmaps listed in use
		gone    bool     // no bitmaps listed, a warning
		exports []string // what qemu-nbd exports
	}{
		{name: "a writer killed", edit: func(t *testing.T, p string) { imagetest.KillWriter(t, p) }, inUse: []string{"b0", "b1"}},
		{name: "the in-use flag set on one", inUse: []string{"b1"}, exports: []string{"b0"},
			edit: func(t *testing.T, p string) {
				e := imagetest.BitmapEntry(t, p, 1) + 12
				imagetest.PatchBE32(t, p, e, imagetest.ReadBE32(t, p, e)|layers.BitmapInUse)
			}},
		{name: "the bitmaps autoclear bit cleared", gone: true,
			edit: func(t *testing.T, p string) {
				imagetest.PatchBE64(t, p, 88, imagetest.ReadBE64(t, p, 88)&^layers.AutoclearBitmaps)
			}},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := twoBitmaps(t, dir)
			r.edit(t, p)
			log, hook := testLog()
			c, err := layers.Open(p, &layers.Options{Log: log})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			l := c.Top()
			w := warnings(hook)
			if r.gone {
				if len(l.Bitmaps()) != 0 || len(w) != 1 || !strings.Contains(w[0], "b.qcow2: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent") {
					t.Errorf("bitmaps %v, warnings %q", l.Bitmaps(), w)
				}
			} else if len(w) > 0 {
				t.Errorf("unexpected warnings %q", w)
			}
			for _, q := range oracles {
				checkBitmapList(t, q, l)
			}
			var inUse []string
			for i := range l.Bitmaps() {
				b := &l.Bitmaps()[i]
				if !b.InUse() {
					checkRuns(t, l, b)
					continue
				}
				inUse = append(inUse, b.Name)
				err := b.Runs(func(int64, int64, bool) error { return nil })
				if !errors.Is(err, layers.ErrInconsistent) || !errors.Is(b.Err, layers.ErrInconsistent) ||
					!strings.Contains(err.Error(), `b.qcow2: bitmap "`+b.Name+`" is inconsistent and cannot be used`) {
					t.Errorf("bitmap %q in use: Runs: %v", b.Name, err)
				}
			}
			if !slices.Equal(inUse, r.inUse) {
				t.Errorf("bitmaps in use %q, want %q", inUse, r.inUse)
			}
			for _, q := range oracles {
				for _, name := range []string{"b0", "b1"} {
					_, err := q.NBDBitmapErr(t, p, "qcow2", name)
					if exported := err == nil; exported != slices.Contains(r.exports, name) {
						t.Errorf("%s exports bitmap %s: %v (%v)", q.Name(t), name, exported, err)
					}
				}
			}
		})
	}
}

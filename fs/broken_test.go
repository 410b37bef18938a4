package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/internal/slogrus"
	"github.com/chainfs/chainfs/layers"
)

// TestBrokenLayer: an L2 entry pointing past the end of the file breaks
// one cluster of the top layer. stat of the view still works (st_blocks
// falls back to the whole size), the broken cluster reads EIO, the good
// ones around it read, the layer's map files fail with EIO at lookup
// (never a cached empty file), and the layer below is untouched.
func TestBrokenLayer(t *testing.T) {
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.QemuIO(t, "qcow2", top, "write -P 0x22 0 256k")
	l1 := int64(imagetest.ReadBE64(t, top, 40))
	l2 := int64(imagetest.ReadBE64(t, top, l1) & 0x00fffffffffffe00)
	imagetest.PatchBE64(t, top, l2+8*2, 1<<63|64<<20) // guest 128k: past EOF

	chain, err := layers.Open(top, &layers.Options{Log: slogrus.New(strictLog(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	const why = "data cluster for guest offset 0x20000 at 0x4000000 lies beyond end of file"
	mnt := mountChain(t, chain, &Options{Log: strictLog(t, why)})

	view := filepath.Join(mnt, "0-top.qcow2.raw")
	var st syscall.Stat_t
	if err := syscall.Stat(view, &st); err != nil {
		t.Fatalf("stat of the broken layer's view: %v", err)
	}
	if st.Size != 1<<20 || st.Blocks != (1<<20)/512 {
		t.Errorf("st_size %d st_blocks %d; want 1 MiB, all of it counted as data", st.Size, st.Blocks)
	}
	f, err := os.Open(view)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for _, c := range []struct {
		off  int64
		want byte // 0: EIO
	}{{100 << 10, 0x22}, {128 << 10, 0}, {190 << 10, 0}, {192 << 10, 0x22}, {300 << 10, 0x11}, {0, 0x22}} {
		_, err := f.ReadAt(buf, c.off)
		switch {
		case c.want == 0 && !errors.Is(err, syscall.EIO):
			t.Errorf("read at %d: %v, want EIO", c.off, err)
		case c.want != 0 && (err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{c.want}, 4096))):
			t.Errorf("read at %d: %v, or not %#x", c.off, err, c.want)
		}
	}
	for _, name := range []string{"0-top.qcow2.map.json", "0-top.qcow2.depth"} {
		if _, err := os.Stat(filepath.Join(mnt, name)); !errors.Is(err, syscall.EIO) {
			t.Errorf("stat %s: %v, want EIO", name, err)
		}
		if _, err := os.ReadFile(filepath.Join(mnt, name)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read %s: %v, want EIO", name, err)
		}
	}
	got, err := os.ReadFile(filepath.Join(mnt, "1-base.raw.raw"))
	if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x11}, 1<<20)) {
		t.Errorf("the base layer's view: %v", err)
	}
	for _, name := range []string{"1-base.raw.map.json", "1-base.raw.depth"} {
		if _, err := os.ReadFile(filepath.Join(mnt, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

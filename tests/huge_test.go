package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// TestHugeSparseImage: listing, stat and copying do not depend on the
// virtual size. A 4 TiB image with four small extents lists and copies
// sparsely at once. The time bound is not a speed target (those live in
// the benchmarks): it is far above what a loaded CI machine needs and far
// below what touching 4 TiB, or even one byte per MiB of it, would take.
func TestHugeSparseImage(t *testing.T) {
	const sizeIndependent = 20 * time.Second
	dir := t.TempDir()
	img := imagetest.Create(t, dir, "big.qcow2", "qcow2", 4<<40)
	extents := []struct {
		off, len int64
		pattern  byte
	}{{0, 64 << 10, 1}, {1 << 40, 64 << 10, 2}, {3 << 40, 64 << 10, 3}, {4<<40 - 64<<10, 64 << 10, 4}}
	var cmds []string
	var want [][2]int64
	for _, e := range extents {
		cmds = append(cmds, "write -P "+itoa64(int64(e.pattern))+" "+itoa64(e.off)+" "+itoa64(e.len))
		want = append(want, [2]int64{e.off, e.off + e.len})
	}
	imagetest.QemuIO(t, "qcow2", img, cmds...)
	mnt := mount(t, img)

	start := time.Now()
	out, err := exec.Command("ls", "-l", mnt).CombinedOutput()
	if d := time.Since(start); err != nil || d > sizeIndependent {
		t.Errorf("ls -l took %v: %v\n%s", d, err, out)
	}
	if !regexp.MustCompile(`4398046511104 .* 0-big.qcow2.raw`).Match(out) {
		t.Errorf("ls -l:\n%s", out)
	}
	view := filepath.Join(mnt, "0-big.qcow2.raw")
	var st syscall.Stat_t
	if err := syscall.Stat(view, &st); err != nil {
		t.Fatal(err)
	}
	if wantBlocks := int64(4 * 64 << 10 / 512); st.Blocks != wantBlocks {
		t.Errorf("st_blocks %d, want %d", st.Blocks, wantBlocks)
	}
	if got := seekWalk(t, view, 4<<40); !slices.Equal(got, want) {
		t.Errorf("SEEK_DATA/SEEK_HOLE: %v, want %v", got, want)
	}

	dst := filepath.Join(dir, "copy.raw")
	start = time.Now()
	if out, err := exec.Command("cp", "--sparse=always", view, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if d := time.Since(start); d > sizeIndependent {
		t.Errorf("cp --sparse=always of the 4 TiB view took %v", d)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, _ := f.Stat(); fi.Size() != 4<<40 {
		t.Errorf("copy is %d bytes", fi.Size())
	}
	for _, e := range extents {
		buf := make([]byte, e.len+8192)
		off := max(0, e.off-4096)
		n, _ := f.ReadAt(buf, off)
		buf = buf[:n]
		exp := make([]byte, len(buf))
		copy(exp[e.off-off:], bytes.Repeat([]byte{e.pattern}, int(e.len)))
		if !bytes.Equal(buf, exp) {
			t.Errorf("copy differs around the extent at %d", e.off)
		}
	}
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks > 1024 {
		t.Errorf("copy allocates %d blocks: not sparse", st.Blocks)
	}
	os.Remove(dst)

	ours := readGenerated(t, filepath.Join(mnt, "0-big.qcow2.map.json"))
	for _, q := range imagetest.Oracles(t) {
		if got, w := q.AsPrinted(t, ours), q.MapJSON(t, img, "qcow2"); got != w {
			t.Errorf("map.json differs from %s's qemu-img map:\n%s", q.Name(t), imagetest.LineDiff(got, w))
		}
	}
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

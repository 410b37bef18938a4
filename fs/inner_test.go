package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// innerChain builds top.qcow2 (snapshots "one", "two/2" and an unnamed
// one; bitmaps b0 and "in use", the second with its in-use flag set) over
// base.raw.
func innerChain(t *testing.T) *layers.Chain {
	t.Helper()
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.Snapshot(t, top, "one")
	imagetest.QemuIO(t, "qcow2", top, "write -P 1 0 64k")
	imagetest.Snapshot(t, top, "two/2")
	imagetest.AddBitmap(t, top, "b0", "-g", "64k")
	imagetest.AddBitmap(t, top, "in use")
	imagetest.QemuIO(t, "qcow2", top, "write -P 2 128k 64k")
	imagetest.Snapshot(t, top, "")
	e := imagetest.BitmapEntry(t, top, 1) + 12
	imagetest.PatchBE32(t, top, e, imagetest.ReadBE32(t, top, e)|layers.BitmapInUse)
	chain, err := layers.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	return chain
}

// TestInnerTree: snapshot and bitmap files follow their layer's own
// three, named and numbered as documented; their content is what layers
// and status give; an in-use bitmap is listed empty and fails to open.
func TestInnerTree(t *testing.T) {
	chain := innerChain(t)
	mnt := mountChain(t, chain, &Options{Log: strictLog(t, "QEMU would not use this bitmap")})
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"0-top.qcow2.raw", "0-top.qcow2.map.json", "0-top.qcow2.depth",
		"0-top.qcow2@one.raw", "0-top.qcow2@one.map.json", "0-top.qcow2@one.depth",
		"0-top.qcow2@two%2F2.raw", "0-top.qcow2@two%2F2.map.json", "0-top.qcow2@two%2F2.depth",
		"0-top.qcow2@#3.raw", "0-top.qcow2@#3.map.json", "0-top.qcow2@#3.depth",
		"0-top.qcow2.b0.bitmap", "0-top.qcow2.in use.bitmap",
		"1-base.raw.raw", "1-base.raw.map.json", "1-base.raw.depth",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("readdir: %q, want %q", names, want)
	}
	inos := map[string]uint64{
		"0-top.qcow2.raw": 2, "0-top.qcow2.depth": 4, "1-base.raw.raw": 5, "1-base.raw.depth": 7,
		"0-top.qcow2@one.raw": 1<<62 | 0, "0-top.qcow2@two%2F2.map.json": 1<<62 | 1<<2 | 1, "0-top.qcow2@#3.depth": 1<<62 | 2<<2 | 2,
		"0-top.qcow2.b0.bitmap": 1<<62 | 1<<18, "0-top.qcow2.in use.bitmap": 1<<62 | 1<<18 | 1,
	}
	var st syscall.Stat_t
	for name, ino := range inos {
		if err := syscall.Stat(filepath.Join(mnt, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != ino {
			t.Errorf("%s: inode %#x, want %#x", name, st.Ino, ino)
		}
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil || sfs.Files != uint64(1+len(want)) {
		t.Errorf("statfs: %d files, %v; want %d", sfs.Files, err, 1+len(want))
	}

	top := chain.Top()
	for i, tag := range []string{"one", "two%2F2", "#3"} {
		v, err := top.SnapshotLayer(i)
		if err != nil {
			t.Fatal(err)
		}
		wantRaw := make([]byte, v.Size)
		if _, err := v.ReadAt(wantRaw, 0); err != nil {
			t.Fatal(err)
		}
		var m, dp bytes.Buffer
		status.WriteMapJSON(&m, v)
		status.WriteDepth(&dp, v)
		for suffix, w := range map[string][]byte{".raw": wantRaw, ".map.json": m.Bytes(), ".depth": dp.Bytes()} {
			got, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2@"+tag+suffix))
			if err != nil || !bytes.Equal(got, w) {
				t.Errorf("0-top.qcow2@%s%s: %d bytes, %v; want %d bytes as the layer gives them", tag, suffix, len(got), err, len(w))
			}
		}
	}
	var bm bytes.Buffer
	if err := status.WriteBitmap(&bm, &top.Bitmaps()[0]); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2.b0.bitmap")); err != nil || !bytes.Equal(got, bm.Bytes()) {
		t.Errorf("b0.bitmap: %q, %v; want %q", got, err, bm.String())
	}
	inUse := filepath.Join(mnt, "0-top.qcow2.in use.bitmap")
	if fi, err := os.Stat(inUse); err != nil || fi.Size() != 0 {
		t.Errorf("in-use bitmap: stat %v, %v; want size 0", fi, err)
	}
	if _, err := os.ReadFile(inUse); !errors.Is(err, syscall.EIO) {
		t.Errorf("in-use bitmap: read %v, want EIO", err)
	}
}

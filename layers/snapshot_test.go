package layers_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// TestSnapshotsAgainstQEMU checks every internal snapshot of every layer
// of each chain against both QEMUs: the decoded table against `qemu-img
// info`, and the snapshot's view (its bytes and its Status) against a copy
// of the layer on which `qemu-img snapshot -a` applied the snapshot, and
// against `qemu-img convert -l` where the snapshot's disk size is the
// current one.
func TestSnapshotsAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	for _, c := range imagetest.SnapshotCases() {
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
				if l.Format != layers.FormatQcow2 {
					continue
				}
				snaps := l.Snapshots()
				seen += len(snaps)
				for _, q := range oracles {
					checkSnapshotList(t, q, l, snaps)
				}
				for i, s := range snaps {
					if s.Err != nil {
						t.Fatalf("layer %d: snapshot %q: %v", l.Index, s.Name, s.Err)
					}
					v, err := l.SnapshotLayer(i)
					if err != nil {
						t.Fatal(err)
					}
					if again, _ := l.SnapshotLayer(i); again != v {
						t.Errorf("layer %d: SnapshotLayer(%d) twice gives two layers", l.Index, i)
					}
					if v.Snapshot != &snaps[i] || v.Index != l.Index || v.Path != l.Path || v.Backing != l.Backing {
						t.Errorf("layer %d: snapshot %q: view has Snapshot %p, Index %d, Path %s", l.Index, s.Name, v.Snapshot, v.Index, v.Path)
					}
					if v.Snapshots() != nil || v.Bitmaps() != nil {
						t.Errorf("layer %d: snapshot %q: a snapshot view lists snapshots or bitmaps", l.Index, s.Name)
					}
					for _, q := range oracles {
						applied := q.Applied(t, l.Path, s.ID)
						want := q.ConvertRaw(t, applied, "qcow2")
						t.Run(fmt.Sprintf("layer %d snapshot %s, %s", l.Index, s.Name, q.Name(t)), func(t *testing.T) {
							checkReads(t, v, want)
							checkStatusAgainst(t, v, q.Map(t, applied, "qcow2"))
							if int64(s.DiskSize) == l.Size {
								if direct := q.ConvertRaw(t, l.Path, "qcow2", "-l", "snapshot.id="+s.ID); !bytes.Equal(direct, want) {
									t.Errorf("qemu-img convert -l and the applied copy differ")
								}
							}
						})
					}
				}
			}
			if seen == 0 {
				t.Fatal("the chain has no snapshots")
			}
		})
	}
}

// checkSnapshotList compares the decoded snapshot table with what q's
// `qemu-img info` lists.
func checkSnapshotList(t *testing.T, q imagetest.QEMU, l *layers.Layer, snaps []layers.Snapshot) {
	t.Helper()
	info := q.Info(t, l.Path, "qcow2")
	if len(info.Snapshots) != len(snaps) {
		t.Fatalf("layer %d: %d snapshots, %s lists %d", l.Index, len(snaps), q.Name(t), len(info.Snapshots))
	}
	for i, s := range snaps {
		w := info.Snapshots[i]
		icount := s.ICount
		if w.ICount != nil && *w.ICount != icount || w.ICount == nil && icount != -1 {
			t.Errorf("layer %d snapshot %d: icount %d, %s says %v", l.Index, i, icount, q.Name(t), w.ICount)
		}
		got := imagetest.SnapshotInfo{ID: s.ID, Name: s.Name, VMStateSize: s.VMStateSize,
			DateSec: int64(s.DateSec), DateNsec: int64(s.DateNsec),
			VMClockSec: int64(s.VMClockNsec / 1e9), VMClockNsec: int64(s.VMClockNsec % 1e9), ICount: w.ICount}
		if got != w {
			t.Errorf("layer %d snapshot %d: %+v, %s lists %+v", l.Index, i, got, q.Name(t), w)
		}
	}
}

// TestFindSnapshot: IDs first, then names, as qemu-img convert -l looks
// them up; the first match wins.
func TestFindSnapshot(t *testing.T) {
	dir := t.TempDir()
	p := imagetest.Create(t, dir, "f.qcow2", "qcow2", 1*MiB)
	for _, name := range []string{"2", "same", "same", "x"} { // IDs 1 to 4
		imagetest.Snapshot(t, p, name)
	}
	log, _ := testLog()
	c, err := layers.Open(p, &layers.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := c.Top()
	for _, r := range []struct {
		arg  string
		want int
	}{{"1", 0}, {"2", 1}, {"same", 1}, {"x", 3}, {"4", 3}, {"nope", -1}} {
		i, ok := l.FindSnapshot(r.arg)
		if !ok {
			i = -1
		}
		if i != r.want {
			t.Errorf("FindSnapshot(%q) = %d, want %d", r.arg, i, r.want)
		}
	}
}

// TestSnapshotTableChecks holds the snapshot table to QEMU's open-time
// checks: where QEMU refuses the image, so does Open, with QEMU's reason;
// where QEMU cannot load one snapshot, that snapshot alone is left out,
// with a log line naming the file, the snapshot and the structure.
func TestSnapshotTableChecks(t *testing.T) {
	oracles := imagetest.Oracles(t)
	twoSnaps := func(t *testing.T, dir string) string {
		p := imagetest.Create(t, dir, "s.qcow2", "qcow2", 1*MiB)
		imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k")
		imagetest.Snapshot(t, p, "one")
		imagetest.QemuIO(t, "qcow2", p, "write -P 2 0 64k")
		imagetest.Snapshot(t, p, "two")
		return p
	}
	rows := []struct {
		name string
		edit func(t *testing.T, p string)
		// refused: the error Open returns contains it; else leftOut: the
		// warning logged for the snapshot left out contains it.
		refused, leftOut string
	}{
		{name: "more snapshots than QEMU's limit", refused: "s.qcow2: header: snapshot table too large: 65537 snapshots exceed QEMU's limit of 65536",
			edit: func(t *testing.T, p string) { imagetest.PatchBE32(t, p, 60, 65537) }},
		{name: "snapshot table offset not cluster aligned", refused: "s.qcow2: header: snapshot table offset invalid: 0x",
			edit: func(t *testing.T, p string) { imagetest.PatchBE64(t, p, 64, imagetest.ReadBE64(t, p, 64)+8) }},
		{name: "no snapshots, at an unaligned offset", refused: "header: snapshot table offset invalid: 0x200 ",
			edit: func(t *testing.T, p string) { imagetest.PatchBE32(t, p, 60, 0); imagetest.PatchBE64(t, p, 64, 0x200) }},
		{name: "too much extra data in an entry", refused: "s.qcow2: snapshot table entry 1 at 0x",
			edit: func(t *testing.T, p string) { imagetest.PatchBE32(t, p, imagetest.SnapshotEntry(t, p, 1)+36, 1025) }},
		{name: "a table longer than QEMU's limit", refused: "s.qcow2: snapshot table at 0x100000 is too big: 512 entries reach 67129342 bytes, past QEMU's limit of 67108864",
			edit: func(t *testing.T, p string) {
				// 512 entries of the longest ID and name (a sparse file).
				const table, entry = 1 << 20, 131112
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				for k := int64(0); k < 512; k++ {
					if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, table+k*entry+12); err != nil {
						t.Fatal(err)
					}
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				imagetest.PatchBE32(t, p, 60, 512)
				imagetest.PatchBE64(t, p, 64, table)
			}},
		{name: "a snapshot L1 table not cluster aligned", leftOut: `snapshot ID "1" name "one" (table entry 0): snapshot L1 table offset invalid`,
			edit: func(t *testing.T, p string) {
				e := imagetest.SnapshotEntry(t, p, 0)
				imagetest.PatchBE64(t, p, e, imagetest.ReadBE64(t, p, e)+512)
			}},
		{name: "a snapshot L1 table too large", leftOut: `snapshot ID "2" name "two" (table entry 1): snapshot L1 table too large: 4194305 entries`,
			edit: func(t *testing.T, p string) { imagetest.PatchBE32(t, p, imagetest.SnapshotEntry(t, p, 1)+8, 4<<20+1) }},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := twoSnaps(t, dir)
			r.edit(t, p)
			log, hook := testLog()
			c, err := layers.Open(p, &layers.Options{Log: log})
			if r.refused != "" {
				if err == nil {
					c.Close()
					t.Fatalf("Open succeeded; want %q", r.refused)
				}
				mustIs(t, err, layers.ErrCorrupt)
				contains(t, err, r.refused)
				for _, q := range oracles {
					if _, stderr, err := q.ImgErr(t, dir, "info", p); err == nil {
						t.Errorf("%s opens the image", q.Name(t))
					} else {
						t.Logf("%s: %s", q.Name(t), strings.TrimSpace(stderr))
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer c.Close()
			w := warnings(hook)
			if len(w) != 1 || !strings.Contains(w[0], r.leftOut) || !strings.Contains(w[0], filepath.Base(p)) {
				t.Errorf("warnings %q, want one containing %q", w, r.leftOut)
			}
			left := 0
			for i, s := range c.Top().Snapshots() {
				if s.Err == nil {
					if _, err := c.Top().SnapshotLayer(i); err != nil {
						t.Errorf("snapshot %d: %v", i, err)
					}
					continue
				}
				left++
				if _, err := c.Top().SnapshotLayer(i); !errors.Is(err, layers.ErrCorrupt) {
					t.Errorf("SnapshotLayer(%d) of a snapshot left out: %v", i, err)
				}
				for _, q := range oracles {
					if _, stderr, err := q.ImgErr(t, dir, "convert", "-O", "raw", "-l", "snapshot.id="+s.ID, p, filepath.Join(dir, "out.raw")); err == nil {
						t.Errorf("%s loads snapshot %s", q.Name(t), s.ID)
					} else {
						t.Logf("%s: %s", q.Name(t), strings.TrimSpace(stderr))
					}
				}
			}
			if left != 1 {
				t.Errorf("%d snapshots left out, want 1", left)
			}
		})
	}
}

// TestSnapshotL1PastEOF: a snapshot whose L1 table lies past the end of
// the file (cluster-aligned, so QEMU's checks pass) loads in QEMU as a
// table of zeroes, a disk of no clusters. chainfs reads it so and counts
// the damage; strict, the snapshot is refused when it is loaded.
func TestSnapshotL1PastEOF(t *testing.T) {
	oracles := imagetest.Oracles(t)
	dir := t.TempDir()
	p := imagetest.Create(t, dir, "s.qcow2", "qcow2", 1*MiB)
	imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k")
	imagetest.Snapshot(t, p, "one")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	past := uint64(fi.Size()+64*KiB) &^ (64*KiB - 1)
	imagetest.PatchBE64(t, p, imagetest.SnapshotEntry(t, p, 0), past)

	log, hook := testLog()
	c, err := layers.Open(p, &layers.Options{Log: log})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer c.Close()
	v, err := c.Top().SnapshotLayer(0)
	if err != nil {
		t.Fatalf("SnapshotLayer: %v", err)
	}
	got := make([]byte, v.Size)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatalf("reading the snapshot: %v", err)
	}
	for _, q := range oracles {
		want := q.ConvertRaw(t, p, "qcow2", "-l", "snapshot.id=1")
		if !bytes.Equal(got, want) {
			t.Errorf("snapshot differs from %s's convert -l", q.Name(t))
		}
	}
	if n := c.Top().Damage()[layers.DamageL1Table]; n != 1 {
		t.Errorf("L1 table damage counted %d times, want 1", n)
	}
	if w := warnings(hook); len(w) != 1 || !strings.Contains(w[0], `L1 table of snapshot ID "1"`) {
		t.Errorf("warnings %q, want one naming the snapshot's L1 table", w)
	}

	strict, err := layers.Open(p, &layers.Options{Strict: true})
	if err != nil {
		t.Fatalf("strict Open: %v (the snapshot's table is read when it is loaded)", err)
	}
	defer strict.Close()
	_, err = strict.Top().SnapshotLayer(0)
	mustIs(t, err, layers.ErrCorrupt)
	contains(t, err, `L1 table of snapshot ID "1"`)
}

package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// innerLayer is what `chainfs info --json` says of a layer's internal
// snapshots and persistent bitmaps: which files show them.
type innerLayer struct {
	Filename string `json:"filename"`
	Format   string `json:"format"`
	Chainfs  struct {
		Depth     int `json:"depth"`
		Snapshots []struct {
			ID, Name string
			DiskSize int64  `json:"disk-size"`
			File     string `json:"file"`
			LeftOut  string `json:"left-out"`
		} `json:"snapshots"`
		Bitmaps []struct {
			Name, File, Unusable string
		} `json:"bitmaps"`
	} `json:"chainfs"`
}

// innerFiles runs `chainfs info --json` on image.
func innerFiles(t *testing.T, image string) []innerLayer {
	t.Helper()
	out, _ := chainfsIn(t, filepath.Dir(image), "info", "--json", image)
	var ls []innerLayer
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("chainfs info --json: %v\n%s", err, out)
	}
	return ls
}

// TestInnerFilesAgainstQEMU mounts every chain of imagetest's snapshot and
// bitmap cases and compares each file of each snapshot and bitmap, found
// by the name `chainfs info` gives it, with both QEMUs: a snapshot's .raw
// with qemu-img convert, its .map.json with qemu-img map and its .depth
// with nbdinfo over qemu-nbd -A, all of a copy of the layer on which
// qemu-img snapshot -a applied the snapshot; its st_size, st_blocks and
// SEEK_DATA/SEEK_HOLE with that map; a bitmap's file with nbdinfo over
// qemu-nbd -B. The same answers without the mount (chainfs map and depth
// --snapshot, chainfs bitmap) are compared too.
func TestInnerFilesAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	cases := append(imagetest.SnapshotCases(), imagetest.BitmapCases()...)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			top := c.Build(t, t.TempDir())
			mnt := mount(t, top)
			for _, l := range innerFiles(t, top) {
				for _, s := range l.Chainfs.Snapshots {
					if s.File == "" {
						t.Fatalf("layer %d snapshot %q left out: %s", l.Chainfs.Depth, s.Name, s.LeftOut)
					}
					checkSnapshotFiles(t, oracles, top, mnt, l, s.ID, s.File)
				}
				for _, b := range l.Chainfs.Bitmaps {
					got := readGenerated(t, filepath.Join(mnt, b.File))
					cli, _ := chainfsIn(t, "", "bitmap", "--layer", fmt.Sprint(l.Chainfs.Depth), top, b.Name)
					cliJSON, _ := chainfsIn(t, "", "bitmap", "--json", "--layer", fmt.Sprint(l.Chainfs.Depth), top, b.Name)
					for _, q := range oracles {
						want := q.NBDBitmap(t, l.Filename, l.Format, b.Name, false)
						if got != want || cli != want {
							t.Errorf("%s: differs from nbdinfo --map=qemu:dirty-bitmap over %s's qemu-nbd -B:\n%s", b.File, q.Name(t), imagetest.LineDiff(got, want))
						}
						if want := q.NBDBitmap(t, l.Filename, l.Format, b.Name, true); cliJSON != want {
							t.Errorf("chainfs bitmap --json %s differs from nbdinfo --json over %s:\n%s", b.Name, q.Name(t), imagetest.LineDiff(cliJSON, want))
						}
					}
				}
			}
		})
	}
}

// checkSnapshotFiles compares the three files of one snapshot with what
// QEMU makes of the layer with the snapshot applied.
func checkSnapshotFiles(t *testing.T, oracles []imagetest.QEMU, top, mnt string, l innerLayer, id, rawName string) {
	t.Helper()
	stem := filepath.Join(mnt, strings.TrimSuffix(rawName, ".raw"))
	raw, err := os.ReadFile(stem + ".raw")
	if err != nil {
		t.Fatal(err)
	}
	m := readGenerated(t, stem+".map.json")
	d := readGenerated(t, stem+".depth")
	layer := fmt.Sprint(l.Chainfs.Depth)
	cliMap, _ := chainfsIn(t, "", "map", "--layer", layer, "--snapshot", id, top)
	cliDepth, _ := chainfsIn(t, "", "depth", "--layer", layer, "--snapshot", id, "--json", top)
	if cliMap != m {
		t.Errorf("%s: chainfs map --snapshot %s differs from the file:\n%s", rawName, id, imagetest.LineDiff(cliMap, m))
	}
	for _, q := range oracles {
		applied := q.Applied(t, l.Filename, id)
		want := q.ConvertRaw(t, applied, "qcow2")
		if !bytes.Equal(raw, want) {
			t.Errorf("%s differs from %s's qemu-img convert of the applied snapshot", rawName, q.Name(t))
			compareBytes(t, raw, want)
		}
		if got, want := q.AsPrinted(t, m), q.MapJSON(t, applied, "qcow2"); got != want {
			t.Errorf("%s.map.json differs from %s's qemu-img map of the applied snapshot:\n%s", stem, q.Name(t), imagetest.LineDiff(got, want))
		}
		if want := q.NBDDepth(t, applied, "qcow2", false); d != want {
			t.Errorf("%s.depth differs from nbdinfo over %s's qemu-nbd -A of the applied snapshot:\n%s", stem, q.Name(t), imagetest.LineDiff(d, want))
		}
		if want := q.NBDDepth(t, applied, "qcow2", true); cliDepth != want {
			t.Errorf("chainfs depth --snapshot %s --json differs from nbdinfo --json over %s:\n%s", id, q.Name(t), imagetest.LineDiff(cliDepth, want))
		}
		if q == imagetest.System {
			data := qemuDataRanges(q.Map(t, applied, "qcow2"))
			var dataBytes int64
			for _, r := range data {
				dataBytes += r[1] - r[0]
			}
			var st syscall.Stat_t
			if err := syscall.Stat(stem+".raw", &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != int64(len(want)) || st.Blocks != (dataBytes+511)/512 {
				t.Errorf("%s: st_size %d, st_blocks %d; want %d and %d (the map's data)", rawName, st.Size, st.Blocks, len(want), (dataBytes+511)/512)
			}
			if got := seekWalk(t, stem+".raw", st.Size); !slices.Equal(got, data) {
				t.Errorf("%s: data by SEEK_DATA/SEEK_HOLE %v, the map's %v", rawName, got, data)
			}
		}
	}
}

// TestInnerInfo: `chainfs info` lists snapshots and bitmaps as qemu-img
// info does (QEMU 10 byte for byte; QEMU 7.2's JSON but for "children",
// its text but for its older snapshot table and the child node), and says
// in its own section which files show them, including one snapshot it
// leaves out and one bitmap it cannot read.
func TestInnerInfo(t *testing.T) {
	oracles := imagetest.Oracles(t)
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1<<20)
	imagetest.QemuIO(t, "qcow2", base, "write -P 1 0 64k")
	imagetest.Snapshot(t, base, "base snap")
	imagetest.AddBitmap(t, base, "base-bm")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
	imagetest.Snapshot(t, top, "")
	imagetest.QemuIO(t, "qcow2", top, "write -P 2 0 4k")
	imagetest.Snapshot(t, top, "second/one")
	imagetest.Snapshot(t, top, "broken")
	imagetest.AddBitmap(t, top, "ok", "-g", "4k")
	imagetest.AddBitmap(t, top, "in use")
	e := imagetest.SnapshotEntry(t, top, 2)
	imagetest.PatchBE64(t, top, e, imagetest.ReadBE64(t, top, e)+512) // its L1 table misaligned
	b := imagetest.BitmapEntry(t, top, 1) + 12
	imagetest.PatchBE32(t, top, b, imagetest.ReadBE32(t, top, b)|1) // in use

	ourJSON, _ := chainfsIn(t, dir, "info", "--json", "top.qcow2")
	ourText, stderr := chainfsIn(t, dir, "info", "top.qcow2")
	if !strings.Contains(stderr, `top.qcow2: snapshot ID \"3\" name \"broken\" (table entry 2): snapshot L1 table offset invalid`) {
		t.Errorf("chainfs info logged %q; want the snapshot left out", stderr)
	}
	qemuJSON := ourJSONKey.ReplaceAllString(ourJSON, "")
	qemuText := ourTextSection.ReplaceAllString(ourText, "")
	snapshotList := regexp.MustCompile(`(?m)^Snapshot list:\n(?:[^\n]*\n)*?(?:Format|Child)`)
	for _, q := range oracles {
		theirs := qemuInfo(t, q, dir, "--output=json", "top.qcow2")
		theirText := qemuInfo(t, q, dir, "top.qcow2")
		if major, _ := q.Version(t); major >= 8 {
			if qemuJSON != theirs {
				t.Errorf("%s: info --json differs:\n%s", q.Name(t), imagetest.LineDiff(qemuJSON, theirs))
			}
			if qemuText != theirText {
				t.Errorf("%s: info differs:\n%s", q.Name(t), imagetest.LineDiff(qemuText, theirText))
			}
			continue
		}
		var old, ours []map[string]any
		json.Unmarshal([]byte(theirs), &old)
		json.Unmarshal([]byte(qemuJSON), &ours)
		for _, l := range ours {
			delete(l, "children")
		}
		if !reflect.DeepEqual(ours, old) {
			t.Errorf("%s: info --json (without children) differs:\n%s", q.Name(t), imagetest.LineDiff(indentJSON(t, ours), indentJSON(t, old)))
		}
		strip := func(s string) string {
			s = childNodeText.ReplaceAllString(s, "")
			return snapshotList.ReplaceAllStringFunc(s, func(m string) string { return m[strings.LastIndexByte(m, '\n')+1:] })
		}
		if got, want := strip(qemuText), strip(theirText); got != want {
			t.Errorf("%s: info (without snapshot lists and the child node) differs:\n%s", q.Name(t), imagetest.LineDiff(got, want))
		}
		if n := strings.Count(theirText, "Snapshot list:"); n != 2 {
			t.Errorf("%s lists snapshots of %d layers, want 2", q.Name(t), n)
		}
	}

	mnt := mount(t, filepath.Join(dir, "top.qcow2"))
	expectLog(t, mnt, "snapshot L1 table offset invalid", "QEMU would not use this bitmap")
	ls := innerFiles(t, filepath.Join(dir, "top.qcow2"))
	var got []string
	for _, l := range ls {
		for _, s := range l.Chainfs.Snapshots {
			got = append(got, fmt.Sprintf("%s %q %d %s %v", s.ID, s.Name, s.DiskSize, s.File, s.LeftOut != ""))
		}
		for _, b := range l.Chainfs.Bitmaps {
			got = append(got, fmt.Sprintf("%q %s %v", b.Name, b.File, b.Unusable != ""))
		}
	}
	want := []string{
		`1 "" 1048576 0-top.qcow2@#1.raw false`,
		`2 "second/one" 1048576 0-top.qcow2@second%2Fone.raw false`,
		`3 "broken" 1048576  true`,
		`"ok" 0-top.qcow2.ok.bitmap false`,
		`"in use" 0-top.qcow2.in use.bitmap true`,
		`1 "base snap" 1048576 1-base.qcow2@base snap.raw false`,
		`"base-bm" 1-base.qcow2.base-bm.bitmap false`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("chainfs info's files:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	names, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, n := range names {
		files = append(files, n.Name())
	}
	for _, w := range []string{"0-top.qcow2@#1.map.json", "0-top.qcow2@second%2Fone.depth", "1-base.qcow2@base snap.raw", "0-top.qcow2.in use.bitmap", "1-base.qcow2.base-bm.bitmap"} {
		if !slices.Contains(files, w) {
			t.Errorf("no %s in the mount: %q", w, files)
		}
	}
	if slices.ContainsFunc(files, func(s string) bool { return strings.Contains(s, "broken") }) {
		t.Errorf("the snapshot left out has files: %q", files)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2.in use.bitmap")); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the bitmap in use: %v, want EIO", err)
	}
	if out, code := chainfs(t, "bitmap", filepath.Join(dir, "top.qcow2"), "in use"); code != 1 || !strings.Contains(out, `bitmap "in use" is inconsistent and cannot be used`) {
		t.Errorf("chainfs bitmap of the bitmap in use: exit %d: %s", code, out)
	}
	if out, code := chainfs(t, "map", "--snapshot", "broken", filepath.Join(dir, "top.qcow2")); code != 3 || !strings.Contains(out, "snapshot L1 table offset invalid") {
		t.Errorf("chainfs map --snapshot of the snapshot left out: exit %d: %s", code, out)
	}
	if out, code := chainfs(t, "depth", "--snapshot", "nope", filepath.Join(dir, "top.qcow2")); code != 1 || !strings.Contains(out, `has no snapshot with ID or name "nope"`) {
		t.Errorf("chainfs depth --snapshot nope: exit %d: %s", code, out)
	}
}

package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// layer is one image of a test chain: its path and QEMU format name.
type layer struct{ path, format string }

// chainCase builds a chain in dir and returns its layers, top first.
type chainCase struct {
	name  string
	build func(t *testing.T, dir string) []layer
}

// chainCases cover the layer features of the layers package: a raw base
// with real holes, qcow2 over raw and over qcow2, compressed clusters
// (zlib and zstd), zero clusters over backing data, extended L2
// subclusters, backing files shorter than the image, raw sizes that are
// not a multiple of 512, tiny clusters, an external data file and
// metadata preallocation.
var chainCases = []chainCase{
	{"sample", func(t *testing.T, dir string) []layer {
		sample, err := filepath.Abs("../testdata/sample")
		if err != nil {
			t.Fatal(err)
		}
		return []layer{{sample + "/top.qcow2", "qcow2"}, {sample + "/mid.qcow2", "qcow2"}, {sample + "/base.raw", "raw"}}
	}},
	{"raw base with holes, compressed and zero clusters above", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.raw", "raw", 4<<20)
		imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M", "write -P 0x22 2M 512k")
		mid := imagetest.Create(t, dir, "mid.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
		imagetest.QemuIO(t, "qcow2", mid,
			"write -c -P 0x33 1M 256k", // compressed over the base's hole
			"write -z 0 128k",          // zero clusters over base data
			"write -P 0x44 3M 64k",     // data over a hole
			"discard 2M 64k")           // discarded: zero over base data
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=mid.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top,
			"write -P 0x55 64k 4k",        // partial cluster: copy-on-write from below
			"write -z -u 1M 64k",          // zero cluster over compressed ones
			"write -c -P 0x66 3584k 128k") // compressed in the top
		return []layer{{top, "qcow2"}, {mid, "qcow2"}, {base, "raw"}}
	}},
	{"zstd compression under 512-byte clusters", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 2<<20, "compression_type=zstd")
		imagetest.QemuIO(t, "qcow2", base, "write -c -P 0x71 0 512k", "write -c -P 0x72 1M 128k", "write -P 0x73 1536k 64k")
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "cluster_size=512", "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top, "write -P 0x74 1000 3000", "write -z 256k 1536", "write -P 0x75 1100k 512", "write -c -P 0x76 1800k 2k")
		return []layer{{top, "qcow2"}, {base, "qcow2"}}
	}},
	{"extended L2 subclusters", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1<<20, "extended_l2=on")
		imagetest.QemuIO(t, "qcow2", base, "write -P 0x11 0 4k", "write -P 0x12 10k 2k", "write -z 64k 8k", "write -P 0x13 128k 64k", "write -z -u 160k 2k")
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "extended_l2=on", "cluster_size=32k", "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top, "write -z 2k 1k", "write -P 0x21 40k 1k", "write -P 0x22 130k 3k", "write -z -u 300k 32k", "discard 128k 1k")
		return []layer{{top, "qcow2"}, {base, "qcow2"}}
	}},
	{"short unaligned raw backing", func(t *testing.T, dir string) []layer {
		base := filepath.Join(dir, "base.img")
		writeSparse(t, base, 1000001, map[int64]byte{0: 0x31, 700000: 0x32, 999000: 0x33})
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 3<<20, "backing_file=base.img", "backing_fmt=raw")
		imagetest.QemuIO(t, "qcow2", top, "write -P 0x41 960k 128k", "write -P 0x42 2M 64k")
		return []layer{{top, "qcow2"}, {base, "raw"}}
	}},
	{"short qcow2 backing chain", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1<<20)
		imagetest.QemuIO(t, "qcow2", base, "write -P 0x11 0 64k", "write -P 0x12 960k 64k")
		mid := imagetest.Create(t, dir, "mid.qcow2", "qcow2", 2<<20, "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", mid, "write -P 0x21 1536k 64k")
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 4<<20, "backing_file=mid.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top, "write -P 0x31 3M 64k", "write -z 0 64k")
		return []layer{{top, "qcow2"}, {mid, "qcow2"}, {base, "qcow2"}}
	}},
	{"lone raw image of unaligned size", func(t *testing.T, dir string) []layer {
		img := filepath.Join(dir, "disk.img")
		writeSparse(t, img, 123457, map[int64]byte{4096: 0x51, 100000: 0x52})
		return []layer{{img, "raw"}}
	}},
	{"external data file", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1<<20)
		imagetest.QemuIO(t, "qcow2", base, "write -P 0x61 0 256k")
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "data_file=top.data", "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top, "write -P 0x62 128k 64k", "write -z 512k 64k")
		return []layer{{top, "qcow2"}, {base, "qcow2"}}
	}},
	{"compat=0.10 over a longer backing, 2 MiB clusters", func(t *testing.T, dir string) []layer {
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 8<<20, "cluster_size=2M")
		imagetest.QemuIO(t, "qcow2", base, "write -P 0x11 0 3M", "write -z 4M 2M", "write -c -P 0x12 6M 2M")
		top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 5<<20, "compat=0.10", "cluster_size=4096", "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", top, "write -z 8k 8k", "write -P 0x21 1M 12k", "write -z 4092k 8k")
		return []layer{{top, "qcow2"}, {base, "qcow2"}}
	}},
	{"five layers, compressed clusters with subclusters", func(t *testing.T, dir string) []layer {
		l4 := filepath.Join(dir, "l4.img")
		writeSparse(t, l4, 2<<20, map[int64]byte{0: 0x41, 1 << 20: 0x42, 2<<20 - 4096: 0x43})
		l3 := imagetest.Create(t, dir, "l3.qcow2", "qcow2", 0, "extended_l2=on", "cluster_size=128k", "backing_file=l4.img", "backing_fmt=raw")
		imagetest.QemuIO(t, "qcow2", l3, "write -c -P 0x31 128k 128k", "write -P 0x32 260k 4k", "write -z 1M 4k")
		l2 := imagetest.Create(t, dir, "l2.qcow2", "qcow2", 0, "backing_file=l3.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", l2, "discard 0 64k", "write -P 0x21 192k 64k")
		l1 := imagetest.Create(t, dir, "l1.qcow2", "qcow2", 2<<20, "backing_file=l2.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", l1, "write -P 0x11 1M 4k")
		l0 := imagetest.Create(t, dir, "l0.qcow2", "qcow2", 0, "cluster_size=512", "backing_file=l1.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", l0, "write -z 0 1k", "write -P 0x01 1M 512")
		return []layer{{l0, "qcow2"}, {l1, "qcow2"}, {l2, "qcow2"}, {l3, "qcow2"}, {l4, "raw"}}
	}},
	{"metadata preallocation", func(t *testing.T, dir string) []layer {
		img := imagetest.Create(t, dir, "prealloc.qcow2", "qcow2", 1<<20, "preallocation=metadata")
		imagetest.QemuIO(t, "qcow2", img, "write -P 0x71 64k 64k")
		return []layer{{img, "qcow2"}}
	}},
}

// writeSparse writes a raw file of size bytes: 4 KiB of pattern at each
// given offset (clipped to size), holes elsewhere.
func writeSparse(t *testing.T, path string, size int64, data map[int64]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range data {
		n := min(int64(4096), size-off)
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChains mounts each chain and checks every layer's three files
// against QEMU's tools.
func TestChains(t *testing.T) {
	for _, c := range chainCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			chain := c.build(t, dir)
			mnt := mount(t, chain[0].path)
			checkNames(t, mnt, chain)
			for i, l := range chain {
				t.Run(fmt.Sprintf("layer %d %s", i, filepath.Base(l.path)), func(t *testing.T) {
					checkLayer(t, mnt, i, l)
				})
			}
		})
	}
}

func viewName(i int, l layer) string { return fmt.Sprintf("%d-%s", i, filepath.Base(l.path)) }

// checkNames: the directory lists, in chain order, .raw, .map.json and
// .depth for each layer.
func checkNames(t *testing.T, mnt string, chain []layer) {
	t.Helper()
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := d.Readdirnames(-1) // directory order, unsorted
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i, l := range chain {
		n := viewName(i, l)
		want = append(want, n+".raw", n+".map.json", n+".depth")
	}
	if !slices.Equal(got, want) {
		t.Errorf("readdir order:\n got %q\nwant %q", got, want)
	}
}

func checkLayer(t *testing.T, mnt string, i int, l layer) {
	base := filepath.Join(mnt, viewName(i, l))
	view := base + ".raw"
	refFile := imagetest.ConvertRawFile(t, l.path, l.format)
	ref, err := os.ReadFile(refFile)
	if err != nil {
		t.Fatal(err)
	}
	qmap := imagetest.QemuMap(t, l.path, l.format)
	dataRanges := qemuDataRanges(qmap)
	var dataBytes int64
	for _, r := range dataRanges {
		dataBytes += r[1] - r[0]
	}

	t.Run("bytes vs qemu-img convert", func(t *testing.T) {
		got, err := os.ReadFile(view)
		if err != nil {
			t.Fatal(err)
		}
		compareBytes(t, got, ref)
		newer := imagetest.Backports()
		if want := newer.ConvertRaw(t, l.path, l.format); !bytes.Equal(want, ref) {
			t.Fatalf("%s and %s convert the layer differently", imagetest.System.Name(t), newer.Name(t))
		}
	})
	t.Run("stat", func(t *testing.T) {
		var st syscall.Stat_t
		if err := syscall.Stat(view, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != int64(len(ref)) {
			t.Errorf("st_size %d, want %d", st.Size, len(ref))
		}
		if want := (dataBytes + 511) / 512; st.Blocks != want {
			t.Errorf("st_blocks %d, want %d (the map's %d data bytes)", st.Blocks, want, dataBytes)
		}
		if st.Mode&0o7777 != 0o444 && st.Mode&0o7777 != 0o400 && st.Mode&0o7777 != 0o440 {
			t.Errorf("mode %o: want read bits only", st.Mode&0o7777)
		}
		var img syscall.Stat_t
		if err := syscall.Stat(l.path, &img); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o777 != img.Mode&0o444 || st.Uid != img.Uid || st.Gid != img.Gid || st.Mtim != img.Mtim {
			t.Errorf("mode %o uid %d gid %d mtime %v; want the image's %o %d %d %v",
				st.Mode&0o777, st.Uid, st.Gid, st.Mtim, img.Mode&0o444, img.Uid, img.Gid, img.Mtim)
		}
	})
	t.Run("du", func(t *testing.T) {
		out, err := exec.Command("du", "--block-size=512", view).Output()
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(out))
		if want := strconv.FormatInt((dataBytes+511)/512, 10); len(f) == 0 || f[0] != want {
			t.Errorf("du --block-size=512: %q, want %s", out, want)
		}
	})
	t.Run("map.json vs qemu-img map", func(t *testing.T) {
		ours := readGenerated(t, base+".map.json")
		for _, q := range imagetest.Oracles(t) {
			got, want := q.AsPrinted(t, ours), q.MapJSON(t, l.path, l.format)
			if got != want {
				t.Errorf("map.json differs from %s's qemu-img map --output=json:\n%s", q.Name(t), imagetest.LineDiff(got, want))
			}
		}
	})
	t.Run("depth vs nbdinfo", func(t *testing.T) {
		got := readGenerated(t, base+".depth")
		for _, q := range imagetest.Oracles(t) {
			want := q.NBDDepth(t, l.path, l.format, false)
			if got != want {
				t.Errorf("depth differs from nbdinfo --map=qemu:allocation-depth over %s's qemu-nbd -A:\n%s", q.Name(t), imagetest.LineDiff(got, want))
			}
		}
	})
	t.Run("SEEK_DATA and SEEK_HOLE vs the map", func(t *testing.T) {
		got := seekWalk(t, view, int64(len(ref)))
		if !slices.Equal(got, dataRanges) {
			t.Errorf("data ranges by SEEK_DATA/SEEK_HOLE:\n got %v\nwant %v (qemu-img map)", got, dataRanges)
		}
		checkSeekEdges(t, view, int64(len(ref)), dataRanges)
	})
	t.Run("qemu-img map over the view", func(t *testing.T) {
		got := qemuDataRanges(imagetest.QemuMap(t, view, "raw"))
		if !slices.Equal(got, dataRanges) {
			t.Errorf("qemu-img map -f raw of the view sees data at\n %v\nthe layer's map says\n %v", got, dataRanges)
		}
	})
	t.Run("cp --sparse=always", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "copy")
		if out, err := exec.Command("cp", "--sparse=always", view, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		compareBytes(t, got, ref)
		var st syscall.Stat_t
		if err := syscall.Stat(dst, &st); err != nil {
			t.Fatal(err)
		}
		// The copy allocates at most the data ranges, widened to 4 KiB
		// file-system blocks.
		if limit := blockSpan(dataRanges, 4096) / 512; st.Blocks > limit {
			t.Errorf("copy has %d blocks allocated, more than the %d of the data ranges %v", st.Blocks, limit, dataRanges)
		}
	})
	t.Run("reads at the end", func(t *testing.T) {
		f, err := os.Open(view)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		size := int64(len(ref))
		buf := make([]byte, 4096)
		n, err := f.ReadAt(buf, size-100)
		if n != 100 || !bytes.Equal(buf[:n], ref[size-100:]) {
			t.Errorf("read across the end: %d bytes, %v", n, err)
		}
		if n, err := f.ReadAt(buf, size); n != 0 {
			t.Errorf("read at the end: %d bytes, %v", n, err)
		}
		if n, err := f.ReadAt(buf, size+12345); n != 0 {
			t.Errorf("read past the end: %d bytes, %v", n, err)
		}
	})
	t.Run("writes refused", func(t *testing.T) {
		for _, p := range []string{view, base + ".map.json", base + ".depth"} {
			checkReadOnly(t, p)
		}
		if _, err := os.Create(filepath.Join(mnt, "new")); !errors.Is(err, syscall.EROFS) {
			t.Errorf("create in the mount: %v, want EROFS", err)
		}
	})
}

// checkReadOnly: every way of writing p fails with EROFS.
func checkReadOnly(t *testing.T, p string) {
	t.Helper()
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND} {
		f, err := os.OpenFile(p, flag, 0)
		if err == nil {
			f.Close()
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("open %s with flags %#x: %v, want EROFS", filepath.Base(p), flag, err)
		}
	}
	if err := os.Truncate(p, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("truncate %s: %v, want EROFS", filepath.Base(p), err)
	}
	if err := os.Chmod(p, 0o666); !errors.Is(err, syscall.EROFS) {
		t.Errorf("chmod %s: %v, want EROFS", filepath.Base(p), err)
	}
	if err := os.Remove(p); !errors.Is(err, syscall.EROFS) {
		t.Errorf("unlink %s: %v, want EROFS", filepath.Base(p), err)
	}
}

// readGenerated reads a .map.json or .depth file and checks that stat
// gave its exact size before anything was read.
func readGenerated(t *testing.T, p string) string {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(b)) {
		t.Errorf("%s: st_size %d, but %d bytes read", filepath.Base(p), st.Size(), len(b))
	}
	return string(b)
}

// qemuDataRanges merges the "data": true entries of a map into ranges.
func qemuDataRanges(m []imagetest.MapEntry) [][2]int64 {
	var out [][2]int64
	for _, e := range m {
		if !e.Data {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] == e.Start {
			out[n-1][1] += e.Length
			continue
		}
		out = append(out, [2]int64{e.Start, e.Start + e.Length})
	}
	return out
}

// seekWalk lists the data ranges of p as SEEK_DATA and SEEK_HOLE report
// them.
func seekWalk(t *testing.T, p string, size int64) [][2]int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var out [][2]int64
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA at %d: %v", off, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE at %d: %v", d, err)
		}
		if h <= d || h > size {
			t.Fatalf("SEEK_HOLE at %d returned %d (size %d)", d, h, size)
		}
		out = append(out, [2]int64{d, h})
		off = h
	}
	return out
}

// checkSeekEdges: lseek(2)'s rules at and past the end, and from inside
// ranges.
func checkSeekEdges(t *testing.T, p string, size int64, data [][2]int64) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for _, whence := range []int{unix.SEEK_DATA, unix.SEEK_HOLE} {
		for _, off := range []int64{size, size + 1, size + 1<<30} {
			if got, err := unix.Seek(fd, off, whence); err != unix.ENXIO {
				t.Errorf("lseek(%d, whence %d) = %d, %v; want ENXIO at or past the end", off, whence, got, err)
			}
		}
	}
	if len(data) == 0 {
		if got, err := unix.Seek(fd, 0, unix.SEEK_DATA); err != unix.ENXIO {
			t.Errorf("SEEK_DATA(0) with no data = %d, %v; want ENXIO", got, err)
		}
		return
	}
	last := data[len(data)-1]
	if last[1] == size {
		if got, err := unix.Seek(fd, size-1, unix.SEEK_HOLE); got != size || err != nil {
			t.Errorf("SEEK_HOLE(size-1) in the last data = %d, %v; want the size %d", got, err, size)
		}
	} else if got, err := unix.Seek(fd, last[1], unix.SEEK_DATA); err != unix.ENXIO {
		t.Errorf("SEEK_DATA(%d) after the last data = %d, %v; want ENXIO", last[1], got, err)
	}
	// From inside a data range, SEEK_DATA stays put.
	mid := (data[0][0] + data[0][1]) / 2
	if got, err := unix.Seek(fd, mid, unix.SEEK_DATA); got != mid || err != nil {
		t.Errorf("SEEK_DATA(%d) inside data = %d, %v", mid, got, err)
	}
}

// blockSpan returns the bytes of the union of ranges widened to block
// boundaries.
func blockSpan(ranges [][2]int64, block int64) int64 {
	var total, end int64
	for _, r := range ranges {
		s, e := r[0]/block*block, (r[1]+block-1)/block*block
		s = max(s, end)
		if e > s {
			total += e - s
			end = e
		}
	}
	return total
}

func compareBytes(t *testing.T, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Errorf("%d bytes, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("first difference at offset %d (%#x): %#02x, want %#02x", i, i, got[i], want[i])
			return
		}
	}
}

package layers_test

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/internal/qemudiff"
	"github.com/chainfs/chainfs/layers"
)

const (
	l1Mask   = 0x00fffffffffffe00
	copied   = uint64(1) << 63
	compBit  = uint64(1) << 62
	hdrL1Off = 40
)

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// l1 returns the file offset of L1 entry i.
func l1(t *testing.T, path string, i int64) int64 {
	return int64(imagetest.ReadBE64(t, path, hdrL1Off)) + 8*i
}

// l2 returns the file offset of the L2 table of L1 entry i.
func l2(t *testing.T, path string, i int64) int64 {
	return int64(imagetest.ReadBE64(t, path, l1(t, path, i)) & l1Mask)
}

// truncate cuts the file at path to size bytes.
func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// moveToEnd copies the cluster-aligned table of n bytes at off to the end
// of the file (rounded up to a cluster) and returns where it now lies.
func moveToEnd(t *testing.T, path string, off, n, cs int64) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := (int64(len(b)) + cs - 1) / cs * cs
	imagetest.Patch(t, path, at, b[off:off+n])
	return at
}

// What chainfs does with a broken image.
type outcome int

const (
	refused outcome = iota // Open fails
	fails                  // Open succeeds; reads of the broken range fail
	serves                 // everything reads
)

func (o outcome) String() string { return [...]string{"refused", "fails", "serves"}[o] }

type brokenRow struct {
	name string
	// make builds the image in dir and returns its path and the
	// substrings chainfs's error must contain (for a row that fails,
	// by default or, where strictMsg is empty, in strict mode).
	make func(t *testing.T, dir string) (path string, msg []string)
	is   error
	// def is what chainfs does by default, which is what QEMU does: the
	// row is also held against QEMU 7.2 and 10.0 with qemudiff (verdict,
	// sectors that fail, bytes, map and depth), unless noQEMU says why not.
	// strict is what it does with Options.Strict.
	def, strict outcome
	strictMsg   []string
	// damage are the kinds of damage chainfs notes by default, after
	// reading the whole image, its map and depth.
	damage []layers.DamageKind
	noQEMU string
}

// small makes a 1 MiB image with data at 0 and 100 KiB.
func small(t *testing.T, dir, name string, opts ...string) string {
	p := imagetest.Create(t, dir, name, "qcow2", 1*MiB, opts...)
	imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 4k", "write -P 2 100k 4k")
	return p
}

// overBase makes top.qcow2 (1 MiB, data at 0 and 100 KiB) over a raw
// base.raw full of 0x5b, so that a table that reads as unallocated shows
// the backing file.
func overBase(t *testing.T, dir string, opts ...string) string {
	b := imagetest.Create(t, dir, "base.raw", "raw", 1*MiB)
	imagetest.QemuIO(t, "raw", b, "write -P 0x5b 0 1M")
	p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, append(opts, "backing_file=base.raw", "backing_fmt=raw")...)
	imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 4k", "write -P 2 100k 4k")
	return p
}

// compressedAt makes z.qcow2 (1 MiB) with compressed data at 64 KiB and
// returns it with the file offset of that cluster's L2 entry.
func compressedAt(t *testing.T, dir string, opts ...string) (string, int64) {
	p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB, opts...)
	imagetest.QemuIO(t, "qcow2", p, "write -P 3 0 64k", "write -c -P 1 64k 64k")
	return p, l2(t, p, 0) + 8
}

func brokenRows() []brokenRow {
	return append(append(toleratedRows(), refusedByQEMURows()...), unsupportedRows()...)
}

// toleratedRows: the damage QEMU reads through (issue items 1-5), and the
// rest of that class that qemu-img check reports: chainfs answers as QEMU
// by default, and fails or refuses in strict mode.
func toleratedRows() []brokenRow {
	return []brokenRow{
		// 1. Data clusters and L2 tables past the end of the file.
		{name: "data cluster past the end of the file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageDataCluster},
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				bad := uint64(4 * MiB)
				l2off := l2(t, p, 0)
				imagetest.PatchBE64(t, p, l2off+8*25, copied|bad) // guest 100 KiB
				return p, []string{fmt.Sprintf("top.qcow2: data cluster for guest offset 0x19000 at %#x lies beyond end of file (%#x) (L2 table at %#x, index 25)",
					bad, fileSize(t, p), l2off)}
			}},
		{name: "data cluster just past the end of the file, over a backing file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageDataCluster},
			make: func(t *testing.T, dir string) (string, []string) {
				// What a host crash leaves: the L2 entry reached the disk,
				// the file's growth did not.
				p := overBase(t, dir)
				end := uint64(fileSize(t, p))
				imagetest.PatchBE64(t, p, l2(t, p, 0)+8*4, copied|end) // guest 256 KiB
				return p, []string{"top.qcow2: data cluster for guest offset 0x40000", "lies beyond end of file"}
			}},
		{name: "data cluster partly past the end of the file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageDataCluster},
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 1*MiB)
				imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k", "write -P 2 512k 64k")
				host := int64(imagetest.ReadBE64(t, p, l2(t, p, 0)+8*8) & l1Mask)
				if host+64*KiB != fileSize(t, p) {
					t.Fatalf("the data cluster of 512 KiB is not the last of the file")
				}
				truncate(t, p, host+5000)
				return p, []string{"top.qcow2: data cluster for guest offset 0x80000", "lies beyond end of file"}
			}},
		{name: "data cluster past the end of the external data file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageDataCluster},
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 1*MiB, "data_file=top.data")
				imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k", "write -P 2 512k 64k")
				truncate(t, filepath.Join(dir, "top.data"), 512*KiB+100)
				return p, []string{"top.data: data cluster for guest offset 0x80000", "lies beyond end of file (0x80064)"}
			}},
		{name: "L2 table past the end of the file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageL2Table},
			make: func(t *testing.T, dir string) (string, []string) {
				// 512 B clusters: an L2 table maps 32 KiB, so 100k is in L1
				// entry 3; it now shows the backing file.
				p := overBase(t, dir, "cluster_size=512")
				bad := (fileSize(t, p) + 0x10000) &^ 511
				imagetest.PatchBE64(t, p, l1(t, p, 3), copied|uint64(bad))
				return p, []string{fmt.Sprintf("top.qcow2: L2 table at %#x (L1 index 3) lies beyond end of file (%#x)", bad, fileSize(t, p))}
			}},
		{name: "L2 table partly past the end of the file", def: serves, strict: fails, damage: []layers.DamageKind{layers.DamageL2Table},
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir, "cluster_size=4096")
				imagetest.QemuIO(t, "qcow2", p, "write -P 3 600k 400k")
				at := moveToEnd(t, p, l2(t, p, 0), 4096, 4096)
				imagetest.PatchBE64(t, p, l1(t, p, 0), copied|uint64(at))
				// Keep the first 200 entries: guest 0 to 800 KiB.
				truncate(t, p, at+8*200)
				return p, []string{fmt.Sprintf("top.qcow2: L2 table at %#x (L1 index 0) lies beyond end of file", at)}
			}},
		// 2. L1 and refcount tables past the end of the file.
		{name: "L1 table past the end of the file", def: serves, strict: refused, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageL1Table},
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				bad := uint64(fileSize(t, p)+0xffff) &^ 0xffff
				imagetest.PatchBE64(t, p, hdrL1Off, bad)
				return p, []string{fmt.Sprintf("top.qcow2: L1 table at %#x (%d entries) lies beyond end of file (%#x)",
					bad, imagetest.ReadBE32(t, p, 36), fileSize(t, p))}
			}},
		{name: "L1 table partly past the end of the file", def: serves, strict: refused, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageL1Table},
			make: func(t *testing.T, dir string) (string, []string) {
				// 512 B clusters: 32 L1 entries, each mapping 32 KiB.
				p := overBase(t, dir, "cluster_size=512")
				imagetest.QemuIO(t, "qcow2", p, "write -P 3 900k 100k")
				at := moveToEnd(t, p, int64(imagetest.ReadBE64(t, p, hdrL1Off)), 512, 512)
				imagetest.PatchBE64(t, p, hdrL1Off, uint64(at))
				truncate(t, p, at+8*20) // entries 20-31 (640 KiB on) read as zero
				return p, []string{fmt.Sprintf("top.qcow2: L1 table at %#x (32 entries) lies beyond end of file", at)}
			}},
		{name: "refcount table past the end of the file", def: serves, strict: refused, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageRefcountTable},
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bad := uint64(fileSize(t, p)+0xffff) &^ 0xffff
				imagetest.PatchBE64(t, p, 48, bad)
				return p, []string{fmt.Sprintf("top.qcow2: refcount table at %#x (1 clusters) lies beyond end of file (%#x)", bad, fileSize(t, p))}
			}},
		{name: "refcount block past the end of the file, preallocation=metadata", def: serves, strict: serves, damage: []layers.DamageKind{layers.DamageRefcountBlock},
			make: func(t *testing.T, dir string) (string, []string) {
				// The refcounts feed QEMU's preallocation guess only: read
				// as zero, the image no longer looks preallocated, and
				// its map says data instead of zero for the holes.
				p := imagetest.Create(t, dir, "pre.qcow2", "qcow2", 2*MiB, "preallocation=metadata")
				imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k")
				rt := int64(imagetest.ReadBE64(t, p, 48))
				imagetest.PatchBE64(t, p, rt, uint64(fileSize(t, p)+0xffff)&^0xffff)
				return p, nil
			}},
		{name: "L1 table QEMU's block layer cannot read", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE64(t, p, hdrL1Off, 0x7fffffffc0000000)
				return p, []string{"top.qcow2: header: L1 table at 0x7fffffffc0000000 lies beyond what QEMU's block layer reads"}
			}},
		{name: "refcount table QEMU's block layer cannot read", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE64(t, p, 48, 0x7fffffffc0000000)
				return p, []string{"top.qcow2: header: refcount table at 0x7fffffffc0000000 lies beyond what QEMU's block layer reads"}
			}},
		// 3. A compressed cluster past the end of the file: its reads fail,
		// its map and depth do not.
		{name: "compressed cluster past the end of the file", def: fails, strict: fails, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageCompressedCluster},
			make: func(t *testing.T, dir string) (string, []string) {
				p, entry := compressedAt(t, dir)
				e := imagetest.ReadBE64(t, p, entry)
				// 64 KiB clusters: the host offset is bits 0-53.
				bad := uint64(fileSize(t, p) + 12345)
				imagetest.PatchBE64(t, p, entry, e&^(1<<54-1)|bad)
				return p, []string{fmt.Sprintf("z.qcow2: compressed cluster for guest offset 0x10000 at %#x lies beyond end of file", bad)}
			}},
		// 4. Probing, for backing files without a recorded format (the
		// top image's probing is TestProbe's).
		{name: "backing file with qcow2 magic and version 0, probed", def: serves, strict: serves,
			make: func(t *testing.T, dir string) (string, []string) {
				b := small(t, dir, "base.img")
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.img", "backing_fmt=qcow2")
				imagetest.QemuIO(t, "qcow2", p, "write -P 7 64k 64k")
				imagetest.PatchBE32(t, b, 4, 0)
				dropBackingFormat(t, p)
				return p, nil
			}},
		{name: "backing file with qcow2 magic and version 1, probed", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				b := small(t, dir, "base.img")
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 1*MiB, "backing_file=base.img", "backing_fmt=qcow2")
				imagetest.PatchBE32(t, b, 4, 1)
				dropBackingFormat(t, p)
				return p, []string{"base.img: qcow images are not supported (only qcow2 and raw); QEMU probes this file as qcow"}
			}},
		{name: "backing file named .dmg, probed", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				b := imagetest.Create(t, dir, "base.dmg", "raw", 1*MiB)
				imagetest.QemuIO(t, "raw", b, "write -P 1 0 64k")
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 1*MiB, "backing_file=base.dmg", "backing_fmt=raw")
				dropBackingFormat(t, p)
				return p, []string{"base.dmg: dmg images are not supported (only qcow2 and raw); QEMU probes this file as dmg"}
			}},
		// 5. NUL bytes in the recorded names.
		{name: "NUL inside the backing file name", def: serves, strict: serves,
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				off := int64(imagetest.ReadBE64(t, p, 8))
				imagetest.PatchBE32(t, p, 16, 12)
				imagetest.Patch(t, p, off+8, []byte("\x00.gz"))
				return p, nil
			}},
		{name: "NUL at the start of the backing file name: no backing file", def: serves, strict: serves,
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				imagetest.Patch(t, p, int64(imagetest.ReadBE64(t, p, 8)), []byte{0})
				return p, nil
			}},
		{name: "NUL inside the backing format", def: serves, strict: serves,
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				ext := findExtension(t, p, 0xe2792aca)
				imagetest.PatchBE32(t, p, ext+4, 5)
				imagetest.Patch(t, p, ext+8, []byte("raw\x00q"))
				return p, nil
			}},
		{name: "empty backing format: probed", def: serves, strict: serves,
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				imagetest.Patch(t, p, findExtension(t, p, 0xe2792aca)+8, []byte{0})
				return p, nil
			}},
		// The rest of the class: what QEMU ignores and qemu-img check
		// reports.
		{name: "reserved bits in an L2 entry", def: serves, strict: fails, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageReservedBits},
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				e := l2(t, p, 0)
				imagetest.PatchBE64(t, p, e, imagetest.ReadBE64(t, p, e)|1<<56|2)
				return p, []string{"top.qcow2: L2 entry", "for guest offset 0x0 has reserved bits set"}
			}},
		{name: "reserved bits in an L1 entry", def: serves, strict: fails, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageReservedBits},
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				e := l1(t, p, 0)
				imagetest.PatchBE64(t, p, e, imagetest.ReadBE64(t, p, e)|4)
				return p, []string{"top.qcow2: L1 entry", "(index 0, guest offset 0x0) has reserved bits set"}
			}},
		{name: "COPIED flag on a compressed cluster", def: serves, strict: fails, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageCompressedFlags},
			make: func(t *testing.T, dir string) (string, []string) {
				p, entry := compressedAt(t, dir)
				imagetest.PatchBE64(t, p, entry, imagetest.ReadBE64(t, p, entry)|copied)
				return p, []string{"z.qcow2: compressed cluster entry", "for guest offset 0x10000 carries the COPIED flag"}
			}},
		{name: "subcluster bitmap on a compressed cluster", def: serves, strict: fails, is: layers.ErrCorrupt, damage: []layers.DamageKind{layers.DamageCompressedFlags},
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "ext.qcow2", "qcow2", 1*MiB, "extended_l2=on")
				imagetest.QemuIO(t, "qcow2", p, "write -c -P 1 64k 64k")
				imagetest.PatchBE64(t, p, l2(t, p, 0)+16+8, 0x5)
				return p, []string{"ext.qcow2: compressed cluster entry", "for guest offset 0x10000 carries the COPIED flag or a subcluster bitmap (0x5)"}
			}},
	}
}

// refusedByQEMURows: what QEMU refuses, at open (issue item 6 and the
// older checks) or for the broken range: chainfs does the same in both
// modes.
func refusedByQEMURows() []brokenRow {
	header := func(name string, msg string, edit func(t *testing.T, p string)) brokenRow {
		return brokenRow{name: name, def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := overBase(t, dir)
				edit(t, p)
				return p, []string{"top.qcow2: " + msg}
			}}
	}
	atRead := func(name string, msg []string, make func(t *testing.T, dir string) string) brokenRow {
		return brokenRow{name: name, def: fails, strict: fails, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) { return make(t, dir), msg }}
	}
	endMarker := func(t *testing.T, p string) int64 {
		// The end of extensions follows the feature name table.
		ft := findExtension(t, p, 0x6803f857)
		return ft + 8 + int64(imagetest.ReadBE32(t, p, ft+4)+7)&^7
	}
	return []brokenRow{
		// 6. Open-time checks.
		header("end of extensions with a length past the header area", "header extension 0x0 at", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, endMarker(t, p)+4, 64*KiB)
		}),
		header("extension header in the last bytes before the backing file name", "header extension", func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, 8, uint64(endMarker(t, p)+4)) // the end marker no longer fits
			imagetest.PatchBE32(t, p, 16, 0)
		}),
		header("snapshot table offset not cluster aligned, no snapshots", "header: snapshot table offset invalid: 0x200 is not a cluster-aligned file offset", func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, 64, 0x200)
		}),
		header("snapshot table offset past 2^63, no snapshots", "header: snapshot table offset invalid: 0x8000000000000000 is not a cluster-aligned file offset", func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, 64, 1<<63)
		}),
		header("more snapshots than QEMU allows", "header: snapshot table too large: 65537 snapshots exceed QEMU's limit", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, 60, 65537)
		}),
		header("no refcount table", "header: no reference count table (refcount_table_clusters is 0)", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, 56, 0)
		}),
		header("crypto header extension without LUKS encryption", "crypto header extension at", func(t *testing.T, p string) {
			imagetest.PatchBE64(t, p, 8, 0) // no backing file: room after the end marker
			imagetest.Patch(t, p, endMarker(t, p), []byte("\x05\x37\xbe\x77\x00\x00\x00\x10"+strings.Repeat("\x00", 24)))
		}),
		header("backing format of 16 bytes", "backing format extension at 0x70: length 16, QEMU allows at most 15", func(t *testing.T, p string) {
			imagetest.PatchBE32(t, p, findExtension(t, p, 0xe2792aca)+4, 16)
		}),
		// The rest of item 6, with the snapshot and bitmap checks of
		// snapshot.go and bitmap.go (their own tests have one row per
		// check).
		{name: "snapshot table entry with too much extra data", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "s.qcow2")
				imagetest.QemuImg(t, "snapshot", "-c", "one", p)
				imagetest.QemuImg(t, "snapshot", "-c", "two", p)
				imagetest.PatchBE32(t, p, imagetest.SnapshotEntry(t, p, 1)+36, 1025)
				return p, []string{"s.qcow2: snapshot table entry 1 at 0x"}
			}},
		{name: "bitmap directory entry with extra data: broken directory", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "b.qcow2")
				bitmap("b0", "--add")(t, p)
				imagetest.PatchBE32(t, p, imagetest.BitmapEntry(t, p, 0)+20, 8)
				return p, []string{"b.qcow2: bitmap directory at", "broken"}
			}},
		{name: "bitmap that does not satisfy the constraints", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "b.qcow2")
				bitmap("b0", "--add")(t, p)
				e := imagetest.BitmapEntry(t, p, 0)
				imagetest.PatchBE32(t, p, e+12, imagetest.ReadBE32(t, p, e+12)|4)
				return p, []string{`bitmap "b0" does not satisfy the constraints: reserved flags 0x4 set`}
			}},
		{name: "cluster_bits 22", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE32(t, p, 20, 22)
				return p, []string{"top.qcow2: header: cluster_bits 22 outside 9..21"}
			}},
		{name: "empty L1 table at an offset past 2^63", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "empty.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", p, "0")
				imagetest.PatchBE64(t, p, hdrL1Off, 0x8000000000000000) // l1_size is 0
				return p, []string{"empty.qcow2: header: L1 table offset 0x8000000000000000 is invalid"}
			}},
		{name: "data_file_raw without a data file", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE64(t, p, 88, imagetest.ReadBE64(t, p, 88)|layers.AutoclearDataFileRaw)
				return p, []string{"top.qcow2: header: data_file_raw set without an external data file"}
			}},
		{name: "backing file name offset beyond the first cluster", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				imagetest.PatchBE64(t, p, 8, 8192)
				return p, []string{"top.qcow2: header: backing file name offset 0x2000 lies beyond the first cluster"}
			}},
		{name: "extended L2 with 4 KiB clusters", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				setIncompat(layers.IncompatExtendedL2)(t, p)
				return p, []string{"top.qcow2: header: extended L2 entries need clusters of at least 16 KiB"}
			}},
		{name: "bitmaps extension with no bitmaps", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE32(t, p, off+8, 0)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: no bitmaps", off)}
			}},
		{name: "bitmaps extension with a huge directory", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE64(t, p, off+16, 1<<40)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: bitmap directory of 1099511627776 bytes exceeds", off)}
			}},
		{name: "bitmaps extension with an unaligned directory", def: refused, strict: refused, is: layers.ErrCorrupt,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE64(t, p, off+24, imagetest.ReadBE64(t, p, off+24)+8)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: bitmap directory offset", off), "is not cluster aligned"}
			}},
		{name: "missing backing file", def: refused, strict: refused, is: layers.ErrChain,
			make: func(t *testing.T, dir string) (string, []string) {
				b := small(t, dir, "base.qcow2")
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
				os.Remove(b)
				return p, []string{`top.qcow2: backing file "base.qcow2"`, "no such file"}
			}},
		{name: "backing chain loop", def: refused, strict: refused, is: layers.ErrChain, noQEMU: "QEMU 7.2's qemu-img convert hangs on it",
			make: func(t *testing.T, dir string) (string, []string) {
				a := small(t, dir, "a.qcow2")
				imagetest.Create(t, dir, "b.qcow2", "qcow2", 0, "backing_file=a.qcow2", "backing_fmt=qcow2")
				imagetest.QemuImg(t, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
				return a, []string{"backing chain loop"}
			}},
		// The range QEMU's block status refuses: reads fail there, the
		// map and depth fail (as qemu-img map and qemu-nbd do), the rest
		// reads.
		atRead("L2 table offset not cluster aligned",
			[]string{"top.qcow2: L2 table offset 0x", "(L1 index 0) is not cluster aligned"}, func(t *testing.T, dir string) string {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				imagetest.PatchBE64(t, p, l1(t, p, 0), copied|uint64(l2(t, p, 0)+512))
				return p
			}),
		atRead("data cluster offset not cluster aligned",
			[]string{"top.qcow2: cluster allocation offset", "is not cluster aligned (guest offset 0x0, L2 table at"}, func(t *testing.T, dir string) string {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				e := l2(t, p, 0)
				imagetest.PatchBE64(t, p, e, imagetest.ReadBE64(t, p, e)+512)
				return p
			}),
		atRead("zero flag in a version 2 image",
			[]string{"v2.qcow2: zero cluster entry in a version 2 image for guest offset 0x1000"}, func(t *testing.T, dir string) string {
				p := small(t, dir, "v2.qcow2", "compat=0.10", "cluster_size=4096")
				imagetest.PatchBE64(t, p, l2(t, p, 0)+8, 1) // guest 4 KiB: plain zero
				return p
			}),
		atRead("compressed zlib stream that does not inflate",
			[]string{"z.qcow2: compressed cluster at", "for guest offset 0x10000 does not inflate to one cluster"}, func(t *testing.T, dir string) string {
				p, entry := compressedAt(t, dir)
				host := int64(imagetest.ReadBE64(t, p, entry) & (1<<54 - 1))
				imagetest.Patch(t, p, host, []byte{0xff}) // a block of reserved type 3
				return p
			}),
		atRead("compressed zstd stream cut short",
			[]string{"z.qcow2: compressed cluster at", "does not inflate to one cluster"}, func(t *testing.T, dir string) string {
				p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB, "compression_type=zstd")
				src := pattern(64*KiB, 5)
				copy(src[32*KiB:], make([]byte, 32*KiB)) // compressible, several sectors long
				rawSrc := filepath.Join(dir, "src.raw")
				os.WriteFile(rawSrc, src, 0o644)
				imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", rawSrc, p)
				os.Remove(rawSrc)
				l2off := l2(t, p, 0)
				e := imagetest.ReadBE64(t, p, l2off)
				if e&compBit == 0 {
					t.Fatalf("cluster 0 is not compressed: %#x", e)
				}
				// Keep one 512-byte sector of the stream: sectors field (bits 54-61) = 0.
				imagetest.PatchBE64(t, p, l2off, e&^(uint64(0xff)<<54))
				return p
			}),
		atRead("extended L2 bitmap with a subcluster both allocated and zero",
			[]string{"ext.qcow2: invalid extended L2 bitmap 0x00000001ffffffff for guest cluster 0x0 (L2 table at"}, func(t *testing.T, dir string) string {
				p := imagetest.Create(t, dir, "ext.qcow2", "qcow2", 1*MiB, "extended_l2=on")
				imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k")
				imagetest.PatchBE64(t, p, l2(t, p, 0)+8, 0x00000001_ffffffff)
				return p
			}),
	}
}

// unsupportedRows: valid images chainfs does not read; QEMU reads some.
func unsupportedRows() []brokenRow {
	return []brokenRow{
		{name: "qcow2 version 4", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE32(t, p, 4, 4)
				return p, []string{"top.qcow2: qcow2 version 4 is not supported"}
			}},
		{name: "unknown incompatible feature bit without a name", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				setIncompat(1<<9)(t, p)
				return p, []string{"top.qcow2: unsupported incompatible feature bit 9"}
			}},
		{name: "unknown incompatible feature bit named in the feature table", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				renameFeature(4, 9, "test feature")(t, p)
				setIncompat(1<<9)(t, p)
				return p, []string{`top.qcow2: unsupported incompatible feature bit 9 ("test feature")`}
			}},
		{name: "LUKS-encrypted", def: refused, strict: refused, is: layers.ErrEncrypted, noQEMU: "QEMU opens it with its key",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "luks.qcow2")
				args := []string{"create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=abc",
					"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100", p, "1M"}
				// QEMU's PBKDF benchmark now and then fails with "Unable
				// to get accurate CPU usage" on a busy machine: retry.
				for try := 0; ; try++ {
					_, stderr, err := imagetest.RunErr(t, dir, "qemu-img", args...)
					if err == nil {
						break
					}
					if try == 9 || !strings.Contains(stderr, "accurate CPU usage") {
						t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, stderr)
					}
				}
				return p, []string{"luks.qcow2: LUKS-encrypted qcow2"}
			}},
		{name: "AES-encrypted", def: refused, strict: refused, is: layers.ErrEncrypted, noQEMU: "QEMU opens it with its key",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "aes.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=abc",
					"-o", "encryption=on,encrypt.key-secret=sec0", p, "1M")
				return p, []string{"aes.qcow2: AES-encrypted qcow2"}
			}},
		{name: "backing named by a protocol", def: refused, strict: refused, is: layers.ErrUnsupported,
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "top.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", "nbd+unix:///?socket=/nonexistent", "-F", "raw", p, "1M")
				return p, []string{"names a protocol"}
			}},
		{name: "backing format vmdk", def: refused, strict: refused, is: layers.ErrUnsupported, noQEMU: "QEMU reads vmdk",
			make: func(t *testing.T, dir string) (string, []string) {
				imagetest.Create(t, dir, "base.vmdk", "vmdk", 1*MiB)
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.vmdk", "backing_fmt=vmdk")
				return p, []string{`backing format "vmdk" of "base.vmdk" is not supported`}
			}},
		{name: "probed backing in a foreign format", def: refused, strict: refused, is: layers.ErrUnsupported, noQEMU: "QEMU reads qed",
			make: func(t *testing.T, dir string) (string, []string) {
				imagetest.Create(t, dir, "base.img", "qed", 1*MiB)
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.img", "backing_fmt=qed")
				dropBackingFormat(t, p)
				return p, []string{"base.img: qed images are not supported (only qcow2 and raw); QEMU probes this file as qed"}
			}},
	}
}

// TestBrokenImages opens every hand-broken and unsupported image by
// default and in strict mode. Refused: the error errors.Is the row's
// sentinel and names the file, the structure and its offset. Failing:
// Open succeeds, a read of the whole image fails so, and so does a Status
// over it unless only the data is broken. Served: everything reads. By
// default every row (but a few that say why not) is then held against
// QEMU 7.2 and 10.0 live: the same verdict at open, the same sectors
// failing, the same bytes elsewhere, the same map and depth; the damage it
// noted is the row's, each kind logged with the file, structure, guest
// and host offsets.
func TestBrokenImages(t *testing.T) {
	imagetest.Need(t)
	qs := imagetest.Oracles(t)
	for _, r := range brokenRows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p, msg := r.make(t, dir)
			log, rec := testLog()
			checkOutcome(t, p, r.def, r.is, msg, &layers.Options{Log: log})
			strictMsg := r.strictMsg
			if strictMsg == nil {
				strictMsg = msg
			}
			checkOutcome(t, p, r.strict, r.is, strictMsg, &layers.Options{Log: log, Strict: true})
			if r.noQEMU != "" {
				t.Logf("not held against QEMU: %s", r.noQEMU)
				return
			}
			dlog, drec := testLog()
			res := qemudiff.Compare(t, qs, p, "qcow2", dlog)
			if !res.Same() {
				t.Errorf("differs from QEMU:\n%s", res.Report(t, qs))
			}
			checkDamage(t, res.Damage, r.damage, drec)
			_ = rec
		})
	}
}

// checkOutcome opens p with opts and checks the row's outcome.
func checkOutcome(t *testing.T, p string, want outcome, is error, msg []string, opts *layers.Options) {
	t.Helper()
	mode := "default"
	if opts.Strict {
		mode = "strict"
	}
	if is == nil {
		is = layers.ErrCorrupt
	}
	c, err := layers.Open(p, opts)
	if err != nil {
		if want != refused {
			t.Fatalf("%s: Open: %v; want it to succeed and %s", mode, err, want)
		}
		mustIs(t, err, is)
		contains(t, err, msg...)
		var fe *layers.FormatError
		if errors.Is(err, layers.ErrCorrupt) && !errors.As(err, &fe) {
			t.Errorf("%s: corruption error %v is not a *FormatError", mode, err)
		}
		return
	}
	defer c.Close()
	if want == refused {
		t.Fatalf("%s: Open succeeded, want an error containing %q", mode, msg)
	}
	top := c.Top()
	buf := make([]byte, top.Size)
	_, err = top.ReadAt(buf, 0)
	switch {
	case want == serves && err != nil:
		t.Fatalf("%s: ReadAt: %v; want the whole image to read", mode, err)
	case want == fails && err == nil:
		t.Fatalf("%s: ReadAt succeeded, want an error containing %q", mode, msg)
	case want == fails:
		mustIs(t, err, is)
		contains(t, err, msg...)
		// A Status over the image fails the same way, unless only a
		// read finds the cluster broken.
		if _, serr := top.Status(nil, 0, top.Size); serr != nil && serr.Error() != err.Error() {
			t.Errorf("%s: Status error %q differs from ReadAt error %q", mode, serr, err)
		}
	}
}

// checkDamage: the kinds counted are exactly want, each logged once with
// the file, the structure and its offsets.
func checkDamage(t *testing.T, got layers.DamageCounts, want []layers.DamageKind, rec *recorder) {
	t.Helper()
	for _, k := range layers.DamageKinds() {
		expected := false
		for _, w := range want {
			expected = expected || w == k
		}
		if (got[k] > 0) != expected {
			t.Errorf("damage %q: counted %d, want %v", k, got[k], expected)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, k := range want {
		found := false
		for _, r := range rec.records {
			attrs := map[string]string{}
			r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
			if r.Level == slog.LevelWarn && attrs["damage"] == k.Key() && attrs["file"] != "" && attrs["structure"] != "" && attrs["host_offset"] != "" &&
				(attrs["guest_offset"] != "" || k == layers.DamageL1Table || k == layers.DamageRefcountTable || k == layers.DamageRefcountBlock) {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning naming the file, structure and offsets of damage %q", k)
		}
	}
}

// TestProbe probes images as QEMU would, each held against what qemu-img
// info of both QEMUs calls it: the formats chainfs reads are taken, the
// others refused by the name QEMU gives them.
func TestProbe(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	qs := imagetest.Oracles(t)
	le32 := func(v uint32) string { return string([]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}) }
	at := func(off int, s string) []byte { b := make([]byte, off, off+len(s)); return append(b, s...) }
	rows := []struct {
		name, file string
		head       []byte
		want       string // QEMU's format name
	}{
		{"qcow2 magic, version 0", "a.img", []byte("QFI\xfb\x00\x00\x00\x00"), "raw"},
		{"qcow2 magic, version 1: qcow", "a.img", []byte("QFI\xfb\x00\x00\x00\x01"), "qcow"},
		{"qcow2 magic, version 4: still qcow2", "a.img", []byte("QFI\xfb\x00\x00\x00\x04"), "qcow2"},
		{"LUKS version 1", "a.img", []byte("LUKS\xba\xbe\x00\x01"), "luks"},
		{"LUKS version 2, which QEMU does not claim", "a.img", []byte("LUKS\xba\xbe\x00\x02"), "raw"},
		{"QED", "a.img", []byte("QED\x00"), "qed"},
		{"VMDK sparse extent", "a.img", []byte("KDMV"), "vmdk"},
		{"VMware 3 COWD", "a.img", []byte("COWD"), "vmdk"},
		{"VMDK descriptor after comments and blank lines", "a.img", []byte("# Disk DescriptorFile\n   \r\nversion=3\r\n"), "vmdk"},
		{"text that is no VMDK descriptor", "a.img", []byte("# comment\nCID=fffffffe\n"), "raw"},
		{"VHDX", "a.img", []byte("vhdxfile"), "vhdx"},
		{"VPC", "a.img", []byte("conectix"), "vpc"},
		{"VDI signature", "a.img", append(at(0, "<<< anything >>>"), at(48, le32(0xbeda107f))...), "vdi"},
		{"VDI text without the signature", "a.img", []byte("<<< Oracle VM VirtualBox Disk Image >>>\n"), "raw"},
		{"qcow2 magic and VDI signature: VDI wins", "a.img", append([]byte("QFI\xfb\x00\x00\x00\x03"), at(56, le32(0xbeda107f))...), "vdi"},
		{"Bochs", "a.img", append(append(append(at(0, "Bochs Virtual HD Image"), at(10, "Redolog")...), at(9, "Growing")...), at(9, le32(0x20000))...), "bochs"},
		{"Parallels", "a.img", []byte("WithoutFreeSpace\x02\x00\x00\x00"), "parallels"},
		{"cloop", "a.img", []byte("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"), "cloop"},
		{"any file named .dmg", "a.dmg", []byte("hello"), "dmg"},
		{"empty file named .dmg", "e.dmg", nil, "raw"},
		{"zeroes", "a.img", []byte{0}, "raw"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), r.file)
			b := make([]byte, 1*MiB)
			copy(b, r.head)
			if r.head == nil {
				b = nil
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, q := range qs {
				out, stderr, _ := q.ImgErr(t, "", "info", p)
				got := ""
				for _, line := range strings.Split(out+stderr, "\n") {
					if f, ok := strings.CutPrefix(line, "file format: "); ok {
						got = f
					}
				}
				if got == "" {
					// QEMU picked the format and its driver refused the
					// file: ask which format with -f, which must fail
					// the same way.
					for _, f := range []string{"qcow", "qcow2", "luks", "qed", "vmdk", "vhdx", "vpc", "vdi", "bochs", "parallels", "cloop", "dmg"} {
						_, fstderr, _ := q.ImgErr(t, "", "info", "-f", f, p)
						if fstderr == stderr {
							got = f
							break
						}
					}
				}
				if got != r.want {
					t.Errorf("%s probes it as %q (%s), the row says %q", q.Name(t), got, strings.TrimSpace(stderr), r.want)
				}
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			format, err := layers.Probe(layers.NewHostFile(p, f, st.Size()))
			switch r.want {
			case "raw", "qcow2":
				if err != nil || format.String() != r.want {
					t.Errorf("Probe: %v, %v; want %s", format, err, r.want)
				}
			default:
				if !errors.Is(err, layers.ErrUnsupported) || !strings.Contains(err.Error(), "QEMU probes this file as "+r.want) {
					t.Errorf("Probe: %v, %v; want it refused as %s", format, err, r.want)
				}
			}
		})
	}
}

// TestChainLimits: MaxDepth bounds the chain.
func TestChainLimits(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	dir := t.TempDir()
	imagetest.Create(t, dir, "l0.qcow2", "qcow2", 1*MiB)
	for i := 1; i < 5; i++ {
		imagetest.Create(t, dir, fmt.Sprintf("l%d.qcow2", i), "qcow2", 0,
			fmt.Sprintf("backing_file=l%d.qcow2", i-1), "backing_fmt=qcow2")
	}
	top := filepath.Join(dir, "l4.qcow2")
	log, _ := testLog()
	if _, err := layers.Open(top, &layers.Options{MaxDepth: 4, Log: log}); !errors.Is(err, layers.ErrChain) {
		t.Fatalf("Open with MaxDepth 4 of a 5-layer chain: %v, want ErrChain", err)
	}
	c, err := layers.Open(top, &layers.Options{MaxDepth: 5, Log: log})
	if err != nil {
		t.Fatalf("Open with MaxDepth 5 of a 5-layer chain: %v", err)
	}
	c.Close()
}

// TestStrictPagedL1: strict mode reports a broken L2 entry of a view whose
// L1 table is not held in memory (a table over 16 KiB, read through the
// cache, as snapshot views' always are) as it does for a small table:
// naming the L2 table, without indexing a table that is not there.
func TestStrictPagedL1(t *testing.T) {
	dir := t.TempDir()
	// 2 TiB of 64 KiB clusters: 4096 L1 entries, 32 KiB of table.
	p := imagetest.Create(t, dir, "big.qcow2", "qcow2", 2<<40)
	imagetest.QemuIO(t, "qcow2", p, "write -P 3 0 64k", "write -c -P 1 64k 64k")
	e := l2(t, p, 0) + 8
	imagetest.PatchBE64(t, p, e, imagetest.ReadBE64(t, p, e)|copied)
	c, err := layers.Open(p, &layers.Options{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Top().Status(nil, 0, 1<<20)
	mustIs(t, err, layers.ErrCorrupt)
	contains(t, err, "carries the COPIED flag")
	contains(t, err, "index 1)")
}

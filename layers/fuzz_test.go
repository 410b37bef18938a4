package layers_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/layers"
)

// addSeeds adds the images testdata/make.sh made.
func addSeeds(f *testing.F) {
	paths, err := filepath.Glob("testdata/*.qcow2")
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seed images in testdata (run testdata/make.sh): %v", err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// fullReadMax bounds the virtual size up to which FuzzOpen reads the
// whole image; larger images get sampled reads only.
const fullReadMax = 64 << 20

// FuzzOpen opens arbitrary bytes as a qcow2 image: it must never panic,
// hang or allocate without bound, and what it returns must be consistent:
// Status covers every byte of the image exactly once with sane extents,
// and ReadAt returns what it should or a *FormatError. The same holds for
// the views of the first internal snapshots (the snapshot table is
// decoded and checked at open), and the runs of the first persistent
// bitmaps (the bitmap directory and tables are checked at open) tile the
// disk in granularity-aligned runs.
func FuzzOpen(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		hf := layers.NewHostFile("fuzz.qcow2", bytes.NewReader(b), int64(len(b)))
		l, err := layers.OpenImage(hf, layers.FormatQcow2, "")
		if err != nil {
			checkErr(t, err)
			return
		}
		checkFuzzedLayer(t, l)
		snaps := l.Snapshots()
		for i := range min(len(snaps), 4) {
			v, err := l.SnapshotLayer(i)
			if snaps[i].Err != nil {
				if err == nil {
					t.Fatalf("snapshot %d: Err %v, yet SnapshotLayer succeeds", i, snaps[i].Err)
				}
				checkErr(t, err)
				continue
			}
			if err != nil {
				t.Fatalf("snapshot %d: SnapshotLayer: %v", i, err)
			}
			if v.Snapshot != &snaps[i] || v.Size != int64(snaps[i].DiskSize)&^511 {
				t.Fatalf("snapshot %d: view of size %d for %+v", i, v.Size, snaps[i])
			}
			checkFuzzedLayer(t, v)
		}
		bms := l.Bitmaps()
		for i := range min(len(bms), 4) {
			checkFuzzedBitmap(t, l, &bms[i])
		}
	})
}

// maxFuzzSpans bounds the L2 spans FuzzOpen asks Status for at each end of
// a layer: a snapshot's disk size is only bounded by QEMU's L1 limit.
const maxFuzzSpans = 64

// checkFuzzedLayer checks Status, ReadAt and MetadataPreallocated of a
// layer (or snapshot view) of a fuzzed image.
func checkFuzzedLayer(t *testing.T, l *layers.Layer) {
	if l.Size < 0 || l.Size%512 != 0 {
		t.Fatalf("virtual size %d", l.Size)
	}
	// Status everything, one L2 table's span at a time (each L1 entry is
	// one call), or the first and last spans of a large view.
	entry := int64(8)
	if l.Header.ExtendedL2() {
		entry = 16
	}
	span := l.ClusterSize * (l.ClusterSize / entry)
	spans := (l.Size + span - 1) / span
	var exts []layers.Extent
	statusOK := true
	for k := int64(0); k < spans; k++ {
		if spans > 2*maxFuzzSpans && k == maxFuzzSpans {
			k = spans - maxFuzzSpans
			statusOK = false // not all of it: no full read
		}
		off := k * span
		n := min(span, l.Size-off)
		var err error
		exts, err = l.Status(exts[:0], off, n)
		if err != nil {
			checkErr(t, err)
			statusOK = false
			break
		}
		if err := coversExactly(exts, off, n); err != nil {
			t.Fatalf("Status(%#x, %#x): %v", off, n, err)
		}
		for _, e := range exts {
			switch e.Kind {
			case layers.Unallocated, layers.Zero, layers.Data:
			case layers.Compressed:
				if e.File == nil || e.CompressedSize <= 0 || e.HasHostOffset() {
					t.Fatalf("compressed extent %+v", e)
				}
			default:
				t.Fatalf("extent of kind %v", e.Kind)
			}
			if e.Kind == layers.Data && e.File == nil {
				t.Fatalf("data extent without a file: %+v", e)
			}
		}
	}

	buf := make([]byte, 256<<10)
	read := func(off int64, n int) {
		n = min(n, len(buf))
		got, err := l.ReadAt(buf[:n], off)
		switch {
		case off >= l.Size:
			if got != 0 || err != io.EOF {
				t.Fatalf("ReadAt(%d, %#x) past the end = %d, %v", n, off, got, err)
			}
		case err != nil && err != io.EOF:
			checkErr(t, err)
		case int64(got) != min(int64(n), l.Size-off):
			t.Fatalf("ReadAt(%d, %#x) = %d, %v (size %#x)", n, off, got, err, l.Size)
		}
	}
	if statusOK && l.Size <= fullReadMax {
		for off := int64(0); off < l.Size; off += int64(len(buf)) {
			read(off, len(buf))
		}
	}
	cs := l.ClusterSize
	for _, off := range []int64{0, 1, cs - 1, cs + 100, l.Size / 2, l.Size - 1, l.Size - cs, l.Size} {
		if off >= 0 {
			read(off, int(min(3*cs, int64(len(buf)))))
		}
	}
	if _, err := l.MetadataPreallocated(); err != nil {
		checkErr(t, err)
	}
}

// maxFuzzBits bounds the bitmaps whose runs FuzzOpen walks.
const maxFuzzBits = 1 << 22

// checkFuzzedBitmap: the runs of a bitmap of a fuzzed image tile the disk,
// alternate, and start on granularity boundaries; a bitmap in use fails
// with ErrInconsistent.
func checkFuzzedBitmap(t *testing.T, l *layers.Layer, b *layers.Bitmap) {
	if b.Granularity < 512 || b.Granularity > 1<<31 || b.Granularity&(b.Granularity-1) != 0 {
		t.Fatalf("bitmap %q: granularity %d", b.Name, b.Granularity)
	}
	if l.Size/b.Granularity > maxFuzzBits {
		return
	}
	at, first, last := int64(0), true, false
	err := b.Runs(func(off, length int64, dirty bool) error {
		if off != at || length <= 0 || off%b.Granularity != 0 || off+length > l.Size || (!first && dirty == last) {
			t.Fatalf("bitmap %q: run [%#x, +%#x) dirty %v after %#x (disk %#x)", b.Name, off, length, dirty, at, l.Size)
		}
		at, first, last = off+length, false, dirty
		return nil
	})
	switch {
	case b.InUse():
		if !errors.Is(err, layers.ErrInconsistent) {
			t.Fatalf("bitmap %q in use: Runs: %v", b.Name, err)
		}
	case err != nil:
		checkErr(t, err)
	case at != l.Size:
		t.Fatalf("bitmap %q: runs end at %#x, the disk at %#x", b.Name, at, l.Size)
	}
}

// checkErr: errors from a fuzzed image are *FormatError values wrapping a
// sentinel.
func checkErr(t *testing.T, err error) {
	t.Helper()
	var fe *layers.FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FormatError", err, err)
	}
	if !errors.Is(err, layers.ErrCorrupt) && !errors.Is(err, layers.ErrUnsupported) && !errors.Is(err, layers.ErrEncrypted) {
		t.Fatalf("error %v wraps no sentinel", err)
	}
}

// FuzzDecodeHeader decodes arbitrary bytes as a qcow2 header: it must not
// panic, and a header it accepts must satisfy the limits it promises.
func FuzzDecodeHeader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := layers.DecodeHeader("fuzz.qcow2", bytes.NewReader(b), int64(len(b)))
		if err != nil {
			checkErr(t, err)
			return
		}
		if h.Version != 2 && h.Version != 3 {
			t.Fatalf("version %d accepted", h.Version)
		}
		if h.ClusterBits < 9 || h.ClusterBits > 21 {
			t.Fatalf("cluster_bits %d accepted", h.ClusterBits)
		}
		if h.L1TableOffset%(1<<h.ClusterBits) != 0 || h.L1TableOffset > 1<<63-1 {
			t.Fatalf("L1 table offset %#x accepted", h.L1TableOffset)
		}
		// Tables may reach past the end of the file (QEMU reads zeroes
		// there), but not past where QEMU's block layer reads at all.
		const maxQEMURead = 0x7fffffffc0000000
		if h.L1Size > 0 && h.L1TableOffset+uint64(h.L1Size)*8 > maxQEMURead {
			t.Fatalf("L1 table at %#x (%d entries) past QEMU's reach accepted", h.L1TableOffset, h.L1Size)
		}
		if h.RefcountTableClusters == 0 || h.RefcountTableOffset+uint64(h.RefcountTableClusters)<<h.ClusterBits > maxQEMURead {
			t.Fatalf("refcount table at %#x (%d clusters) accepted", h.RefcountTableOffset, h.RefcountTableClusters)
		}
		if h.SnapshotsOffset%(1<<h.ClusterBits) != 0 {
			t.Fatalf("snapshot table offset %#x accepted", h.SnapshotsOffset)
		}
		if h.CryptMethod != 0 {
			t.Fatalf("encryption method %d accepted", h.CryptMethod)
		}
		if len(h.BackingFile) > 1023 {
			t.Fatalf("backing file name of %d bytes accepted", len(h.BackingFile))
		}
	})
}

// TestSeedImages checks the fuzz seeds against QEMU, so that they are
// known-good images the fuzzer starts from.
func TestSeedImages(t *testing.T) {
	paths, _ := filepath.Glob("testdata/*.qcow2")
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			c := openTop(t, p)
			for _, l := range c.Layers {
				checkLayer(t, l)
			}
		})
	}
}

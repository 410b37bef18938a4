package status_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// FuzzChain writes two fuzzed files as a backing chain, top.qcow2 over the
// file its header names, and does what a mount does with them: open the
// chain (confined to its directory, at most 8 layers), then for every
// layer compute the map and the allocation depth and read the bytes. None
// of it may panic, hang or allocate without bound; every error must be
// one of the package's errors naming a file; the map and the depth must
// tile the range they were asked for; and what the map calls zero must
// read as zero.
func FuzzChain(f *testing.F) {
	seeds, err := filepath.Glob("../layers/testdata/*.qcow2")
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed images in ../layers/testdata: %v", err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	// backing.qcow2 names v2.qcow2 (qcow2) as its backing file: put each
	// seed image under it, itself included (a loop).
	top := read("../layers/testdata/backing.qcow2")
	for _, p := range seeds {
		f.Add(top, read(p))
		f.Add(read(p), []byte(nil))
	}
	f.Add([]byte("a raw image, not qcow2"), []byte(nil))

	dir := f.TempDir()
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, top, base []byte) {
		clearDir(t, dir)
		topPath := filepath.Join(dir, "top.qcow2")
		write(t, topPath, top)
		write(t, filepath.Join(dir, backingName(top)), base)

		c, err := layers.Open(topPath, &layers.Options{Confine: dir, MaxDepth: 8, Log: log})
		if err != nil {
			checkChainErr(t, err, dir)
			return
		}
		defer c.Close()
		for i, l := range c.Layers {
			checkFuzzedLayer(t, l, len(c.Layers)-i)
			checkFuzzedInner(t, l, len(c.Layers)-i)
		}
	})
}

// checkFuzzedInner does for the first internal snapshots of a fuzzed
// layer what a mount does for their files (map, depth and bytes, as
// checkFuzzedLayer checks them), and renders its first persistent
// bitmaps, text and JSON, which must succeed but for a bitmap in use.
func checkFuzzedInner(t *testing.T, l *layers.Layer, chainLen int) {
	snaps := l.Snapshots()
	for i := range min(len(snaps), 2) {
		v, err := l.SnapshotLayer(i)
		if err != nil {
			checkLayerErr(t, "snapshot", err)
			continue
		}
		checkFuzzedLayer(t, v, chainLen)
	}
	bms := l.Bitmaps()
	for i := range min(len(bms), 2) {
		b := &bms[i]
		if l.Size/b.Granularity > 1<<22 {
			continue
		}
		for _, write := range []func(io.Writer, *layers.Bitmap) error{status.WriteBitmap, status.WriteBitmapJSON} {
			err := write(io.Discard, b)
			switch {
			case b.InUse():
				if !errors.Is(err, layers.ErrInconsistent) {
					t.Fatalf("bitmap %q in use: %v", b.Name, err)
				}
			case err != nil:
				checkLayerErr(t, "bitmap", err)
			}
		}
	}
}

// backingName is the file name top's header gives its backing file, when
// it is a plain name in the same directory; otherwise a name nothing
// refers to.
func backingName(top []byte) string {
	h, err := layers.DecodeHeader("top.qcow2", bytes.NewReader(top), int64(len(top)))
	if err != nil || h.BackingFile == "" || h.BackingFile == "top.qcow2" ||
		h.BackingFile != filepath.Base(h.BackingFile) || strings.HasPrefix(h.BackingFile, ".") ||
		strings.ContainsRune(h.BackingFile, 0) || len(h.BackingFile) > 255 {
		return "base.img"
	}
	return h.BackingFile
}

func clearDir(t *testing.T, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func write(t *testing.T, p string, b []byte) {
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkChainErr: an error opening a fuzzed chain is one of the package's,
// and names a file in dir.
func checkChainErr(t *testing.T, err error, dir string) {
	t.Helper()
	var pe *os.PathError
	known := errors.Is(err, layers.ErrCorrupt) || errors.Is(err, layers.ErrUnsupported) ||
		errors.Is(err, layers.ErrEncrypted) || errors.Is(err, layers.ErrChain) ||
		errors.Is(err, layers.ErrConfined) || errors.As(err, &pe)
	if !known || !strings.Contains(err.Error(), dir) {
		t.Fatalf("error %q (%T) is not one of the package's naming a file", err, err)
	}
}

// checkLayerErr: an error reading or mapping an opened layer is a
// *FormatError wrapping ErrCorrupt or ErrUnsupported.
func checkLayerErr(t *testing.T, what string, err error) {
	t.Helper()
	var fe *layers.FormatError
	if !errors.As(err, &fe) || !(errors.Is(err, layers.ErrCorrupt) || errors.Is(err, layers.ErrUnsupported)) {
		t.Fatalf("%s: error %q (%T) is not a corruption *FormatError", what, err, err)
	}
}

// fuzzWindow bounds the guest range mapped and read at the start and at
// the end of each layer, whatever the virtual size.
const fuzzWindow = 4 << 20

func checkFuzzedLayer(t *testing.T, l *layers.Layer, chainLen int) {
	ranges := [][2]int64{{0, min(l.Size, fuzzWindow)}}
	if l.Size > fuzzWindow {
		ranges = append(ranges, [2]int64{max(fuzzWindow, l.Size-fuzzWindow), l.Size})
	}
	for _, r := range ranges {
		var zero [][2]int64
		next := r[0]
		err := status.Map(l, r[0], r[1]-r[0], func(e status.Entry) error {
			if e.Start != next || e.Length <= 0 || e.End() > r[1] {
				t.Fatalf("layer %d: map entry %+v does not follow %#x within [%#x, %#x)", l.Index, e, next, r[0], r[1])
			}
			if e.Depth < 0 || e.Depth >= chainLen || (e.Data && !e.Present) {
				t.Fatalf("layer %d: map entry %+v", l.Index, e)
			}
			if e.Zero {
				zero = append(zero, [2]int64{e.Start, e.End()})
			}
			next = e.End()
			return nil
		})
		if err != nil {
			checkLayerErr(t, "map", err)
		} else if next != r[1] {
			t.Fatalf("layer %d: map of [%#x, %#x) ends at %#x", l.Index, r[0], r[1], next)
		}
		mapped := err == nil

		next = r[0]
		err = status.Depth(l, r[0], r[1]-r[0], func(e status.DepthExtent) error {
			if e.Offset != next || e.Length <= 0 || e.Offset+e.Length > r[1] || e.Depth < 0 || e.Depth > chainLen {
				t.Fatalf("layer %d: depth extent %+v after %#x within [%#x, %#x)", l.Index, e, next, r[0], r[1])
			}
			next = e.Offset + e.Length
			return nil
		})
		if err != nil {
			checkLayerErr(t, "depth", err)
		} else if next != r[1] {
			t.Fatalf("layer %d: depth of [%#x, %#x) ends at %#x", l.Index, r[0], r[1], next)
		}

		const chunk = 256 << 10
		buf := make([]byte, chunk)
		for off := r[0]; off < r[1]; off += chunk {
			n := min(chunk, r[1]-off)
			got, err := l.ReadAt(buf[:n], off)
			if err != nil && !(err == io.EOF && off+int64(got) == l.Size) {
				checkLayerErr(t, "read", err)
				continue
			}
			if int64(got) != n {
				t.Fatalf("layer %d: read of %d bytes at %#x returned %d", l.Index, n, off, got)
			}
			if !mapped {
				continue
			}
			for _, z := range zero {
				s, e := max(z[0], off), min(z[1], off+n)
				if s < e && !allZero(buf[s-off:e-off]) {
					t.Fatalf("layer %d: the map says [%#x, %#x) is zero; it reads otherwise", l.Index, z[0], z[1])
				}
			}
		}
	}
	if l.Size <= fuzzWindow {
		if err := status.WriteMapJSON(io.Discard, l); err != nil {
			checkLayerErr(t, "map.json", err)
		}
		if err := status.WriteDepth(io.Discard, l); err != nil {
			checkLayerErr(t, "depth", err)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

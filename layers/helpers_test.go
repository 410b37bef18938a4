package layers_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// img describes one image of a test chain, built bottom first in the
// row's directory.
type img struct {
	name   string
	format string
	size   int64    // bytes; 0 takes the backing file's size
	opts   []string // qemu-img create -o options
	cmds   []string // qemu-io commands run after creation
	// build, when set, makes the file instead of qemu-img create (cmds
	// and post still apply).
	build func(t *testing.T, dir, path string)
	post  []func(t *testing.T, path string)
}

func qcow2(name string, size int64, opts ...string) img {
	return img{name: name, format: "qcow2", size: size, opts: opts}
}

func raw(name string, size int64) img { return img{name: name, format: "raw", size: size} }

// rawBytes is a raw image holding exactly b.
func rawBytes(name string, b func() []byte) img {
	return img{name: name, format: "raw", build: func(t *testing.T, dir, path string) {
		if err := os.WriteFile(path, b(), 0o644); err != nil {
			t.Fatal(err)
		}
	}}
}

// on gives the image a backing file with a recorded format.
func (i img) on(backing, format string) img {
	i.opts = append(slices.Clip(i.opts), "backing_file="+backing, "backing_fmt="+format)
	return i
}

// io adds qemu-io commands.
func (i img) io(cmds ...string) img {
	i.cmds = append(slices.Clip(i.cmds), cmds...)
	return i
}

// then adds an edit made after the qemu-io commands.
func (i img) then(f ...func(t *testing.T, path string)) img {
	i.post = append(slices.Clip(i.post), f...)
	return i
}

// converted is an image made by `qemu-img convert -O qcow2 ARGS src dst`
// from a source image built in a scratch directory, so that the source is
// not part of the chain.
func converted(name string, src img, args ...string) img {
	return img{name: name, format: "qcow2", build: func(t *testing.T, dir, path string) {
		sdir := t.TempDir()
		s := makeImg(t, sdir, src)
		imagetest.QemuImg(t, append(append([]string{"convert", "-f", src.format, "-O", "qcow2"}, args...), s, path)...)
	}}
}

func makeImg(t *testing.T, dir string, i img) string {
	t.Helper()
	path := filepath.Join(dir, i.name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if i.build != nil {
		i.build(t, dir, path)
	} else {
		imagetest.Create(t, dir, i.name, i.format, i.size, i.opts...)
	}
	if len(i.cmds) > 0 {
		imagetest.QemuIO(t, i.format, path, i.cmds...)
	}
	for _, f := range i.post {
		f(t, path)
	}
	return path
}

// build makes the images of a chain, bottom first, and returns the path
// of the top.
func build(t *testing.T, dir string, chain []img) string {
	t.Helper()
	var top string
	for _, i := range chain {
		top = makeImg(t, dir, i)
	}
	return top
}

// testLog returns a logger whose records the recorder keeps.
func testLog() (*slog.Logger, *recorder) {
	r := &recorder{}
	return slog.New(r), r
}

// recorder is a slog.Handler that keeps every record.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// warnings returns the messages of the warnings and errors recorded.
func warnings(r *recorder) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var w []string
	for _, rec := range r.records {
		if rec.Level >= slog.LevelWarn {
			w = append(w, rec.Message)
		}
	}
	return w
}

// checkLayer compares everything l.ReadAt returns with what QEMU reads
// (qemu-img convert -O raw of the layer, with its backing chain): the
// whole layer in one read, a read past the end, and random reads, from
// two goroutines at once, that start and end on and around cluster,
// L2-table and end-of-image boundaries.
func checkLayer(t *testing.T, l *layers.Layer) {
	t.Helper()
	want := imagetest.ConvertRaw(t, l.Path, l.Format.String())
	if newer := imagetest.Backports().ConvertRaw(t, l.Path, l.Format.String()); !bytes.Equal(newer, want) {
		t.Fatalf("layer %d (%s): %s and %s convert it differently", l.Index, l.Path, imagetest.System.Name(t), imagetest.Backports().Name(t))
	}
	checkReads(t, l, want)
}

// checkReads compares everything l.ReadAt returns with want, what QEMU
// reads: see checkLayer.
func checkReads(t *testing.T, l *layers.Layer, want []byte) {
	t.Helper()
	if l.Size != int64(len(want)) {
		t.Fatalf("layer %d (%s): Size %d, QEMU reads %d bytes", l.Index, l.Path, l.Size, len(want))
	}
	got := make([]byte, l.Size+1000)
	n, err := l.ReadAt(got, 0)
	if n != len(want) || err != io.EOF {
		t.Fatalf("layer %d (%s): ReadAt(%d bytes, 0) = %d, %v; want %d, EOF", l.Index, l.Path, len(got), n, err, len(want))
	}
	if i := firstDiff(got[:n], want); i >= 0 {
		t.Fatalf("layer %d (%s): whole read differs from QEMU first at %#x: got %#x, want %#x",
			l.Index, l.Path, i, got[i], want[i])
	}
	if l.Size == 0 {
		return
	}
	if n, err := l.ReadAt(got[:len(want)], 0); n != len(want) || err != nil {
		t.Fatalf("layer %d: exact whole read = %d, %v", l.Index, n, err)
	}
	if n, err := l.ReadAt(got[:1], l.Size); n != 0 || err != io.EOF {
		t.Fatalf("layer %d: read at Size = %d, %v; want 0, EOF", l.Index, n, err)
	}

	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(l.Index), uint64(g)))
			for range 30 {
				off, length := randomRead(rng, l)
				buf := make([]byte, length)
				n, err := l.ReadAt(buf, off)
				wantN := min(length, l.Size-off)
				wantErr := error(nil)
				if wantN < length {
					wantErr = io.EOF
				}
				if int64(n) != wantN || err != wantErr {
					errs <- fmt.Sprintf("ReadAt(%d bytes, %#x) = %d, %v; want %d, %v", length, off, n, err, wantN, wantErr)
					return
				}
				if i := firstDiff(buf[:n], want[off:off+wantN]); i >= 0 {
					errs <- fmt.Sprintf("ReadAt(%d bytes, %#x) differs from QEMU at %#x: got %#x, want %#x",
						length, off, off+int64(i), buf[i], want[off+int64(i)])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("layer %d (%s): %s", l.Index, l.Path, e)
	}
}

// randomRead picks a read that starts near a boundary (a cluster, an L2
// table's span, a subcluster, the end of the image) and spans a random
// length from 1 byte to a few clusters.
func randomRead(rng *rand.Rand, l *layers.Layer) (off, length int64) {
	cs := l.ClusterSize
	bounds := []int64{cs, cs / 32, 512}
	if l.Header != nil {
		entry := int64(8)
		if l.Header.ExtendedL2() {
			entry = 16
		}
		bounds = append(bounds, cs*(cs/entry))
	}
	switch rng.IntN(5) {
	case 0: // anywhere
		off = rng.Int64N(l.Size)
	case 1: // around the end, possibly reading past it
		off = max(0, l.Size-1-rng.Int64N(min(l.Size, 3*cs)))
	default: // around a boundary
		b := max(bounds[rng.IntN(len(bounds))], 1)
		k := rng.Int64N(l.Size/b + 1)
		off = k*b + rng.Int64N(1025) - 512
		off = min(max(off, 0), l.Size-1)
	}
	switch rng.IntN(4) {
	case 0:
		length = 1 + rng.Int64N(16)
	case 1:
		length = 1 + rng.Int64N(2*cs)
	case 2:
		length = 1 + rng.Int64N(min(4*cs, 8*MiB))
	default:
		length = 1 + rng.Int64N(64*KiB)
	}
	return off, length
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkStatusAgainstMap checks Layer.Status against `qemu-img map` of the
// layer, wherever QEMU says the layer itself decides (depth 0): data at
// the same host offset, zero with or without one, compressed data without
// one; and that ranges QEMU finds below the layer are unallocated in it.
func checkStatusAgainstMap(t *testing.T, l *layers.Layer) {
	t.Helper()
	checkStatusAgainst(t, l, imagetest.QemuMap(t, l.Path, l.Format.String()))
}

// checkStatusAgainst is checkStatusAgainstMap with the map entries given.
func checkStatusAgainst(t *testing.T, l *layers.Layer, entries []imagetest.MapEntry) {
	t.Helper()
	for _, e := range entries {
		exts, err := l.Status(nil, e.Start, e.Length)
		if err != nil {
			t.Fatalf("layer %d (%s): Status(%#x, %#x): %v", l.Index, l.Path, e.Start, e.Length, err)
		}
		if err := coversExactly(exts, e.Start, e.Length); err != nil {
			t.Fatalf("layer %d (%s): Status(%#x, %#x): %v", l.Index, l.Path, e.Start, e.Length, err)
		}
		for _, x := range exts {
			if msg := mapMismatch(l, e, x); msg != "" {
				t.Errorf("layer %d (%s): qemu-img map entry %+v (offset %s), Status extent %+v: %s",
					l.Index, l.Path, e, fmtOffset(e.Offset), x, msg)
			}
		}
	}
}

func fmtOffset(p *int64) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("%#x", *p)
}

func coversExactly(exts []layers.Extent, off, length int64) error {
	at := off
	for _, x := range exts {
		if x.Offset != at || x.Length <= 0 {
			return fmt.Errorf("extent %+v does not start at %#x", x, at)
		}
		at = x.End()
	}
	if at != off+length {
		return fmt.Errorf("extents end at %#x, not %#x", at, off+length)
	}
	return nil
}

func mapMismatch(l *layers.Layer, e imagetest.MapEntry, x layers.Extent) string {
	if e.Depth > 0 || !e.Present {
		if x.Kind != layers.Unallocated {
			return "QEMU reads this range from below the layer, Status says it is allocated"
		}
		return ""
	}
	hostOK := func() string {
		if e.Offset == nil {
			if x.HasHostOffset() {
				return "QEMU gives no host offset, Status does"
			}
			return ""
		}
		if !x.HasHostOffset() {
			return "QEMU gives a host offset, Status does not"
		}
		if want := *e.Offset + (x.Offset - e.Start); x.HostOffset != want {
			return fmt.Sprintf("host offset %#x, QEMU says %#x", x.HostOffset, want)
		}
		return ""
	}
	switch {
	case e.Data && !e.Zero:
		if x.Kind == layers.Compressed {
			if e.Offset != nil {
				return "QEMU gives a host offset for a compressed cluster"
			}
			return ""
		}
		if x.Kind != layers.Data {
			return "QEMU reports data"
		}
		return hostOK()
	case e.Zero && !e.Data:
		if x.Kind == layers.Data && x.File != nil && hole(x) {
			return hostOK() // a data cluster on a host hole reads as zero
		}
		if x.Kind != layers.Zero {
			return "QEMU reports zero"
		}
		return hostOK()
	case e.Zero && e.Data:
		if x.Kind != layers.Data {
			return "QEMU reports data reading as zero"
		}
		return hostOK()
	}
	return "unexpected map entry"
}

// hole reports whether the host range of x is a hole of its file.
func hole(x layers.Extent) bool {
	data, n, err := x.File.Allocation(x.HostOffset, x.Length)
	return err == nil && !data && n >= x.Length
}

// header edits ------------------------------------------------------------

// setIncompat ORs bits into the incompatible features of a v3 image.
func setIncompat(bits uint64) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		imagetest.PatchBE64(t, path, 72, imagetest.ReadBE64(t, path, 72)|bits)
	}
}

// findExtension returns the file offset of the header extension of type
// typ (its type word), or -1.
func findExtension(t *testing.T, path string, typ uint32) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	off := int64(72)
	if be.Uint32(b[4:]) >= 3 {
		off = int64(be.Uint32(b[100:]))
	}
	for off+8 <= int64(len(b)) {
		et, n := be.Uint32(b[off:]), int64(be.Uint32(b[off+4:]))
		if et == 0 {
			return -1
		}
		if et == typ {
			return off
		}
		off += 8 + (n+7)&^7
	}
	return -1
}

// dropBackingFormat turns the backing-format header extension into an
// unknown one, as if the image had been made without -F.
func dropBackingFormat(t *testing.T, path string) {
	off := findExtension(t, path, 0xe2792aca)
	if off < 0 {
		t.Fatalf("%s: no backing format extension", path)
	}
	imagetest.PatchBE32(t, path, off, 0x7e577e57)
}

// renameFeature rewrites the feature-name table entry of incompatible bit
// from as bit to, named name.
func renameFeature(from, to uint8, name string) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		off := findExtension(t, path, 0x6803f857)
		if off < 0 {
			t.Fatalf("%s: no feature name table", path)
		}
		n := int64(imagetest.ReadBE32(t, path, off+4))
		f, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for e := off + 8; e+48 <= off+8+n; e += 48 {
			if f[e] == 0 && f[e+1] == from {
				entry := make([]byte, 48)
				entry[1] = to
				copy(entry[2:], name)
				imagetest.Patch(t, path, e, entry)
				return
			}
		}
		t.Fatalf("%s: feature name table has no incompatible bit %d", path, from)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

func mustIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v: want errors.Is(err, %v)", err, target)
	}
}

func contains(t *testing.T, err error, want ...string) {
	t.Helper()
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Fatalf("error %v: want it to contain %q", err, w)
		}
	}
}

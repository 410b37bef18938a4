// Package qemudiff holds an image up against QEMU's own tools, for tests of
// damaged and hostile images: does it open, which 512-byte sectors of its
// guest view read and what they hold, what `qemu-img map` prints for it and
// what `nbdinfo --map=qemu:allocation-depth` prints against `qemu-nbd -A`
// serving it; asked of chainfs (packages layers and status) and of a QEMU,
// and compared.
//
// QEMU's side comes from `qemu-img convert --salvage`, which reads past
// failed reads sector by sector and names each sector it could not read, so
// "where QEMU reads" is known exactly, not guessed from a first error.
package qemudiff

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// MaxBytes bounds the guest views compared byte by byte: a mutated header
// can make a small file a disk of terabytes. Larger views are compared by
// verdict, map and depth only.
const MaxBytes = 64 << 20

const sector = 512

// View is one side's answer about an image (its top layer, with its
// backing chain).
type View struct {
	Opened  bool
	OpenErr string
	// Size is the virtual size; Data the guest view (zero where a read
	// failed), nil when Size exceeds MaxBytes; Failed the sectors whose
	// read failed, by offset, in order.
	Size   int64
	Data   []byte
	Failed []int64
	// Map and Depth are the rendered map and allocation depth; MapErr and
	// DepthErr say why one failed ("" when it did not).
	Map, MapErr     string
	Depth, DepthErr string
}

// Chainfs is chainfs's answer for the image at path opened with opts, and
// the damage it noticed on the way (after reading everything, so every
// table the view needs was looked at).
func Chainfs(path string, opts layers.Options) (View, layers.DamageCounts) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var v View
	c, err := layers.Open(path, &opts)
	if err != nil {
		v.OpenErr = err.Error()
		return v, layers.DamageCounts{}
	}
	defer c.Close()
	l := c.Top()
	v.Opened, v.Size = true, l.Size
	if l.Size <= MaxBytes {
		v.Data, v.Failed = readAll(l)
	}
	var m, d bytes.Buffer
	if err := status.WriteMapJSON(&m, l); err != nil {
		v.MapErr = err.Error()
	} else {
		v.Map = m.String()
	}
	if err := status.WriteDepth(&d, l); err != nil {
		v.DepthErr = err.Error()
	} else {
		v.Depth = d.String()
	}
	return v, l.Damage()
}

// readAll reads l in 64 KiB pieces, and a piece that fails sector by
// sector, as qemu-img convert --salvage does.
func readAll(l *layers.Layer) ([]byte, []int64) {
	data := make([]byte, l.Size)
	var failed []int64
	const piece = 64 << 10
	for off := int64(0); off < l.Size; off += piece {
		p := data[off:min(off+piece, l.Size)]
		if _, err := l.ReadAt(p, off); err == nil || err == io.EOF {
			continue
		}
		for s := off; s < off+int64(len(p)); s += sector {
			if _, err := l.ReadAt(data[s:s+sector], s); err != nil && err != io.EOF {
				clear(data[s : s+sector])
				failed = append(failed, s)
			}
		}
	}
	return data, failed
}

// QEMU is q's answer for the image at path, opened with format. size is
// chainfs's idea of the virtual size (0 when chainfs refused the image),
// which decides, until QEMU's map says otherwise, whether the guest view
// is small enough to compare byte by byte.
func QEMU(t testing.TB, q imagetest.QEMU, path, format string, size int64) View {
	t.Helper()
	var v View
	// qemu-img map opens the image and its chain as convert does, and
	// prints "[" before its first block-status query: nothing on stdout
	// means QEMU refused the image.
	stdout, stderr, err := q.MapJSONErr(t, path, format)
	if err != nil && !strings.HasPrefix(stdout, "[") {
		v.OpenErr = strings.TrimSpace(stderr)
		return v
	}
	v.Opened, v.Size = true, size
	v.Map, v.MapErr = mapResult(stdout, stderr, err)
	if err == nil {
		v.Size = mapEnd(t, stdout)
	}
	if v.Size <= MaxBytes && (err == nil || size > 0) {
		s := q.ConvertSalvage(t, path, format)
		if s.Err != nil {
			return View{OpenErr: "qemu-img convert: " + strings.TrimSpace(s.Stderr)}
		}
		v.Size, v.Data, v.Failed = int64(len(s.Data)), s.Data, s.Failed
	}
	depth, err := q.NBDDepthErr(t, path, format)
	if err != nil {
		v.DepthErr = err.Error()
	} else {
		v.Depth = depth
	}
	return v
}

// mapEnd returns where the last entry of a qemu-img map ends: the virtual
// size.
func mapEnd(t testing.TB, mapJSON string) int64 {
	var m []imagetest.MapEntry
	if err := json.Unmarshal([]byte(mapJSON), &m); err != nil {
		t.Fatalf("qemu-img map printed no JSON: %v\n%s", err, mapJSON)
	}
	if len(m) == 0 {
		return 0
	}
	return m[len(m)-1].Start + m[len(m)-1].Length
}

func mapResult(stdout, stderr string, err error) (string, string) {
	if err != nil {
		return "", fmt.Sprintf("%v: %s", err, strings.TrimSpace(stderr))
	}
	return stdout, ""
}

// Differences lists how chainfs's answer got differs from want, q's: the
// verdict at open; and where both opened, the virtual size, the sectors
// that fail to read, the bytes where both read, whether the map and the
// depth fail, and their text where neither does. Nil means none.
func Differences(t testing.TB, q imagetest.QEMU, got, want View) []string {
	t.Helper()
	var d []string
	name := q.Name(t)
	if got.Opened != want.Opened {
		return []string{fmt.Sprintf("open: chainfs %s, %s %s", verdict(got), name, verdict(want))}
	}
	if !got.Opened {
		return nil
	}
	if got.Size != want.Size {
		d = append(d, fmt.Sprintf("virtual size: chainfs %d, %s %d", got.Size, name, want.Size))
	}
	if got.Data != nil && want.Data != nil && got.Size == want.Size {
		if !slices.Equal(got.Failed, want.Failed) {
			d = append(d, fmt.Sprintf("sectors that fail to read: chainfs %s, %s %s", ranges(got.Failed), name, ranges(want.Failed)))
		}
		if i := firstDiff(got.Data, want.Data, got.Failed, want.Failed); i >= 0 {
			d = append(d, fmt.Sprintf("bytes differ first at %#x: chainfs %#02x, %s %#02x", i, got.Data[i], name, want.Data[i]))
		}
	}
	switch {
	case (got.MapErr == "") != (want.MapErr == ""):
		d = append(d, fmt.Sprintf("map: chainfs %s, %s %s", failed(got.MapErr), name, failed(want.MapErr)))
	case got.MapErr == "":
		if ours := q.AsPrinted(t, got.Map); ours != want.Map {
			d = append(d, fmt.Sprintf("map differs:\n%s", imagetest.LineDiff(ours, want.Map)))
		}
	}
	switch {
	case (got.DepthErr == "") != (want.DepthErr == ""):
		d = append(d, fmt.Sprintf("depth: chainfs %s, %s %s", failed(got.DepthErr), name, failed(want.DepthErr)))
	case got.DepthErr == "" && got.Depth != want.Depth:
		d = append(d, fmt.Sprintf("depth differs:\n%s", imagetest.LineDiff(got.Depth, want.Depth)))
	}
	return d
}

// StrictDifferences checks strict mode against the default on one image:
// strict refuses or fails at least what the default does, reads the same
// bytes wherever it reads, and, when the default noticed no damage at all,
// gives exactly the default's answer.
func StrictDifferences(def, strict View, damage layers.DamageCounts) []string {
	var d []string
	if !def.Opened {
		if strict.Opened {
			d = append(d, "strict mode opens an image the default refuses")
		}
		return d
	}
	if damage.Total() == 0 {
		if strict.Opened != def.Opened || !slices.Equal(strict.Failed, def.Failed) || !bytes.Equal(strict.Data, def.Data) ||
			strict.Map != def.Map || strict.MapErr != def.MapErr || strict.Depth != def.Depth || strict.DepthErr != def.DepthErr {
			d = append(d, "no damage noticed, yet strict mode answers differently")
		}
		return d
	}
	if !strict.Opened || strict.Data == nil {
		return d
	}
	for _, s := range def.Failed {
		if _, ok := slices.BinarySearch(strict.Failed, s); !ok {
			d = append(d, fmt.Sprintf("sector %#x fails by default but reads in strict mode", s))
			break
		}
	}
	if i := firstDiff(strict.Data, def.Data, strict.Failed, def.Failed); i >= 0 {
		d = append(d, fmt.Sprintf("strict mode reads other bytes than the default at %#x", i))
	}
	if strict.MapErr == "" && def.MapErr == "" && strict.Map != def.Map {
		d = append(d, "strict mode maps the image otherwise than the default")
	}
	if strict.MapErr == "" && def.MapErr != "" {
		d = append(d, "the map fails by default but not in strict mode")
	}
	return d
}

// firstDiff returns the first offset where a and b differ outside the
// failed sectors of either, or -1.
func firstDiff(a, b []byte, fa, fb []int64) int64 {
	if bytes.Equal(a, b) {
		return -1
	}
	n := int64(min(len(a), len(b)))
	for s := int64(0); s < n; s += sector {
		e := min(s+sector, n)
		if bytes.Equal(a[s:e], b[s:e]) {
			continue
		}
		if _, ok := slices.BinarySearch(fa, s); ok {
			continue
		}
		if _, ok := slices.BinarySearch(fb, s); ok {
			continue
		}
		for i := s; i < e; i++ {
			if a[i] != b[i] {
				return i
			}
		}
	}
	return -1
}

// ranges prints sector offsets as merged ranges.
func ranges(secs []int64) string {
	if len(secs) == 0 {
		return "none"
	}
	var b strings.Builder
	start, end := secs[0], secs[0]+sector
	flush := func() { fmt.Fprintf(&b, "[%#x, %#x) ", start, end) }
	for _, s := range secs[1:] {
		if s == end {
			end += sector
			continue
		}
		flush()
		start, end = s, s+sector
	}
	flush()
	return strings.TrimSpace(b.String())
}

func verdict(v View) string {
	if v.Opened {
		return "opens it"
	}
	return "refuses it (" + firstLine(v.OpenErr) + ")"
}

func failed(err string) string {
	if err == "" {
		return "succeeds"
	}
	return "fails (" + firstLine(err) + ")"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// Result is one image held against chainfs (default and strict) and every
// QEMU.
type Result struct {
	Default, Strict View
	Damage          layers.DamageCounts
	QEMU            []View
	// Differences from each QEMU (indexed like Oracles) and between
	// strict mode and the default.
	Diffs       [][]string
	StrictDiffs []string
}

// Same reports whether chainfs agreed with every QEMU and with itself.
func (r *Result) Same() bool {
	for _, d := range r.Diffs {
		if len(d) > 0 {
			return false
		}
	}
	return len(r.StrictDiffs) == 0
}

// Report prints every difference, one per line.
func (r *Result) Report(t testing.TB, qs []imagetest.QEMU) string {
	var b strings.Builder
	for i, d := range r.Diffs {
		for _, x := range d {
			fmt.Fprintf(&b, "%s: %s\n", qs[i].Name(t), x)
		}
	}
	for _, x := range r.StrictDiffs {
		fmt.Fprintf(&b, "strict: %s\n", x)
	}
	return b.String()
}

// Compare opens the image at path with format ("qcow2" or "raw") in
// chainfs, by default and strict, and in each QEMU of qs, and compares.
func Compare(t testing.TB, qs []imagetest.QEMU, path, format string, log *slog.Logger) *Result {
	t.Helper()
	f, err := layers.ParseFormat(format)
	if err != nil {
		t.Fatal(err)
	}
	r := &Result{}
	r.Default, r.Damage = Chainfs(path, layers.Options{Format: f, Log: log})
	r.Strict, _ = Chainfs(path, layers.Options{Format: f, Strict: true})
	size := r.Default.Size
	for _, q := range qs {
		w := QEMU(t, q, path, format, size)
		r.QEMU = append(r.QEMU, w)
		r.Diffs = append(r.Diffs, Differences(t, q, r.Default, w))
	}
	r.StrictDiffs = StrictDifferences(r.Default, r.Strict, r.Damage)
	return r
}

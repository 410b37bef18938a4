package imagetest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Helpers for images QEMU may refuse or read only in part: each returns
// what the tool printed and whether it failed, instead of failing the test.

// Salvaged is what `qemu-img convert --salvage -O raw` made of an image.
type Salvaged struct {
	// Err is set when QEMU refused the image (it could not open it, or
	// its backing chain); Stderr says why.
	Err    error
	Stderr string
	// Data is the guest view, with zeroes where reads failed.
	Data []byte
	// Failed lists the 512-byte sectors whose read failed, by guest
	// offset, in order.
	Failed []int64
}

var salvageRE = regexp.MustCompile(`error while reading offset (\d+):`)

// ConvertSalvage runs `qemu-img convert --salvage -O raw -f format path
// OUT` in path's directory. With --salvage QEMU goes on past a failed read,
// retrying the range sector by sector, writing zeroes for each sector it
// cannot read and naming it on stderr: so Data and Failed say exactly
// where QEMU reads and what.
func (q QEMU) ConvertSalvage(t testing.TB, path, format string) Salvaged {
	t.Helper()
	out := filepath.Join(t.TempDir(), "salvaged.raw")
	abs, dir := abs(t, path)
	_, stderr, err := q.ImgErr(t, dir, "convert", "--salvage", "-f", format, "-O", "raw", abs, out)
	s := Salvaged{Err: err, Stderr: stderr}
	if err != nil {
		return s
	}
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		t.Fatal(rerr)
	}
	os.Remove(out)
	s.Data = b
	for _, m := range salvageRE.FindAllStringSubmatch(stderr, -1) {
		off, _ := strconv.ParseInt(m[1], 10, 64)
		s.Failed = append(s.Failed, off)
	}
	slices.Sort(s.Failed)
	s.Failed = slices.Compact(s.Failed)
	return s
}

// MapJSONErr runs `qemu-img map --output=json -f format path`, which may
// fail: it returns stdout (what qemu-img printed before failing, if it
// did), stderr and the error.
func (q QEMU) MapJSONErr(t testing.TB, path, format string) (stdout, stderr string, err error) {
	t.Helper()
	abs, dir := abs(t, path)
	return q.ImgErr(t, dir, "map", "--output=json", "-f", format, abs)
}

// NBDDepthErr is NBDDepth for an image that qemu-nbd may refuse to serve
// or whose block status may fail: it returns nbdinfo's stdout, or an error
// saying which tool failed and why.
func (q QEMU) NBDDepthErr(t testing.TB, path, format string) (string, error) {
	t.Helper()
	uri, stop, err := q.TryServeNBD(t, path, format, "-A")
	if err != nil {
		return "", err
	}
	defer stop()
	stdout, stderr, err := RunErr(t, "", "nbdinfo", "--map=qemu:allocation-depth", uri)
	if err != nil {
		return stdout, fmt.Errorf("nbdinfo: %v: %s", err, strings.TrimSpace(stderr))
	}
	return stdout, nil
}

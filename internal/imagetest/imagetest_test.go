package imagetest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelpers(t *testing.T) {
	Need(t)
	dir := t.TempDir()
	base := Create(t, dir, "base.qcow2", "qcow2", 1<<20, "cluster_size=4096")
	QemuIO(t, "qcow2", base, "write -P 0x11 0 8k", "write -z 64k 4k")
	top := Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
	QemuIO(t, "qcow2", top, "write -P 0x22 4k 4k")

	raw := ConvertRaw(t, top, "qcow2")
	if len(raw) != 1<<20 {
		t.Fatalf("converted %d bytes, want %d", len(raw), 1<<20)
	}
	want := make([]byte, 1<<20)
	copy(want, bytes.Repeat([]byte{0x11}, 4096))
	copy(want[4096:], bytes.Repeat([]byte{0x22}, 4096))
	if !bytes.Equal(raw, want) {
		t.Fatal("converted image differs from what was written")
	}

	m := QemuMap(t, top, "qcow2")
	if len(m) == 0 || m[0].Start != 0 || !m[0].Data || m[0].Depth != 0 || m[0].Offset == nil {
		t.Fatalf("qemu-img map: %+v", m)
	}

	depth := NBDDepth(t, top, "qcow2", false)
	if !strings.Contains(depth, "local") || !strings.Contains(depth, "backing depth 2") {
		t.Fatalf("allocation depth:\n%s", depth)
	}
	js := NBDDepth(t, top, "qcow2", true)
	if !strings.HasPrefix(strings.TrimSpace(js), "[") {
		t.Fatalf("allocation depth json:\n%s", js)
	}
	// The 4 KiB write into top copied up its whole 64 KiB cluster.
	// Every server is gone: no qemu-nbd names our sockets.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("qemu-nbd")) && bytes.Contains(b, []byte(top)) {
			t.Errorf("qemu-nbd still running: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}

	if _, stderr, err := RunErr(t, "", "qemu-img", "info", filepath.Join(dir, "missing")); err == nil || stderr == "" {
		t.Fatalf("qemu-img info of a missing file: err %v, stderr %q", err, stderr)
	}

	PatchBE32(t, top, 4, 3)
	if v := ReadBE32(t, top, 4); v != 3 {
		t.Fatalf("version after patch: %d", v)
	}
}

// TestOracles: both QEMUs are there, the backports one prints the map's
// "compressed" key and the system's does not, and AsPrinted turns the
// current format into what each prints.
func TestOracles(t *testing.T) {
	dir := t.TempDir()
	img := Create(t, dir, "c.qcow2", "qcow2", 1<<20)
	QemuIO(t, "qcow2", img, "write -c -P 0x5 0 64k")
	qs := Oracles(t)
	if len(qs) != 2 {
		t.Fatalf("%d oracles", len(qs))
	}
	for _, q := range qs {
		out := q.MapJSON(t, img, "qcow2")
		if got := strings.Contains(out, `"compressed": true`); got != q.PrintsCompressed(t) {
			t.Errorf("%s: map prints compressed %v, PrintsCompressed says %v:\n%s", q.Name(t), got, q.PrintsCompressed(t), out)
		}
		current := Backports().MapJSON(t, img, "qcow2")
		if q.AsPrinted(t, current) != out {
			t.Errorf("%s: AsPrinted(upstream map) = %q, QEMU prints %q", q.Name(t), q.AsPrinted(t, current), out)
		}
	}
	if major, _ := Backports().Version(t); major < 10 {
		t.Errorf("the backports QEMU is %s, want 10.0 or later", Backports().Name(t))
	}
}

package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// QEMU's image locking, both ways, against the real qemu-io and qemu-img
// (TestLockedImage in lifecycle_test.go has the first refusal and the
// --force-share mounts).

// qemuIOErr runs qemu-io with args on image, in the image's directory
// (QEMU 7.2 resolves data file names against the working directory), and
// returns its output and exit error.
func qemuIOErr(t *testing.T, image string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("qemu-io", append(args, image)...)
	cmd.Dir = filepath.Dir(image)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestLocksHeldWhileMounted: while a chain is mounted, no file of it (the
// top, a backing qcow2, a raw base, an external data file) can be opened
// for writing by qemu-io, which fails with QEMU's lock message; qemu-img
// info, which only reads, works; once unmounted the files are free again.
func TestLocksHeldWhileMounted(t *testing.T) {
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
	mid := imagetest.Create(t, dir, "mid.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.QemuIO(t, "qcow2", mid, "write -P 0x22 64k 64k")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=mid.qcow2", "backing_fmt=qcow2", "data_file=top.data")
	imagetest.QemuIO(t, "qcow2", top, "write -P 0x33 128k 64k")
	data := filepath.Join(dir, "top.data")

	mnt := mount(t, top)
	files := []struct{ path, format string }{{top, "qcow2"}, {mid, "qcow2"}, {base, "raw"}, {data, "raw"}}
	for _, f := range files {
		out, err := qemuIOErr(t, f.path, "-f", f.format, "-c", "write -P 0x44 0 4k")
		if err == nil || !strings.Contains(out, `Failed to get "write" lock`) {
			t.Errorf("qemu-io write to %s while mounted: %v, %q; want QEMU's write lock failure", filepath.Base(f.path), err, out)
		}
		if out, stderr, err := imagetest.RunErr(t, dir, "qemu-img", "info", "-f", f.format, f.path); err != nil {
			t.Errorf("qemu-img info %s while mounted: %v: %s", filepath.Base(f.path), err, stderr)
		} else if !strings.Contains(out, "virtual size") {
			t.Errorf("qemu-img info %s: %s", filepath.Base(f.path), out)
		}
	}
	// The mount still reads what it read before.
	b, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2.raw"))
	if err != nil || b[0] != 0x11 || b[64<<10] != 0x22 || b[128<<10] != 0x33 {
		t.Errorf("reading the mount after the attempts: %v", err)
	}

	unmount(t, mnt)
	// Free again: qemu-io opens every file read-write. The raw base gets
	// the bytes it already holds, so the byte comparison at cleanup still
	// proves that chainfs wrote nothing.
	if out, err := qemuIOErr(t, base, "-f", "raw", "-c", "write -P 0x11 0 4k"); err != nil || strings.Contains(out, "lock") {
		t.Errorf("qemu-io write to base.raw after unmount: %v, %q", err, out)
	}
	for _, f := range files[:2] {
		if out, err := qemuIOErr(t, f.path, "-f", f.format, "-c", "read 0 4k"); err != nil || strings.Contains(out, "lock") {
			t.Errorf("qemu-io (read-write open) of %s after unmount: %v, %q", filepath.Base(f.path), err, out)
		}
	}
}

// TestMountRefusedWhileBackingWritten: a VM writing to a backing file (a
// commit, a stream job: here qemu-io holding it read-write) makes the
// chain unmountable with QEMU's message naming that file; the commands
// that only read the chain refuse too; -U mounts it anyway.
func TestMountRefusedWhileBackingWritten(t *testing.T) {
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1<<20)
	imagetest.QemuIO(t, "qcow2", base, "write -P 0x11 0 64k")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")

	writer := exec.Command("qemu-io", "-f", "qcow2", base)
	stdin, err := writer.StdinPipe() // qemu-io waits for commands as long as the pipe is open
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); writer.Wait() })
	if !waitFor(10*time.Second, func() bool { return holdsWriteLock(t, base) }) {
		t.Fatal("qemu-io never locked base.qcow2")
	}

	want := base + `: Failed to get shared "write" lock: is another process using the image?`
	mnt := newMountpoint(t)
	out, code := chainfs(t, "mount", "--log-file", filepath.Join(t.TempDir(), "log"), top, mnt)
	if code != 3 || strings.TrimSpace(out) != "chainfs: "+want {
		t.Errorf("mount while the backing file is written: exit %d, %q; want 3 and %q", code, out, want)
	}
	if _, ok := mountOf(mnt); ok {
		t.Error("mounted anyway")
		unmount(t, mnt)
	}
	for _, cmd := range []string{"info", "map", "depth"} {
		if out, code := chainfs(t, cmd, top); code != 3 || !strings.Contains(out, want) {
			t.Errorf("chainfs %s while the backing file is written: exit %d, %q", cmd, code, out)
		}
	}
	mnt = mount(t, top, "-U")
	b, err := os.ReadFile(filepath.Join(mnt, "1-base.qcow2.raw"))
	if err != nil || b[0] != 0x11 {
		t.Errorf("reading the -U mount: %v", err)
	}
}

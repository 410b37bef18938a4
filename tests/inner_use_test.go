package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// writeTree makes the files of m (path: content) under dir.
func writeTree(t *testing.T, dir string, m map[string]string) {
	t.Helper()
	for p, content := range m {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSnapshotLoopMount is the first use the issue names: get a file back
// out of last week's snapshot. A VM disk holds an ext4 file system (made
// with mke2fs -d, no mount needed); a snapshot is taken, the file system
// is then upgraded in place. Loop-mounting 0-vm.qcow2@before upgrade.raw
// finds the file as it was, and 0-vm.qcow2.raw as it is.
func TestSnapshotLoopMount(t *testing.T) {
	for _, tool := range []string{"mke2fs", "losetup", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (e2fsprogs, util-linux): run tests/install-deps.sh", tool)
		}
	}
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "v1"), filepath.Join(dir, "v2")
	writeTree(t, v1, map[string]string{"etc/app.conf": "version = 1\n", "home/notes.txt": "unchanged\n"})
	writeTree(t, v2, map[string]string{"etc/app.conf": "version = 2\n", "home/notes.txt": "unchanged\n", "new.txt": "added later\n"})
	fs1, fs2 := filepath.Join(dir, "fs1.raw"), filepath.Join(dir, "fs2.raw")
	run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", v1, fs1, "16M")
	run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", v2, fs2, "16M")
	vm := filepath.Join(dir, "vm.qcow2")
	imagetest.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", fs1, vm)
	imagetest.Snapshot(t, vm, "before upgrade")
	imagetest.QemuImg(t, "convert", "-n", "-f", "raw", "-O", "qcow2", fs2, vm)

	mnt := mount(t, vm)
	for _, r := range []struct {
		file, conf string
		hasNew     bool
	}{
		{"0-vm.qcow2@before upgrade.raw", "version = 1\n", false},
		{"0-vm.qcow2.raw", "version = 2\n", true},
	} {
		dev := strings.TrimSpace(run(t, "losetup", "-r", "-f", "--show", filepath.Join(mnt, r.file)))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		fsMnt := filepath.Join(t.TempDir(), "fs")
		if err := os.Mkdir(fsMnt, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "mount", "-t", "ext4", "-o", "ro,noload", dev, fsMnt)
		conf, err := os.ReadFile(filepath.Join(fsMnt, "etc/app.conf"))
		notes, _ := os.ReadFile(filepath.Join(fsMnt, "home/notes.txt"))
		_, newErr := os.Stat(filepath.Join(fsMnt, "new.txt"))
		run(t, "umount", fsMnt)
		run(t, "losetup", "-d", dev)
		if err != nil || string(conf) != r.conf || string(notes) != "unchanged\n" || (newErr == nil) != r.hasNew {
			t.Errorf("%s: etc/app.conf %q (%v), home/notes.txt %q, new.txt there: %v; want %q, %v", r.file, conf, err, notes, newErr == nil, r.conf, r.hasNew)
		}
	}
}

// TestIncrementalBackupWithBitmap is the second use: an incremental backup
// as backup tools make it from qemu-nbd -B and nbdinfo, here from plain
// files. A bitmap is added when the full backup is taken; the VM then
// writes, zeroes, discards and compresses. Parsing 0-vm.qcow2.since-full.bitmap
// as Proxmox parses nbdinfo's map (lines matching ^\s*(\d+)\s*(\d+)\s*(\d+),
// type & 1 dirty) and copying those ranges of 0-vm.qcow2.raw onto the full
// backup reproduces the current disk, while copying a small part of it.
func TestIncrementalBackupWithBitmap(t *testing.T) {
	dir := t.TempDir()
	vm := imagetest.Create(t, dir, "vm.qcow2", "qcow2", 64<<20)
	imagetest.QemuIO(t, "qcow2", vm, "write -P 0x11 0 8M", "write -P 0x22 20M 4M", "write -c -P 0x33 40M 1M")
	imagetest.AddBitmap(t, vm, "since-full", "-g", "64k")
	full := imagetest.ConvertRawFile(t, vm, "qcow2") // the full backup, taken with the bitmap
	imagetest.QemuIO(t, "qcow2", vm, "write -P 0x44 1M 100k", "write -z 21M 512k", "discard 22M 1M",
		"write -c -P 0x55 30M 64k", "write -P 0x66 5000000 7000", "write -P 0x77 67107840 1024")

	mnt := mount(t, vm)
	bm, err := os.Open(filepath.Join(mnt, "0-vm.qcow2.since-full.bitmap"))
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Close()
	src, err := os.Open(filepath.Join(mnt, "0-vm.qcow2.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(full, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^\s*(\d+)\s*(\d+)\s*(\d+)`)
	var copied int64
	sc := bufio.NewScanner(bm)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("bitmap line %q does not parse", sc.Text())
		}
		off, _ := strconv.ParseInt(m[1], 10, 64)
		n, _ := strconv.ParseInt(m[2], 10, 64)
		typ, _ := strconv.Atoi(m[3])
		if typ&1 == 0 {
			continue
		}
		buf := make([]byte, n)
		if _, err := src.ReadAt(buf, off); err != nil {
			t.Fatalf("reading the dirty range [%d, +%d): %v", off, n, err)
		}
		if _, err := dst.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copied += n
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range imagetest.Oracles(t) {
		if want := q.ConvertRaw(t, vm, "qcow2"); !bytes.Equal(got, want) {
			t.Errorf("the full backup with the dirty ranges applied differs from %s's qemu-img convert of the current disk", q.Name(t))
			compareBytes(t, got, want)
		}
	}
	if copied == 0 || copied > 4<<20 {
		t.Errorf("copied %d bytes of dirty ranges; want some, and far less than the disk", copied)
	}
	t.Logf("incremental backup: %d dirty bytes copied of a %d-byte disk", copied, len(got))
}

// TestManySnapshotsListing: a layer with 100 internal snapshots and 20
// bitmaps shows 320 more files, and `ls -l` of the mount answers at once
// (nothing is read at readdir; each stat renders one small map). The
// times are logged, not enforced.
func TestManySnapshotsListing(t *testing.T) {
	dir := t.TempDir()
	vm := imagetest.Create(t, dir, "vm.qcow2", "qcow2", 1<<30)
	for i := range 100 {
		if i%10 == 0 {
			imagetest.QemuIO(t, "qcow2", vm, fmt.Sprintf("write -P %d %dM 1M", i+1, i*8))
		}
		imagetest.Snapshot(t, vm, fmt.Sprintf("snap-%03d", i))
	}
	for i := range 20 {
		imagetest.AddBitmap(t, vm, fmt.Sprintf("bm-%02d", i), "-g", "64k")
	}
	imagetest.QemuIO(t, "qcow2", vm, "write -P 0xee 900M 2M")
	mnt := mount(t, vm)
	start := time.Now()
	out := run(t, "ls", "-l", mnt)
	first := time.Since(start)
	start = time.Now()
	run(t, "ls", "-l", mnt)
	again := time.Since(start)
	lines := strings.Count(out, "\n") - 1 // less "total"
	if lines != 3+3*100+20 {
		t.Errorf("ls -l lists %d files, want %d", lines, 3+3*100+20)
	}
	if !strings.Contains(out, "0-vm.qcow2@snap-099.map.json") || !strings.Contains(out, "0-vm.qcow2.bm-19.bitmap") {
		t.Errorf("ls -l:\n%s", out)
	}
	t.Logf("ls -l of %d files: first %v, again %v", lines, first, again)
}

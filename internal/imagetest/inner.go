package imagetest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Helpers for what a qcow2 image keeps inside it: internal snapshots and
// persistent dirty bitmaps.

// Applied copies the image at path to a file beside it (so that relative
// backing names resolve the same) and applies internal snapshot id to the
// copy with q's `qemu-img snapshot -a`, which gives the copy the
// snapshot's L1 table and disk size. It returns the copy's path: QEMU's
// own view of the snapshot, for convert, map and qemu-nbd. The copy keeps
// the original's host offsets.
func (q QEMU) Applied(t testing.TB, path, id string) string {
	t.Helper()
	path, dir := abs(t, path)
	f, err := os.CreateTemp(dir, "applied-*-"+filepath.Base(path))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(f, src)
	src.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	q.run(t, dir, "qemu-img", "snapshot", "-a", id, f.Name())
	return f.Name()
}

// NBDBitmap returns what `nbdinfo [--json] --map=qemu:dirty-bitmap:NAME`
// prints for path served by `qemu-nbd -r -B NAME -f format`.
func (q QEMU) NBDBitmap(t testing.TB, path, format, name string, asJSON bool) string {
	t.Helper()
	args := []string{"--map=qemu:dirty-bitmap:" + name}
	if asJSON {
		args = append([]string{"--json"}, args...)
	}
	return q.NBDInfo(t, path, format, []string{"-B", name}, args...)
}

// SnapshotInfo is one entry of the "snapshots" array of `qemu-img info
// --output=json`.
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize uint64 `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	// ICount is nil when QEMU prints none (not recorded).
	ICount *int64 `json:"icount"`
}

// BitmapInfo is one entry of "format-specific"."data"."bitmaps" of
// `qemu-img info --output=json`.
type BitmapInfo struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}

// Info is what `qemu-img info --output=json` says of an image's
// snapshots and bitmaps.
type Info struct {
	VirtualSize    int64          `json:"virtual-size"`
	Snapshots      []SnapshotInfo `json:"snapshots"`
	FormatSpecific struct {
		Data struct {
			Bitmaps []BitmapInfo `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

// Info runs q's `qemu-img info --output=json -f format path` (without its
// backing chain) and decodes it.
func (q QEMU) Info(t testing.TB, path, format string) Info {
	t.Helper()
	path, dir := abs(t, path)
	out := q.run(t, dir, "qemu-img", "info", "--output=json", "-f", format, path)
	var i Info
	if err := json.Unmarshal([]byte(out), &i); err != nil {
		t.Fatalf("qemu-img info of %s: %v\n%s", path, err, out)
	}
	return i
}

// KillWriter opens the qcow2 image at path for writing with qemu-nbd and
// kills it with SIGKILL once it serves: what a VM that dies leaves behind.
// QEMU sets the in-use flag of every persistent bitmap when it opens an
// image for writing and clears it only when it closes it, so the bitmaps
// are left in use.
func KillWriter(t testing.TB, path string) {
	t.Helper()
	bin := lookPath(t, "qemu-nbd")
	sockDir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "s")
	path, dir := abs(t, path)
	cmd := exec.Command(bin, "-t", "-f", "qcow2", "--socket="+sock, path)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The socket listens before the image is open: wait for an NBD
	// client to get through, which it does once the export exists.
	uri := "nbd+unix:///?socket=" + sock
	deadline := time.Now().Add(CommandTimeout)
	for {
		if _, _, err := RunErr(t, "", "nbdinfo", "--size", uri); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("qemu-nbd %s: not serving after %v: %s", path, CommandTimeout, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// NBDBitmapErr is NBDBitmap for a bitmap qemu-nbd may refuse to export:
// it returns the error, with the tools' messages, instead of failing the
// test.
func (q QEMU) NBDBitmapErr(t testing.TB, path, format, name string) (string, error) {
	t.Helper()
	uri, stop, err := q.TryServeNBD(t, path, format, "-B", name)
	if err != nil {
		return "", err
	}
	defer stop()
	out, stderr, err := RunErr(t, "", "nbdinfo", "--map=qemu:dirty-bitmap:"+name, uri)
	if err != nil {
		return "", fmt.Errorf("nbdinfo: %v: %s", err, stderr)
	}
	return out, nil
}

// SnapshotEntry returns the file offset of entry i of the snapshot table
// of the qcow2 image at path, for hand edits: its L1 table offset is at +0,
// l1_size at +8, vm_state_size at +32, extra_data_size at +36, and the
// extra data (64-bit VM state size, disk size) at +40.
func SnapshotEntry(t testing.TB, path string, i int) int64 {
	t.Helper()
	n := int(ReadBE32(t, path, 60))
	if i >= n {
		t.Fatalf("%s has %d snapshots, no entry %d", path, n, i)
	}
	off := int64(ReadBE64(t, path, 64))
	for j := 0; j < i; j++ {
		off = (off + 7) &^ 7
		idLen := int64(ReadBE32(t, path, off+12) >> 16)
		nameLen := int64(ReadBE32(t, path, off+12) & 0xffff)
		off += 40 + int64(ReadBE32(t, path, off+36)) + idLen + nameLen
	}
	return (off + 7) &^ 7
}

// BitmapEntry returns the file offset of entry i of the bitmap directory
// of the qcow2 image at path, for hand edits: bitmap table offset at +0,
// table size at +8, flags at +12, type and granularity bits at +16 and
// +17, name size at +18, extra data size at +20, the name at +24.
func BitmapEntry(t testing.TB, path string, i int) int64 {
	t.Helper()
	ext := FindExt(t, path, 0x23852875)
	dir := int64(ReadBE64(t, path, ext+8+16))
	off := dir
	for j := 0; j < i; j++ {
		nameLen := int64(ReadBE32(t, path, off+16) & 0xffff)
		off += (24 + nameLen + int64(ReadBE32(t, path, off+20)) + 7) &^ 7
	}
	return off
}

// FindExt returns the offset of the header extension of type typ of the
// version 3 qcow2 image at path.
func FindExt(t testing.TB, path string, typ uint32) int64 {
	t.Helper()
	off := int64(ReadBE32(t, path, 100)) // header_length
	for off < 1<<16 {
		ty, n := ReadBE32(t, path, off), int64(ReadBE32(t, path, off+4))
		if ty == typ {
			return off
		}
		if ty == 0 {
			break
		}
		off += 8 + (n+7)&^7
	}
	t.Fatalf("%s: no header extension %#x", path, typ)
	return 0
}

// DropBackingFormat turns the backing-format header extension of the
// version 3 qcow2 image at path into an unknown one, which QEMU skips: the
// image then records no backing format, as if made without -F.
func DropBackingFormat(t testing.TB, path string) {
	t.Helper()
	PatchBE32(t, path, FindExt(t, path, 0xe2792aca), 0x7e577e57)
}

// Snapshot takes internal snapshot name of the image at path with
// `qemu-img snapshot -c`.
func Snapshot(t testing.TB, path, name string) {
	t.Helper()
	QemuImg(t, "snapshot", "-c", name, path)
}

// AddBitmap adds persistent bitmap name to the qcow2 image at path with
// `qemu-img bitmap --add ARGS` ("-g", "4096", "--disable", ...).
func AddBitmap(t testing.TB, path, name string, args ...string) {
	t.Helper()
	QemuImg(t, append(append([]string{"bitmap", "-f", "qcow2", "--add"}, args...), path, name)...)
}

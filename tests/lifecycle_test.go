package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// sampleTop is the shipped sample chain's top image.
func sampleTop(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../testdata/sample/top.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newMountpoint returns a fresh empty directory.
func newMountpoint(t *testing.T) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// TestBackgroundMountIsReadyOnReturn: chainfs mount returns only once the
// mount is up, serves from a process of its own, and chainfs umount
// ends that process.
func TestBackgroundMountIsReadyOnReturn(t *testing.T) {
	// A space in the name: /proc/mounts escapes it.
	mnt := filepath.Join(t.TempDir(), "mnt point")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(t.TempDir(), "log")
	out, code := chainfs(t, "mount", "--log-file", logFile, sampleTop(t), mnt)
	if code != 0 {
		t.Fatalf("mount: exit %d: %s", code, out)
	}
	// Checked the instant the command returns: no polling.
	if !isMountpoint(t, mnt) {
		t.Fatal("chainfs mount returned before the mount was up")
	}
	m, ok := mountOf(mnt)
	if !ok || m.fstype != "fuse.chainfs" || !strings.Contains(","+m.opts+",", ",ro,") {
		t.Errorf("/proc/mounts entry %+v: want type fuse.chainfs, read-only", m)
	}
	if out != "" {
		t.Errorf("mount printed %q, want nothing", out)
	}
	pid := serverPID(t, mnt)
	if pid == 0 {
		t.Fatal("no chainfs server process found for the mount")
	}
	out, code = chainfs(t, "umount", mnt)
	if code != 0 {
		t.Fatalf("umount: exit %d: %s", code, out)
	}
	if _, ok := mountOf(mnt); ok {
		t.Fatal("still mounted after chainfs umount")
	}
	if !waitFor(5*time.Second, func() bool { return !alive(pid) }) {
		t.Errorf("server %d still running after unmount", pid)
	}
	checkLog(t, logFile)
	if out, code := chainfs(t, "umount", mnt); code != 6 || !strings.Contains(out, "not mounted") {
		t.Errorf("umount of what is not mounted: exit %d, %q; want 6, not mounted", code, out)
	}
}

// TestBackgroundMountFailures: a failed mount exits non-zero with the
// server's error, leaves no mount and no server behind.
func TestBackgroundMountFailures(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.qcow2")
	imagetest.Create(t, dir, "corrupt.qcow2", "qcow2", 1<<20)
	imagetest.PatchBE32(t, corrupt, 20, 40) // cluster_bits 40: out of QEMU's range
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		name, image, mnt string
		code             int
		msg              string
	}{
		{"missing image", filepath.Join(dir, "nope.qcow2"), newMountpoint(t), 3, "nope.qcow2"},
		{"corrupt image", corrupt, newMountpoint(t), 3, "corrupt.qcow2"},
		{"missing mount point", sampleTop(t), filepath.Join(dir, "nodir"), 4, "nodir"},
		{"mount point is a file", sampleTop(t), file, 4, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			out, code := chainfs(t, "mount", tc.image, tc.mnt)
			if code != tc.code || !strings.Contains(out, tc.msg) || !strings.HasPrefix(out, "chainfs: ") {
				t.Errorf("exit %d, output %q; want exit %d and a message naming %q", code, out, tc.code, tc.msg)
			}
			if _, ok := mountOf(tc.mnt); ok {
				t.Errorf("%s mounted after a failed mount", tc.mnt)
				exec.Command("fusermount3", "-u", "-z", tc.mnt).Run()
			}
			if pid := serverPID(t, tc.mnt); pid != 0 {
				t.Errorf("server %d left running", pid)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestLockedImage: an image a VM (here qemu-io) has open for writing is
// refused, as qemu-img refuses it, unless --force-share / -o force_share.
func TestLockedImage(t *testing.T) {
	dir := t.TempDir()
	img := imagetest.Create(t, dir, "busy.qcow2", "qcow2", 1<<20)
	writer := exec.Command("qemu-io", "-f", "qcow2", img)
	stdin, err := writer.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); writer.Wait() })
	// qemu-io takes its locks as it opens the image, before its prompt.
	// Watch /proc/locks rather than probing with chainfs: a probe holds
	// read locks that make qemu-io's own open fail if the two race.
	if !waitFor(10*time.Second, func() bool { return holdsWriteLock(t, img) }) {
		t.Fatal("qemu-io never locked the image")
	}
	mnt := newMountpoint(t)
	out, code := chainfs(t, "mount", img, mnt)
	if code != 3 || !strings.Contains(out, "lock") {
		t.Errorf("mount of a locked image: exit %d, %q; want 3 and the lock named", code, out)
	}
	if _, ok := mountOf(mnt); ok {
		t.Error("mounted anyway")
	}
	mount(t, img, "-o", "force_share")
	mount(t, img, "--force-share")
}

// TestForegroundSignals: SIGTERM and SIGINT to a foreground mount
// unmount it and end the process with status 0; while a file is open the
// unmount falls back to a lazy one, so no dead mount stays behind.
func TestForegroundSignals(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		busy bool
	}{
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGINT", syscall.SIGINT, false},
		{"SIGTERM while a file is open", syscall.SIGTERM, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := newMountpoint(t)
			var stderr strings.Builder
			cmd := exec.Command(chainfsBin, "mount", "-f", sampleTop(t), mnt)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				exec.Command("fusermount3", "-u", "-z", mnt).Run()
			})
			if !waitFor(10*time.Second, func() bool { _, ok := mountOf(mnt); return ok }) {
				t.Fatalf("foreground mount never came up: %s", stderr.String())
			}
			var open *os.File
			if tc.busy {
				f, err := os.Open(filepath.Join(mnt, "0-top.qcow2.raw"))
				if err != nil {
					t.Fatal(err)
				}
				open = f
			}
			cmd.Process.Signal(tc.sig)
			if tc.busy {
				// Detached at once, served until the file is closed.
				if !waitFor(10*time.Second, func() bool { _, ok := mountOf(mnt); return !ok }) {
					t.Fatal("still mounted 10 s after the signal, with a file open")
				}
				buf := make([]byte, 4096)
				if _, err := open.ReadAt(buf, 4096); err != nil {
					t.Errorf("reading the open file after a lazy unmount: %v", err)
				}
				open.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("chainfs mount -f ended with %v after %v; stderr:\n%s", err, tc.sig, stderr.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("still running 10 s after %v; stderr:\n%s", tc.sig, stderr.String())
			}
			if _, ok := mountOf(mnt); ok {
				t.Errorf("still mounted after %v", tc.sig)
			}
			if strings.Contains(stderr.String(), "level=error") {
				t.Errorf("errors logged:\n%s", stderr.String())
			}
		})
	}
}

// TestForegroundStderrClosed: a foreground server whose stderr pipe is
// closed (chainfs mount -f 2>&1 | head) keeps serving instead of dying
// of SIGPIPE and leaving a dead mount.
func TestForegroundStderrClosed(t *testing.T) {
	mnt := newMountpoint(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(chainfsBin, "mount", "-f", "--debug-fuse", sampleTop(t), mnt)
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
	})
	if !waitFor(10*time.Second, func() bool { _, ok := mountOf(mnt); return ok }) {
		t.Fatal("never mounted")
	}
	r.Close()
	for range 3 { // every request now logs into the broken pipe
		if _, err := os.ReadFile(filepath.Join(mnt, "1-mid.qcow2.raw")); err != nil {
			t.Fatalf("reading with stderr closed: %v", err)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("server ended with %v", err)
	}
	if _, ok := mountOf(mnt); ok {
		t.Error("still mounted")
	}
}

// TestBackgroundServerEnds: the background server unmounts and exits on
// SIGTERM, and exits when unmounted with plain fusermount3 -u.
func TestBackgroundServerEnds(t *testing.T) {
	for _, how := range []string{"SIGTERM", "fusermount3 -u"} {
		t.Run(how, func(t *testing.T) {
			mnt := newMountpoint(t)
			logFile := filepath.Join(t.TempDir(), "log")
			if out, code := chainfs(t, "mount", "--log-file", logFile, sampleTop(t), mnt); code != 0 {
				t.Fatalf("mount: exit %d: %s", code, out)
			}
			t.Cleanup(func() { unmount(t, mnt) })
			pid := serverPID(t, mnt)
			if pid == 0 {
				t.Fatal("no server process")
			}
			if how == "SIGTERM" {
				syscall.Kill(pid, syscall.SIGTERM)
			} else if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
				t.Fatalf("fusermount3 -u: %v: %s", err, out)
			}
			if !waitFor(5*time.Second, func() bool { _, ok := mountOf(mnt); return !ok && !alive(pid) }) {
				t.Errorf("after %s: mounted %v, server alive %v", how, isMountpoint(t, mnt), alive(pid))
			}
			checkLog(t, logFile)
			if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), "msg=unmounted") {
				t.Errorf("log lacks the unmount:\n%s", b)
			}
		})
	}
}

// TestUnknownMountOption: a typo in -o fails before anything is mounted.
func TestUnknownMountOption(t *testing.T) {
	mnt := newMountpoint(t)
	out, code := chainfs(t, sampleTop(t), mnt, "-o", "ro,alow_other")
	if code != 2 || !strings.Contains(out, "alow_other") {
		t.Errorf("exit %d, %q; want 2 and the bad option named", code, out)
	}
	if _, ok := mountOf(mnt); ok {
		t.Error("mounted anyway")
		unmount(t, mnt)
	}
}

// TestInfoMapDepthCommands: the commands that read a chain without
// mounting it print the same as the mount's files.
func TestInfoMapDepthCommands(t *testing.T) {
	top := sampleTop(t)
	mnt := mount(t, top)
	for i, name := range []string{"0-top.qcow2", "1-mid.qcow2", "2-base.raw"} {
		layer := string(rune('0' + i))
		for _, c := range []struct {
			args []string
			file string
		}{
			{[]string{"map", "--layer", layer, top}, ".map.json"},
			{[]string{"depth", "--layer", layer, top}, ".depth"},
		} {
			out, code := chainfs(t, c.args...)
			want, err := os.ReadFile(filepath.Join(mnt, name+c.file))
			if err != nil {
				t.Fatal(err)
			}
			if code != 0 || out != string(want) {
				t.Errorf("chainfs %q: exit %d, output differs from %s%s", c.args, code, name, c.file)
			}
		}
	}
	out, code := chainfs(t, "info", top)
	if code != 0 || !strings.Contains(out, "image: "+filepath.Join(filepath.Dir(top), "mid.qcow2")+"\n") || strings.Count(out, "image: ") != 3 {
		t.Errorf("info: exit %d:\n%s", code, out)
	}
	out, code = chainfs(t, "info", "--json", top)
	if code != 0 || !strings.Contains(out, `"virtual-size": 200192`) {
		t.Errorf("info --json: exit %d:\n%s", code, out)
	}
	if out, code := chainfs(t, "map", "--layer", "3", top); code == 0 || !strings.Contains(out, "--layer 3") {
		t.Errorf("map --layer 3 of a 3-layer chain: exit %d, %q", code, out)
	}
}

// serverPID finds the chainfs process serving mnt, or 0.
func serverPID(t *testing.T, mnt string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) < 2 || filepath.Base(args[0]) != "chainfs" || args[len(args)-1] != mnt {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/cmdline"))
		return pid
	}
	return 0
}

// alive reports whether pid runs (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// TestSampleReproducible: testdata/make-sample.sh makes exactly the
// committed sample, so the two cannot drift apart.
func TestSampleReproducible(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("bash", "../testdata/make-sample.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("make-sample.sh: %v\n%s", err, out)
	}
	for _, name := range []string{"top.qcow2", "mid.qcow2", "base.raw"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("../testdata/sample", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s made by make-sample.sh differs from the committed one: rerun testdata/make-sample.sh and commit", name)
		}
	}
}

// holdsWriteLock reports whether some process holds QEMU's "write"
// permission lock (an OFD lock on byte 101) on the file at path.
func holdsWriteLock(t *testing.T, path string) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	// Lines look like "4: OFDLCK ADVISORY  READ -1 fe:00:745512 100 101":
	// the kernel merges adjacent byte ranges of one owner.
	dev := fmt.Sprintf(":%d", st.Ino)
	for _, line := range strings.Split(string(locks), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[1] != "OFDLCK" || !strings.HasSuffix(f[5], dev) {
			continue
		}
		start, err1 := strconv.ParseInt(f[6], 10, 64)
		end, err2 := strconv.ParseInt(f[7], 10, 64)
		if err1 == nil && err2 == nil && start <= 101 && 101 <= end {
			return true
		}
	}
	return false
}

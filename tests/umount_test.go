package tests

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// copySample copies the committed sample chain into a fresh directory and
// returns its top image: tests that watch the images' locks need files
// no other test mounts.
func copySample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"top.qcow2", "mid.qcow2", "base.raw"} {
		b, err := os.ReadFile(filepath.Join("../testdata/sample", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "top.qcow2")
}

// ofdLocked reports whether any process holds an OFD lock (QEMU's image
// locks are OFD locks) on the file at path.
func ofdLocked(t *testing.T, path string) bool {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(locks), "\n") {
		// "4: OFDLCK ADVISORY  READ -1 fe:00:745512 100 101"
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "OFDLCK" && strings.HasSuffix(f[5], fmt.Sprintf(":%d", st.Ino)) {
			return true
		}
	}
	return false
}

// mountBackground mounts image at a fresh mount point and returns it with
// the server's pid and log file.
func mountBackground(t *testing.T, image string) (mnt string, pid int, logFile string) {
	t.Helper()
	mnt = newMountpoint(t)
	logFile = filepath.Join(t.TempDir(), "log")
	if out, code := chainfs(t, "mount", "--log-file", logFile, image, mnt); code != 0 {
		t.Fatalf("mount: exit %d: %s", code, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	if pid = serverPID(t, mnt); pid == 0 {
		t.Fatal("no server process for the mount")
	}
	return mnt, pid, logFile
}

// TestUmountWaitIdle: with nothing open, umount --wait returns once the
// server has exited and its locks are gone, not merely once unmounted.
func TestUmountWaitIdle(t *testing.T) {
	top := copySample(t)
	mnt, pid, logFile := mountBackground(t, top)
	if !ofdLocked(t, top) {
		t.Fatal("no lock on the image while mounted")
	}
	if out, code := chainfs(t, "umount", "--wait", mnt); code != 0 || out != "" {
		t.Fatalf("umount --wait: exit %d: %q; want 0 and nothing printed", code, out)
	}
	if alive(pid) || ofdLocked(t, top) {
		t.Errorf("after umount --wait: server alive %v, image locked %v", alive(pid), ofdLocked(t, top))
	}
	checkLog(t, logFile)
}

// TestUmountBusy: a mount held by a sleeping process (a file open on a
// view) and by a read-only loop device on another view. chainfs umount
// --wait unmounts lazily, names both holders and says the images stay
// locked; it returns only once both are gone and the server has exited.
func TestUmountBusy(t *testing.T) {
	top := copySample(t)
	mnt, pid, logFile := mountBackground(t, top)
	held := filepath.Join(mnt, "0-top.qcow2.raw")
	looped := filepath.Join(mnt, "1-mid.qcow2.raw")

	f, err := os.Open(held)
	if err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("sleep", "600")
	sleeper.Stdin = f
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", looped).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	detached := false
	detach := func() {
		if !detached {
			detached = true
			if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
				t.Errorf("losetup -d %s: %v: %s", loop, err, out)
			}
		}
	}
	t.Cleanup(detach)

	umount := exec.Command(chainfsBin, "umount", "--wait", mnt)
	stderr, err := umount.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := umount.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { umount.Process.Kill() })
	var (
		mu     sync.Mutex
		said   strings.Builder
		waited = make(chan struct{})
	)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			said.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "waiting for the server") {
				close(waited)
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("umount --wait never said it waits; said:\n%s", said.String())
	}
	mu.Lock()
	report := said.String()
	mu.Unlock()
	for _, want := range []string{
		"unmounted lazily",
		"QEMU's locks",
		fmt.Sprintf("pid %d (sleep): %s (fd 0)", sleeper.Process.Pid, held),
		fmt.Sprintf("%s: backing file %s", loop, looped),
		fmt.Sprintf("pid %d", pid),
	} {
		if !strings.Contains(report, want) {
			t.Errorf("umount --wait said nothing of %q:\n%s", want, report)
		}
	}
	if _, ok := mountOf(mnt); ok {
		t.Error("still in the mount table after a lazy unmount")
	}
	if !alive(pid) || !ofdLocked(t, top) {
		t.Fatalf("while held: server alive %v, image locked %v; want both", alive(pid), ofdLocked(t, top))
	}

	// One holder gone, the other not: still waiting.
	sleeper.Process.Kill()
	sleeper.Wait()
	exited := make(chan error, 1)
	go func() { exited <- umount.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("umount --wait returned (%v) while the loop device still holds the mount", err)
	case <-time.After(500 * time.Millisecond):
	}
	detach()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("umount --wait: %v\n%s", err, report)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("umount --wait still waiting 20 s after the last holder went")
	}
	for _, f := range []string{top, filepath.Join(filepath.Dir(top), "mid.qcow2"), filepath.Join(filepath.Dir(top), "base.raw")} {
		if ofdLocked(t, f) {
			t.Errorf("%s still locked after umount --wait returned", f)
		}
	}
	if alive(pid) {
		t.Error("server still running after umount --wait returned")
	}
	checkLog(t, logFile)
}

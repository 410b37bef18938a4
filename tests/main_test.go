// Package tests runs chainfs end to end: the real binary, real FUSE
// mounts, and QEMU's own tools (qemu-img, qemu-nbd, nbdinfo) as the oracle
// for every byte and every map.
//
// The tests need root, /dev/fuse and fusermount3 (tests/install-deps.sh
// installs the tools); they fail rather than skip without them.
package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

// chainfsBin is the binary under test, built by TestMain into a directory
// that is put first on PATH (mount -t fuse.chainfs runs "chainfs").
var chainfsBin string

// testRoot holds every temporary directory of the run, so that leftover
// mounts can be found by prefix.
var testRoot string

// raceBuild is set when the tests run under the race detector; the
// binary under test is then built with -race (race_test.go).
var raceBuild bool

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if err := preflight(); err != nil {
		fmt.Fprintf(os.Stderr, "tests: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "chainfs-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	testRoot = dir
	chainfsBin = filepath.Join(dir, "bin", "chainfs")
	args := []string{"build", "-o", chainfsBin}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/chainfs")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "tests: building chainfs: %v\n", err)
		return 1
	}
	os.Setenv("PATH", filepath.Dir(chainfsBin)+":"+os.Getenv("PATH"))
	// Tests make their temporary directories under testRoot.
	os.Setenv("TMPDIR", dir)

	// The committed sample is mounted by tests that do not go through
	// mount() (foreground and signal tests): it must come out unchanged
	// too.
	sample, _ := filepath.Glob("../testdata/sample/*")
	before := hashFiles(&preflightTB{}, sample)

	code := m.Run()

	for p, sum := range hashFiles(&preflightTB{}, sample) {
		if sum != before[p] {
			fmt.Fprintf(os.Stderr, "tests: FAIL: %s changed during the run\n", p)
			code = 1
		}
	}

	if left := mountsUnder(dir); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "tests: FAIL: mounts left behind: %q\n", left)
		for _, mnt := range left {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
		code = 1
	}
	return code
}

// preflight checks what every test needs, failing with a hint.
func preflight() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the end-to-end tests need root (mount -t fuse.chainfs, allow_other)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %v", err)
	}
	for _, tool := range []string{"fusermount3", "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo", "go", "mount", "cp", "du"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed: run tests/install-deps.sh", tool)
		}
	}
	return nil
}

// mountsUnder lists the mount points in /proc/mounts under dir.
func mountsUnder(dir string) []string {
	var out []string
	for _, m := range procMounts() {
		if m.dir == dir || strings.HasPrefix(m.dir, dir+"/") {
			out = append(out, m.dir)
		}
	}
	return out
}

type procMount struct{ source, dir, fstype, opts string }

// procMounts reads /proc/mounts, undoing its octal escapes.
func procMounts() []procMount {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []procMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		out = append(out, procMount{unescape(fields[0]), unescape(fields[1]), fields[2], fields[3]})
	}
	return out
}

func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// mountOf returns the /proc/mounts entry for mnt.
func mountOf(mnt string) (procMount, bool) {
	ms := procMounts()
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].dir == mnt {
			return ms[i], true
		}
	}
	return procMount{}, false
}

// isMountpoint reports whether mnt is on another device than its parent,
// which is what a caller sees the instant a mount is up.
func isMountpoint(t testing.TB, mnt string) bool {
	t.Helper()
	var st, pst syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		t.Fatalf("stat %s: %v", mnt, err)
	}
	if err := syscall.Stat(filepath.Dir(mnt), &pst); err != nil {
		t.Fatalf("stat %s: %v", filepath.Dir(mnt), err)
	}
	return st.Dev != pst.Dev
}

// waitFor polls cond every 10 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// chainfs runs the binary and returns its combined output and exit code.
func chainfs(t testing.TB, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(chainfsBin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("chainfs %q: %v", args, err)
		}
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// chainfsSplit runs the binary under test like chainfs, keeping its
// stdout (the answer) apart from its stderr (warnings and errors).
func chainfsSplit(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(chainfsBin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("chainfs %q: %v", args, err)
		}
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// mount mounts image in the background at a fresh directory with a log
// file, checks that the mount is up the moment the command returns, and
// registers its unmount with t.Cleanup. At cleanup the mount must go, the
// log must hold no warning or error (a test mode in the spirit of
// gocryptfs's -wpanic) except those the test announced with expectLog,
// and every file of the chain must be byte for byte what it was before
// the mount: chainfs never writes to an image.
func mount(t testing.TB, image string, args ...string) string {
	t.Helper()
	files := chainFiles(t, image, args)
	before := hashFiles(t, files)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "chainfs.log")
	full := []string{"mount", "--log-file", logFile, "--log-level", "debug"}
	if testing.Verbose() {
		full = append(full, "--debug-fuse") // the wire trace, shown if the test fails
	}
	full = append(full, args...)
	full = append(full, image, mnt)
	out, code := chainfs(t, full...)
	if code != 0 {
		t.Fatalf("chainfs %q: exit %d: %s", full, code, out)
	}
	if !isMountpoint(t, mnt) {
		t.Fatalf("chainfs %q returned 0 but %s is not a mount point yet", full, mnt)
	}
	m := &mounted{logFile: logFile}
	mounts.Store(mnt, m)
	t.Cleanup(func() {
		unmount(t, mnt)
		mounts.Delete(mnt)
		m.mu.Lock()
		allow := m.allow
		m.mu.Unlock()
		checkLog(t, logFile, allow...)
		if t.Failed() {
			showLog(t, logFile)
		}
		after := hashFiles(t, files)
		for _, f := range files {
			if before[f] != after[f] {
				t.Errorf("%s changed during the mount: sha256 %s before, %s after", f, before[f], after[f])
			}
		}
	})
	return mnt
}

// mounted is what the cleanup of a mount needs to know.
type mounted struct {
	logFile string
	mu      sync.Mutex
	allow   []string // log lines containing one of these are expected
}

// mounts maps the mount points made by mount to their *mounted.
var mounts sync.Map

// expectLog announces warnings and errors that the mount at mnt will log:
// a line containing any of patterns does not fail the test.
func expectLog(t testing.TB, mnt string, patterns ...string) {
	t.Helper()
	v, ok := mounts.Load(mnt)
	if !ok {
		t.Fatalf("expectLog: %s was not mounted by mount()", mnt)
	}
	m := v.(*mounted)
	m.mu.Lock()
	m.allow = append(m.allow, patterns...)
	m.mu.Unlock()
}

// mountLog returns what the mount at mnt has logged so far.
func mountLog(t testing.TB, mnt string) string {
	t.Helper()
	v, ok := mounts.Load(mnt)
	if !ok {
		t.Fatalf("mountLog: %s was not mounted by mount()", mnt)
	}
	b, err := os.ReadFile(v.(*mounted).logFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chainFiles lists every file of image's chain (images and external data
// files) as `chainfs info --json` finds them, with the --format that
// mount args carry. It uses -U: the listing must not take or need locks.
func chainFiles(t testing.TB, image string, mountArgs []string) []string {
	t.Helper()
	args := []string{"info", "--json", "-U"}
	for i, a := range mountArgs {
		if (a == "--format" || a == "-format") && i+1 < len(mountArgs) {
			args = append(args, "--format", mountArgs[i+1])
		}
	}
	// Only stdout: the image may log warnings (a snapshot left out, a
	// probed format, damage).
	out, stderr, code := chainfsSplit(t, append(args, image)...)
	if code != 0 {
		t.Fatalf("chainfs %q: exit %d: %s%s", args, code, out, stderr)
	}
	var infos []struct {
		Filename string `json:"filename"`
		Chainfs  struct {
			DataFile string `json:"data-file-path"`
		} `json:"chainfs"`
	}
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("chainfs info --json: %v\n%s", err, out)
	}
	var files []string
	for _, i := range infos {
		files = append(files, i.Filename)
		if i.Chainfs.DataFile != "" {
			files = append(files, i.Chainfs.DataFile)
		}
	}
	return files
}

// hashFiles returns the sha256 of each file, hex-encoded.
func hashFiles(t testing.TB, files []string) map[string]string {
	t.Helper()
	sums := make(map[string]string, len(files))
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatalf("hashing %s: %v", p, err)
		}
		sums[p] = hex.EncodeToString(h.Sum(nil))
	}
	return sums
}

// unmount unmounts mnt with chainfs umount, retrying while busy, and
// fails the test if it stays mounted.
func unmount(t testing.TB, mnt string) {
	t.Helper()
	if _, ok := mountOf(mnt); !ok {
		return
	}
	var out string
	ok := waitFor(5*time.Second, func() bool {
		out, _ = chainfs(t, "umount", mnt)
		_, mounted := mountOf(mnt)
		return !mounted
	})
	if !ok {
		t.Errorf("%s still mounted after chainfs umount: %s", mnt, out)
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
	}
}

// checkLog fails the test for every warning or error in a mount's log,
// except lines that contain one of allow. A panic or a data race (the
// race detector writes to the log file, which is the daemon's stderr) is
// never expected.
func checkLog(t testing.TB, logFile string, allow ...string) {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Errorf("reading the mount's log: %v", err)
		return
	}
lines:
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "panic") || strings.Contains(line, "DATA RACE") {
			t.Errorf("mount log: %s", line)
			continue
		}
		if strings.Contains(line, "level=warning") || strings.Contains(line, "level=error") ||
			strings.Contains(line, "level=fatal") {
			for _, a := range allow {
				if strings.Contains(line, a) {
					continue lines
				}
			}
			t.Errorf("mount log: %s", line)
		}
	}
}

// showLog logs the tail of a mount's log, for a failed test.
func showLog(t testing.TB, logFile string) {
	t.Helper()
	b, _ := os.ReadFile(logFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 200 {
		lines = lines[len(lines)-200:]
	}
	t.Logf("mount log %s (last %d lines):\n%s", logFile, len(lines), strings.Join(lines, "\n"))
}

// preflightTB is the testing.TB hashFiles needs outside a test: a failure
// ends the run.
type preflightTB struct{ testing.TB }

func (preflightTB) Helper() {}
func (preflightTB) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"tests:"}, args...)...)
	os.Exit(1)
}
func (p preflightTB) Fatalf(format string, args ...any) { p.Fatal(fmt.Sprintf(format, args...)) }

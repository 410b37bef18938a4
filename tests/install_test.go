package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestInstallFstabSystemd installs chainfs the way an administrator does
// and mounts it the ways the system does, as root, without touching the
// machine: "make install" goes into a scratch DESTDIR, and everything else
// runs in a private mount namespace in which that DESTDIR's usr/local is
// bind-mounted over /usr/local. Commands there run with systemd's default
// PATH and nothing of the test's, so mount(8) -> mount.fuse3 -> /bin/sh
// must find the installed chainfs on the standard path. Checked there:
// man chainfs; mount -t fuse.chainfs; the man page's /etc/fstab line
// through mount -T; its systemd unit (systemd-analyze verify, then the
// mount command systemd runs for it); umount(8) each time; and make
// uninstall.
func TestInstallFstabSystemd(t *testing.T) {
	dest := t.TempDir()
	build := filepath.Join(t.TempDir(), "build")
	makeIn(t, "install", "DESTDIR="+dest, "BUILDDIR="+build)
	bin := filepath.Join(dest, "usr/local/bin/chainfs")
	page := filepath.Join(dest, "usr/local/share/man/man1/chainfs.1")
	for path, mode := range map[string]os.FileMode{bin: 0o755, page: 0o644} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != mode {
			t.Fatalf("make install: %s: %v, want mode %o", path, err, mode)
		}
	}
	// The version is what git describe says of the checkout.
	describe, err := exec.Command("git", "-C", "..", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatalf("git describe: %v", err)
	}
	out, err := exec.Command(bin, "--version").Output()
	if first, _, _ := strings.Cut(string(out), "\n"); err != nil || first != "chainfs "+strings.TrimSpace(string(describe)) {
		t.Errorf("installed chainfs --version: %q, %v; want chainfs %s", first, err, describe)
	}

	ns := newMountNS(t)
	ns.run(t, "mount", "--bind", filepath.Join(dest, "usr/local"), "/usr/local")
	if out := ns.run(t, "sh", "-c", "command -v chainfs"); strings.TrimSpace(out) != "/usr/local/bin/chainfs" {
		t.Fatalf("the namespace finds chainfs at %q", out)
	}
	// Justified text: compare with single spaces.
	manOut := strings.Join(strings.Fields(ns.run(t, "man", "-P", "cat", "chainfs")), " ")
	for _, want := range []string{"chainfs - mount a QEMU disk-image backing chain", "MOUNT OPTIONS", "fuse.chainfs", "chainfs " + strings.TrimSpace(string(describe))} {
		if !strings.Contains(manOut, want) {
			t.Errorf("man chainfs lacks %q:\n%s", want, manOut)
		}
	}

	top := sampleTop(t)
	wantDepth, code := chainfs(t, "depth", "--layer", "2", top)
	if code != 0 {
		t.Fatalf("chainfs depth: exit %d: %s", code, wantDepth)
	}
	fstab, unit := manExamples(t)
	unitFile := filepath.Join(t.TempDir(), "unit", systemdUnitName(t, unit["Where"]))
	if err := os.MkdirAll(filepath.Dir(unitFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unitFile, []byte(unit[""]), 0o644); err != nil {
		t.Fatal(err)
	}
	verify := exec.Command("systemd-analyze", "verify", "--man=no", unitFile)
	var verr bytes.Buffer
	verify.Stdout, verify.Stderr = &verr, &verr
	if err := verify.Run(); err != nil || verr.Len() > 0 {
		t.Errorf("systemd-analyze verify of the man page's unit %s: %v\n%s", filepath.Base(unitFile), err, verr.String())
	}

	for _, tc := range []struct {
		name  string
		mount func(mnt string) []string
		opts  []string // what /proc/self/mountinfo must show
	}{
		{"mount -t fuse.chainfs", func(mnt string) []string {
			return []string{"mount", "-t", "fuse.chainfs", top, mnt, "-o", "ro,allow_other,noexec"}
		}, []string{"ro", "noexec", "allow_other", "default_permissions"}},
		{"/etc/fstab line, mount -T", func(mnt string) []string {
			file := filepath.Join(t.TempDir(), "fstab")
			line := strings.Join([]string{top, mnt, fstab[2], fstab[3], fstab[4], fstab[5]}, " ") + "\n"
			if err := os.WriteFile(file, []byte("# a test fstab\n"+line), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"mount", "-T", file, mnt}
		}, strings.Split(fstab[3], ",")},
		{"systemd unit's mount", func(mnt string) []string {
			return []string{"mount", top, mnt, "-t", unit["Type"], "-o", unit["Options"]}
		}, strings.Split(unit["Options"], ",")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := newMountpoint(t)
			ns.run(t, tc.mount(mnt)...)
			t.Cleanup(func() { ns.cmd("umount", "-l", mnt).Run() })
			m, ok := ns.mountOf(t, mnt)
			if !ok {
				t.Fatal("not mounted once mount returned")
			}
			if m.fstype != "fuse.chainfs" || m.source != top {
				t.Errorf("mountinfo: type %q source %q", m.fstype, m.source)
			}
			for _, o := range tc.opts {
				if o == "nofail" {
					continue // for mount(8), not the kernel
				}
				if !strings.Contains(","+m.opts+",", ","+o+",") {
					t.Errorf("mount options %q lack %s", m.opts, o)
				}
			}
			pid := ns.serverOf(t, mnt)
			if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err != nil || exe != "/usr/local/bin/chainfs" {
				t.Errorf("the server runs %q (%v), want the installed /usr/local/bin/chainfs", exe, err)
			}
			got, err := os.ReadFile(filepath.Join(ns.root(), mnt, "2-base.raw.depth"))
			if err != nil || string(got) != wantDepth {
				t.Errorf("2-base.raw.depth through the mount: %q, %v; want %q", got, err, wantDepth)
			}
			ns.run(t, "umount", mnt)
			if _, ok := ns.mountOf(t, mnt); ok {
				t.Error("still mounted after umount")
			}
			if !waitFor(5*time.Second, func() bool { return !alive(pid) }) {
				t.Error("server still running after umount")
			}
		})
	}

	makeIn(t, "uninstall", "DESTDIR="+dest, "BUILDDIR="+build)
	for _, p := range []string{bin, page} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("make uninstall left %s (%v)", p, err)
		}
	}
}

// makeIn runs make with args in the repository root.
func makeIn(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", ".."}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make %q: %v\n%s", args, err, out)
	}
}

// manExamples returns the /etc/fstab line of the man page, split into
// fields, and its systemd unit: the whole text under "", and each
// Key=value of it.
func manExamples(t *testing.T) (fstab []string, unit map[string]string) {
	t.Helper()
	b, err := os.ReadFile("../docs/chainfs.1.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	fstab = regexp.MustCompile(`(?m)^    (\S+)\s+(\S+)\s+(fuse\.chainfs)\s+(\S+)\s+(\d)\s+(\d)$`).FindStringSubmatch(text)
	if fstab == nil {
		t.Fatal("docs/chainfs.1.md has no /etc/fstab line of type fuse.chainfs (indented four spaces)")
	}
	fstab = fstab[1:]
	block := regexp.MustCompile(`(?m)^    \[Unit\]\n(?:    .*\n|\n)*?    WantedBy=.*\n`).FindString(text)
	if block == "" {
		t.Fatal("docs/chainfs.1.md has no systemd unit ([Unit] ... WantedBy=, indented four spaces)")
	}
	unit = map[string]string{}
	var body strings.Builder
	for _, line := range strings.Split(strings.TrimSuffix(block, "\n"), "\n") {
		line = strings.TrimPrefix(line, "    ")
		body.WriteString(line + "\n")
		if k, v, ok := strings.Cut(line, "="); ok {
			unit[k] = v
		}
	}
	unit[""] = body.String()
	if unit["Type"] != "fuse.chainfs" || unit["Where"] == "" || unit["What"] == "" {
		t.Fatalf("the man page's unit lacks What=, Where= or Type=fuse.chainfs:\n%s", block)
	}
	return fstab, unit
}

// systemdUnitName is the name systemd requires of a mount unit for where.
func systemdUnitName(t *testing.T, where string) string {
	t.Helper()
	out, err := exec.Command("systemd-escape", "--path", "--suffix=mount", where).Output()
	if err != nil {
		t.Fatalf("systemd-escape: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// mountNS is a private mount namespace, held open by a sleeping process,
// that commands enter with nsenter.
type mountNS struct{ pid int }

func newMountNS(t *testing.T) *mountNS {
	t.Helper()
	hold := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "3600")
	if err := hold.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	t.Cleanup(func() { hold.Process.Kill(); hold.Wait() })
	self, _ := os.Readlink("/proc/self/ns/mnt")
	ns := &mountNS{pid: hold.Process.Pid}
	if !waitFor(5*time.Second, func() bool {
		l, err := os.Readlink("/proc/" + strconv.Itoa(ns.pid) + "/ns/mnt")
		return err == nil && l != self
	}) {
		t.Fatal("unshare made no mount namespace")
	}
	return ns
}

// systemPath is the PATH systemd gives units (and dash's default).
const systemPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// cmd is a command to run in the namespace with systemd's default PATH
// and nothing else of the test's environment.
func (ns *mountNS) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(ns.pid), "-m", "--"}, args...)...)
	cmd.Env = []string{"PATH=" + systemPath, "LC_ALL=C.UTF-8", "MANWIDTH=80"}
	return cmd
}

// run runs args in the namespace and returns its stdout, failing the test
// if it fails.
func (ns *mountNS) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := ns.cmd(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("in the namespace, %q: %v\n%s%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// root is the namespace's view of the file tree, for reading through its
// mounts from outside.
func (ns *mountNS) root() string { return "/proc/" + strconv.Itoa(ns.pid) + "/root" }

// mountOf finds mnt in the namespace's mount table.
func (ns *mountNS) mountOf(t *testing.T, mnt string) (procMount, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(ns.pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var found procMount
	ok := false
	for _, line := range strings.Split(string(b), "\n") {
		// id parent dev root mountpoint opts ... - fstype source superopts
		pre, post, cut := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !cut || len(f) < 6 || len(g) < 3 || unescape(f[4]) != mnt {
			continue
		}
		found, ok = procMount{source: unescape(g[1]), fstype: g[0], opts: f[5] + "," + g[2]}, true
	}
	return found, ok
}

// serverOf finds the chainfs process serving mnt: mount.fuse3's form
// leaves the mount point among the arguments, not last.
func (ns *mountNS) serverOf(t *testing.T, mnt string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) < 3 || filepath.Base(args[0]) != "chainfs" || args[1] != "mount" {
			continue
		}
		for _, a := range args[2:] {
			if a == mnt {
				pid, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(p, "/proc/"), "/cmdline"))
				return pid
			}
		}
	}
	t.Fatalf("no chainfs server for %s", mnt)
	return 0
}

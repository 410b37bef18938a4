// Package imagetest builds QEMU disk images for tests with the real QEMU
// tools (qemu-img, qemu-io, qemu-nbd, nbdinfo) and captures what those tools
// report about them, so that every package can compare itself with QEMU.
//
// The tools are required, not optional: a test that calls a helper whose
// tool is missing fails (it does not skip) and says to run .ci/run, which
// installs them. Every helper fails the test with the command line and the
// tool's stderr when the tool fails, and bounds each command by
// CommandTimeout so that a wedged tool cannot hang the test binary.
package imagetest

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Helpers that take an image path run the tool in the image's directory,
// with the path made absolute. QEMU 7.2 resolves a relative external data
// file name against the working directory (unlike backing file names,
// which it resolves against the image's directory); running in the
// image's directory makes both resolve as chainfs resolves them.

// CommandTimeout bounds every tool invocation.
var CommandTimeout = 2 * time.Minute

// QEMU is one installation of QEMU's tools (qemu-img, qemu-io, qemu-nbd),
// for tests that hold chainfs against more than one QEMU. nbdinfo, from
// libnbd, is the machine's in every case.
type QEMU struct {
	// Dir holds the tools; empty means they are looked up on PATH.
	Dir string
}

// System is the QEMU on PATH: Debian's own (7.2 on bookworm).
var System = QEMU{}

// BackportsEnv names the directory tests/install-deps.sh unpacked
// Debian's bookworm-backports QEMU into (its usr/bin holds the tools);
// DefaultBackports is where it goes without the variable.
const (
	BackportsEnv     = "CHAINFS_QEMU_BACKPORTS"
	DefaultBackports = "/opt/chainfs/qemu-backports"
)

// Backports is the QEMU that tests/install-deps.sh unpacks beside the
// system's (10.0 from bookworm-backports), which prints the current
// upstream format of `qemu-img map` with the "compressed" key.
func Backports() QEMU {
	root := os.Getenv(BackportsEnv)
	if root == "" {
		root = DefaultBackports
	}
	return QEMU{Dir: filepath.Join(root, "usr", "bin")}
}

// Oracles returns every QEMU the oracle tests compare with: the system's
// and the backports one. Both are required: it fails the test, saying to
// run tests/install-deps.sh, when one is missing.
func Oracles(t testing.TB) []QEMU {
	t.Helper()
	qs := []QEMU{System, Backports()}
	for _, q := range qs {
		q.Version(t)
	}
	return qs
}

// tool returns the path of one of q's tools.
func (q QEMU) tool(t testing.TB, name string) string {
	t.Helper()
	if q.Dir == "" {
		return lookPath(t, name)
	}
	p := filepath.Join(q.Dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is required by this test but is missing (%v): run tests/install-deps.sh, which unpacks it", p, err)
	}
	return p
}

var versions sync.Map // QEMU.Dir -> [2]int

// Version returns q's major and minor version, from qemu-img --version.
func (q QEMU) Version(t testing.TB) (major, minor int) {
	t.Helper()
	if v, ok := versions.Load(q.Dir); ok {
		mm := v.([2]int)
		return mm[0], mm[1]
	}
	out, stderr, err := runPath(t, "", q.tool(t, "qemu-img"), "--version")
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", q.tool(t, "qemu-img"), err, stderr)
	}
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("qemu-img --version printed no version: %q", out)
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	versions.Store(q.Dir, [2]int{major, minor})
	return major, minor
}

var versionRE = regexp.MustCompile(`version (\d+)\.(\d+)`)

// Name is "QEMU X.Y", for subtest names and messages.
func (q QEMU) Name(t testing.TB) string {
	t.Helper()
	major, minor := q.Version(t)
	return fmt.Sprintf("QEMU %d.%d", major, minor)
}

// PrintsCompressed reports whether q's `qemu-img map --output=json` has
// the "compressed" key (QEMU 8.2 and later).
func (q QEMU) PrintsCompressed(t testing.TB) bool {
	t.Helper()
	major, minor := q.Version(t)
	return major > 8 || major == 8 && minor >= 2
}

var compressedKey = regexp.MustCompile(`, "compressed": (true|false)`)

// AsPrinted returns mapJSON, in the current upstream format of `qemu-img
// map --output=json`, as q prints it: without the "compressed" key for a
// QEMU older than 8.2, unchanged otherwise.
func (q QEMU) AsPrinted(t testing.TB, mapJSON string) string {
	t.Helper()
	if q.PrintsCompressed(t) {
		return mapJSON
	}
	return compressedKey.ReplaceAllString(mapJSON, "")
}

// Need fails the test unless every named tool is on PATH. With no names it
// checks qemu-img, qemu-io, qemu-nbd and nbdinfo.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	if len(tools) == 0 {
		tools = []string{"qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"}
	}
	for _, tool := range tools {
		lookPath(t, tool)
	}
}

func lookPath(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is required by this test but is not installed (%v): run .ci/run, which installs the QEMU tools", tool, err)
	}
	return p
}

// Run runs tool with args in directory dir ("" for the current one) and
// returns its stdout. It fails the test, quoting the command and its stderr,
// if the tool cannot be found, fails, or outlives CommandTimeout.
func Run(t testing.TB, dir, tool string, args ...string) string {
	t.Helper()
	out, stderr, err := run(t, dir, tool, args...)
	if err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s\nstdout:\n%s", commandLine(tool, args), err, stderr, out)
	}
	return out
}

// RunErr is Run for commands that are expected to fail: it returns stdout,
// stderr and the error (nil when the tool succeeded) instead of failing
// the test. A missing tool or a timeout still fails the test.
func RunErr(t testing.TB, dir, tool string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	stdout, stderr, err = run(t, dir, tool, args...)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: %v\nstderr:\n%s", commandLine(tool, args), err, stderr)
	}
	return stdout, stderr, err
}

func run(t testing.TB, dir, tool string, args ...string) (string, string, error) {
	t.Helper()
	return runPath(t, dir, lookPath(t, tool), args...)
}

// runPath runs the program at path; Run and RunErr look tool up on PATH.
func runPath(t testing.TB, dir, path string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", CommandTimeout, ctx.Err())
	}
	return stdout.String(), stderr.String(), err
}

func commandLine(tool string, args []string) string {
	var b strings.Builder
	b.WriteString(tool)
	for _, a := range args {
		b.WriteByte(' ')
		if a == "" || strings.ContainsAny(a, " \t\"'\\$*?;&|<>()[]{}") {
			b.WriteString(strconv.Quote(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// abs returns path made absolute and its directory.
func abs(t testing.TB, path string) (string, string) {
	t.Helper()
	p, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	return p, filepath.Dir(p)
}

// QemuImg runs the system's qemu-img with args and returns its stdout.
func QemuImg(t testing.TB, args ...string) string {
	t.Helper()
	return System.Img(t, args...)
}

// Img runs q's qemu-img with args and returns its stdout.
func (q QEMU) Img(t testing.TB, args ...string) string {
	t.Helper()
	return q.run(t, "", "qemu-img", args...)
}

// ImgErr runs q's qemu-img in dir ("" for the current one), which may
// fail, and returns stdout, stderr and the error.
func (q QEMU) ImgErr(t testing.TB, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	stdout, stderr, err = runPath(t, dir, q.tool(t, "qemu-img"), args...)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: %v\nstderr:\n%s", commandLine("qemu-img", args), err, stderr)
	}
	return stdout, stderr, err
}

// run is Run for one of q's tools.
func (q QEMU) run(t testing.TB, dir, tool string, args ...string) string {
	t.Helper()
	out, stderr, err := runPath(t, dir, q.tool(t, tool), args...)
	if err != nil {
		t.Fatalf("%s (%s): %v\nstderr:\n%s\nstdout:\n%s", commandLine(tool, args), q.tool(t, tool), err, stderr, out)
	}
	return out
}

// QemuIO runs qemu-io on file opened with format, one -c per command
// ("write -P 0x11 0 64k", "write -z -u 1M 64k", "discard 0 4k", ...), and
// returns its stdout. qemu-io reports some failed commands on stdout while
// exiting 0, so QemuIO also fails the test when the output carries a
// failure message.
func QemuIO(t testing.TB, format, file string, cmds ...string) string {
	t.Helper()
	return System.IO(t, format, file, cmds...)
}

// IO is QemuIO with q's qemu-io.
func (q QEMU) IO(t testing.TB, format, file string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	file, dir := abs(t, file)
	args = append(args, file)
	out := q.run(t, dir, "qemu-io", args...)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "failed:") || strings.HasPrefix(line, "qemu-io:") {
			t.Fatalf("%s: %s\nstdout:\n%s", commandLine("qemu-io", args), line, out)
		}
	}
	return out
}

// Create runs `qemu-img create -f format [-o opts] dir/name size` and
// returns the image's path. opts are -o options ("cluster_size=512",
// "backing_file=base.qcow2", "backing_fmt=raw", "compat=0.10", ...),
// joined with commas; a relative backing_file is resolved by QEMU against
// dir. size is in bytes; size <= 0 omits it (an image with a backing file
// then takes the backing file's size). Use QemuImg directly for anything
// else (-u, --object, ...).
func Create(t testing.TB, dir, name, format string, size int64, opts ...string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	args := []string{"create", "-q", "-f", format}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	args = append(args, path)
	if size > 0 {
		args = append(args, strconv.FormatInt(size, 10))
	}
	Run(t, dir, "qemu-img", args...)
	return path
}

// ConvertRawFile runs `qemu-img convert -O raw -f format path OUT` into a
// fresh file under t.TempDir() and returns OUT: the guest view of the image
// with its whole backing chain, as QEMU reads it. Use it for images too big
// to hold in memory; ConvertRaw returns the bytes.
func ConvertRawFile(t testing.TB, path, format string) string {
	t.Helper()
	return System.ConvertRawFile(t, path, format)
}

// ConvertRawFile is the package's ConvertRawFile with q's qemu-img; extra
// arguments go before the image ("-l", "snapshot.name=S").
func (q QEMU) ConvertRawFile(t testing.TB, path, format string, extra ...string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), filepath.Base(path)+".*.raw")
	if err != nil {
		t.Fatal(err)
	}
	out := f.Name()
	f.Close()
	path, dir := abs(t, path)
	args := append([]string{"convert", "-f", format, "-O", "raw"}, extra...)
	q.run(t, dir, "qemu-img", append(args, path, out)...)
	return out
}

// ConvertRaw is ConvertRawFile returning the bytes (and removing the file).
func ConvertRaw(t testing.TB, path, format string) []byte {
	t.Helper()
	return System.ConvertRaw(t, path, format)
}

// ConvertRaw is the package's ConvertRaw with q's qemu-img.
func (q QEMU) ConvertRaw(t testing.TB, path, format string, extra ...string) []byte {
	t.Helper()
	out := q.ConvertRawFile(t, path, format, extra...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	return b
}

// QemuMapJSON returns the stdout of `qemu-img map --output=json -f format
// path`.
func QemuMapJSON(t testing.TB, path, format string) string {
	t.Helper()
	return System.MapJSON(t, path, format)
}

// MapJSON is QemuMapJSON with q's qemu-img.
func (q QEMU) MapJSON(t testing.TB, path, format string) string {
	t.Helper()
	path, dir := abs(t, path)
	return q.run(t, dir, "qemu-img", "map", "--output=json", "-f", format, path)
}

// MapEntry is one entry of `qemu-img map --output=json`. Offset is nil when
// QEMU prints no offset.
type MapEntry struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Depth   int   `json:"depth"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
	// Compressed is nil for a QEMU that does not print the key.
	Compressed *bool  `json:"compressed"`
	Offset     *int64 `json:"offset"`
	Filename   string `json:"filename"`
}

// QemuMap is QemuMapJSON decoded.
func QemuMap(t testing.TB, path, format string) []MapEntry {
	t.Helper()
	return System.Map(t, path, format)
}

// Map is QemuMap with q's qemu-img.
func (q QEMU) Map(t testing.TB, path, format string) []MapEntry {
	t.Helper()
	out := q.MapJSON(t, path, format)
	var m []MapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map of %s: %v\n%s", path, err, out)
	}
	return m
}

// NBDInfo serves path (opened with format) read-only with qemu-nbd,
// runs `nbdinfo ARGS... URI` against it and returns nbdinfo's stdout.
// qemuNBDArgs are extra qemu-nbd options (for example "-A" to export
// qemu:allocation-depth, or "-B", "bitmap0"). The server is stopped before
// NBDInfo returns, whatever happens.
func NBDInfo(t testing.TB, path, format string, qemuNBDArgs []string, nbdinfoArgs ...string) string {
	t.Helper()
	return System.NBDInfo(t, path, format, qemuNBDArgs, nbdinfoArgs...)
}

// NBDInfo is the package's NBDInfo with q's qemu-nbd.
func (q QEMU) NBDInfo(t testing.TB, path, format string, qemuNBDArgs []string, nbdinfoArgs ...string) string {
	t.Helper()
	uri, stop := q.ServeNBD(t, path, format, qemuNBDArgs...)
	defer stop()
	return Run(t, "", "nbdinfo", append(nbdinfoArgs, uri)...)
}

// NBDDepth returns what `nbdinfo --map=qemu:allocation-depth [--json]`
// prints for path served by `qemu-nbd -r -A -f format`.
func NBDDepth(t testing.TB, path, format string, asJSON bool) string {
	t.Helper()
	return System.NBDDepth(t, path, format, asJSON)
}

// NBDDepth is the package's NBDDepth with q's qemu-nbd.
func (q QEMU) NBDDepth(t testing.TB, path, format string, asJSON bool) string {
	t.Helper()
	args := []string{"--map=qemu:allocation-depth"}
	if asJSON {
		args = append([]string{"--json"}, args...)
	}
	return q.NBDInfo(t, path, format, []string{"-A"}, args...)
}

// ServeNBD starts `qemu-nbd -r -t -f format --socket=SOCK ARGS path` as a
// child of the test and returns the server's NBD URI, ready for clients,
// and a function that stops the server and reaps it. stop is idempotent
// and is also registered with t.Cleanup, so the server never outlives the
// test. The socket lives in a short directory under os.TempDir (t.TempDir
// paths can exceed the 108-byte limit on socket names).
func ServeNBD(t testing.TB, path, format string, args ...string) (uri string, stop func()) {
	t.Helper()
	return System.ServeNBD(t, path, format, args...)
}

// ServeNBD is the package's ServeNBD with q's qemu-nbd.
func (q QEMU) ServeNBD(t testing.TB, path, format string, args ...string) (uri string, stop func()) {
	t.Helper()
	uri, stop, err := q.TryServeNBD(t, path, format, args...)
	if err != nil {
		t.Fatal(err)
	}
	return uri, stop
}

// TryServeNBD is ServeNBD for a server that may refuse to start (an
// export QEMU will not serve): it returns the error, with qemu-nbd's
// stderr, instead of failing the test.
func (q QEMU) TryServeNBD(t testing.TB, path, format string, args ...string) (uri string, stop func(), err error) {
	t.Helper()
	lookPath(t, "nbdinfo")
	bin := q.tool(t, "qemu-nbd")
	sockDir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "s")
	full := append([]string{"-r", "-t", "-f", format, "--socket=" + sock}, args...)
	path, dir := abs(t, path)
	full = append(full, path)
	cmd := exec.Command(bin, full...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		t.Fatalf("%s: %v", commandLine("qemu-nbd", full), err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		os.RemoveAll(sockDir)
	}
	t.Cleanup(stop)

	// Wait until the server accepts connections (-t keeps it running
	// across this probe), or exits, or takes too long.
	deadline := time.Now().Add(CommandTimeout)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return "nbd+unix:///?socket=" + sock, stop, nil
		}
		select {
		case err := <-exited:
			exited <- err // let stop see it
			stop()
			return "", nil, fmt.Errorf("%s: exited before serving (%v)\nstderr:\n%s", commandLine("qemu-nbd", full), err, stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("%s: not serving after %v\nstderr:\n%s", commandLine("qemu-nbd", full), CommandTimeout, stderr.String())
		}
	}
}

// Patch writes b at off in the file at path (which must exist), for
// hand-breaking or hand-crafting images.
func Patch(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("patch %s at %#x: %v", path, off, err)
	}
}

// PatchBE32 writes v big-endian at off in the file at path.
func PatchBE32(t testing.TB, path string, off int64, v uint32) {
	t.Helper()
	Patch(t, path, off, binary.BigEndian.AppendUint32(nil, v))
}

// PatchBE64 writes v big-endian at off in the file at path.
func PatchBE64(t testing.TB, path string, off int64, v uint64) {
	t.Helper()
	Patch(t, path, off, binary.BigEndian.AppendUint64(nil, v))
}

// ReadBE64 reads a big-endian uint64 at off of the file at path.
func ReadBE64(t testing.TB, path string, off int64) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatalf("read %s at %#x: %v", path, off, err)
	}
	return binary.BigEndian.Uint64(b[:])
}

// ReadBE32 reads a big-endian uint32 at off of the file at path.
func ReadBE32(t testing.TB, path string, off int64) uint32 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatalf("read %s at %#x: %v", path, off, err)
	}
	return binary.BigEndian.Uint32(b[:])
}

// DeflateRaw compresses b as a raw deflate stream (no zlib header), the
// encoding of qcow2's zlib-compressed clusters, for hand-made clusters.
func DeflateRaw(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// LineDiff shows the first line where chainfs's text (got) and QEMU's
// (want) differ, for a test's failure message.
func LineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n  chainfs: %s\n  QEMU:    %s", i+1, a, b)
		}
	}
	return "(same lines)"
}

package tests

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// infoRow is a chain for TestInfoAgainstQEMU: build makes it in dir and
// returns the name to open it by, relative to dir (as a user in dir would
// type it) or absolute.
type infoRow struct {
	name  string
	build func(t *testing.T, dir string) string
	// probed lists the layers whose format no image records.
	probed []int
	// dataFile is the external data file of layer 0, resolved, if any.
	dataFile func(dir string) string
}

func infoRows() []infoRow {
	create := func(t *testing.T, dir, name, format, size string, opts ...string) {
		t.Helper()
		args := []string{"create", "-q", "-f", format}
		if len(opts) > 0 {
			args = append(args, "-o", strings.Join(opts, ","))
		}
		args = append(args, name)
		if size != "" {
			args = append(args, size)
		}
		imagetest.Run(t, dir, "qemu-img", args...)
	}
	write := func(t *testing.T, dir, format, name string, cmds ...string) {
		t.Helper()
		imagetest.QemuIO(t, format, filepath.Join(dir, name), cmds...)
	}
	rawBase := func(t *testing.T, dir, name string) {
		t.Helper()
		create(t, dir, name, "raw", "4M")
		write(t, dir, "raw", name, "write -P 0xb1 0 1M")
	}
	return []infoRow{
		{name: "version 2 image over a raw base", build: func(t *testing.T, dir string) string {
			rawBase(t, dir, "base.raw")
			create(t, dir, "top.qcow2", "qcow2", "", "compat=0.10", "cluster_size=4096", "backing_file=base.raw", "backing_fmt=raw")
			write(t, dir, "qcow2", "top.qcow2", "write -P 1 64k 64k")
			return "top.qcow2"
		}},
		{name: "zstd, extended L2, lazy refcounts, 4-bit refcounts over a qcow2 over raw", build: func(t *testing.T, dir string) string {
			rawBase(t, dir, "base.raw")
			create(t, dir, "mid.qcow2", "qcow2", "", "cluster_size=512", "backing_file=base.raw", "backing_fmt=raw")
			write(t, dir, "qcow2", "mid.qcow2", "write -P 2 0 100k")
			create(t, dir, "top.qcow2", "qcow2", "", "compression_type=zstd", "extended_l2=on", "cluster_size=128k",
				"lazy_refcounts=on", "refcount_bits=4", "backing_file=mid.qcow2", "backing_fmt=qcow2")
			write(t, dir, "qcow2", "top.qcow2", "write -c -P 3 0 128k", "write -P 4 1M 8k", "write -z 2M 64k")
			return "top.qcow2"
		}},
		{name: "zlib-compressed image, 2 MiB clusters, 1-bit refcounts", build: func(t *testing.T, dir string) string {
			create(t, dir, "c.qcow2", "qcow2", "8M", "cluster_size=2M", "refcount_bits=1")
			write(t, dir, "qcow2", "c.qcow2", "write -c -P 5 0 2M")
			return "c.qcow2"
		}},
		{name: "external data file, data_file_raw", build: func(t *testing.T, dir string) string {
			create(t, dir, "ext.qcow2", "qcow2", "2M", "data_file=ext.data", "data_file_raw=on")
			write(t, dir, "qcow2", "ext.qcow2", "write -P 6 0 1M")
			return "ext.qcow2"
		}, dataFile: func(dir string) string { return "ext.data" }},
		{name: "external data file by absolute name over a backing file", build: func(t *testing.T, dir string) string {
			rawBase(t, dir, "base.raw")
			create(t, dir, "ext.qcow2", "qcow2", "", "data_file="+filepath.Join(dir, "ext.data"), "backing_file=base.raw", "backing_fmt=raw")
			write(t, dir, "qcow2", "ext.qcow2", "write -P 6 64k 64k")
			return filepath.Join(dir, "ext.qcow2")
		}, dataFile: func(dir string) string { return filepath.Join(dir, "ext.data") }},
		{name: "raw image of unaligned length", build: func(t *testing.T, dir string) string {
			if err := os.WriteFile(filepath.Join(dir, "odd.img"), bytes.Repeat([]byte{7}, 1023999), 0o644); err != nil {
				t.Fatal(err)
			}
			return "odd.img"
		}},
		{name: "preallocation=full", build: func(t *testing.T, dir string) string {
			create(t, dir, "full.qcow2", "qcow2", "3M", "preallocation=full")
			return "full.qcow2"
		}},
		{name: "dirty bit set (lazy refcounts)", build: func(t *testing.T, dir string) string {
			create(t, dir, "dirty.qcow2", "qcow2", "1M", "lazy_refcounts=on")
			write(t, dir, "qcow2", "dirty.qcow2", "write -P 1 0 64k")
			setIncompatBits(t, filepath.Join(dir, "dirty.qcow2"), 1<<0)
			return "dirty.qcow2"
		}},
		{name: "corrupt bit set", build: func(t *testing.T, dir string) string {
			create(t, dir, "corrupt.qcow2", "qcow2", "1M")
			write(t, dir, "qcow2", "corrupt.qcow2", "write -P 1 0 64k")
			setIncompatBits(t, filepath.Join(dir, "corrupt.qcow2"), 1<<1)
			return "corrupt.qcow2"
		}},
		{name: "backing formats not recorded: probed", probed: []int{1, 2}, build: func(t *testing.T, dir string) string {
			rawBase(t, dir, "base.raw")
			create(t, dir, "mid.qcow2", "qcow2", "", "backing_file=base.raw", "backing_fmt=raw")
			create(t, dir, "top.qcow2", "qcow2", "", "backing_file=mid.qcow2", "backing_fmt=qcow2")
			imagetest.DropBackingFormat(t, filepath.Join(dir, "mid.qcow2"))
			imagetest.DropBackingFormat(t, filepath.Join(dir, "top.qcow2"))
			return "top.qcow2"
		}},
		{name: "relative names: sub/top, ./mid, then ../ through a symlinked directory", build: func(t *testing.T, dir string) string {
			// QEMU joins names as text and lets the kernel resolve
			// "link/.."; cleaning the path first would reach the decoy.
			for _, d := range []string{"sub", "real/deep"} {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink("../real/deep", filepath.Join(dir, "sub", "link")); err != nil {
				t.Fatal(err)
			}
			rawBase(t, dir, "real/base.raw")
			create(t, dir, "sub/base.raw", "raw", "8M") // the decoy
			create(t, dir, "sub/link/mid.qcow2", "qcow2", "", "backing_file=../base.raw", "backing_fmt=raw")
			create(t, dir, "sub/top.qcow2", "qcow2", "", "backing_file=./link/mid.qcow2", "backing_fmt=qcow2")
			return "sub/top.qcow2"
		}},
		{name: "non-ASCII, quotes and backslashes in file names", build: func(t *testing.T, dir string) string {
			rawBase(t, dir, "bäse \\ \"1\".raw")
			create(t, dir, "tøp\t€.qcow2", "qcow2", "", "backing_file=bäse \\ \"1\".raw", "backing_fmt=raw")
			return "tøp\t€.qcow2"
		}},
	}
}

// setIncompatBits sets bits in a version 3 header's incompatible
// features (qcow2.txt: bytes 72-79).
func setIncompatBits(t *testing.T, path string, bits uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 72); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])|bits)
	if _, err := f.WriteAt(b[:], 72); err != nil {
		t.Fatal(err)
	}
}

var (
	// ourJSONKey is the "chainfs" member chainfs prints last in each
	// layer's object; without it the JSON is what qemu-img prints.
	ourJSONKey = regexp.MustCompile(`,\n {8}"chainfs": \{\n(?: {12}.*\n)* {8}\}`)
	// ourTextSection is the "chainfs:" section after each layer's text.
	ourTextSection = regexp.MustCompile(`(?m)^chainfs:\n(?:    .*\n)*`)
	// childNodeText is the "Child node" section QEMU 8.0 added.
	childNodeText = regexp.MustCompile(`(?m)^Child node '/file':\n(?:    .*\n)*`)
)

// TestInfoAgainstQEMU: `chainfs info --json` prints, byte for byte, what
// `qemu-img info --output=json --backing-chain` of QEMU 10 prints, plus one
// "chainfs" member per layer; its text output is qemu-img info's text plus
// a "chainfs:" section per layer. QEMU 7.2 prints every key the same but
// "children" (added in QEMU 8.0, with the "Child node" text section),
// which chainfs prints as current QEMU does.
func TestInfoAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	for _, row := range infoRows() {
		t.Run(row.name, func(t *testing.T) {
			dir := t.TempDir()
			image := row.build(t, dir)
			ourJSON, _ := chainfsIn(t, dir, "info", "--json", image)
			ourText, _ := chainfsIn(t, dir, "info", image)
			var infos []map[string]any
			if err := json.Unmarshal([]byte(ourJSON), &infos); err != nil {
				t.Fatalf("chainfs info --json: %v\n%s", err, ourJSON)
			}
			checkOwnKeys(t, dir, row, infos)
			if n := len(ourJSONKey.FindAllString(ourJSON, -1)); n != len(infos) {
				t.Fatalf("%d layers, %d chainfs members found to strip:\n%s", len(infos), n, ourJSON)
			}
			if n := len(ourTextSection.FindAllString(ourText, -1)); n != len(infos) {
				t.Fatalf("%d layers, %d chainfs: sections found to strip:\n%s", len(infos), n, ourText)
			}
			qemuJSON := ourJSONKey.ReplaceAllString(ourJSON, "")
			qemuText := ourTextSection.ReplaceAllString(ourText, "")
			for _, q := range oracles {
				theirs := qemuInfo(t, q, dir, "--output=json", image)
				theirText := qemuInfo(t, q, dir, image)
				if major, _ := q.Version(t); major >= 8 {
					if qemuJSON != theirs {
						t.Errorf("%s: info --json differs from qemu-img info --output=json --backing-chain:\n%s", q.Name(t), imagetest.LineDiff(qemuJSON, theirs))
					}
					if qemuText != theirText {
						t.Errorf("%s: info differs from qemu-img info --backing-chain:\n%s", q.Name(t), imagetest.LineDiff(qemuText, theirText))
					}
					continue
				}
				// QEMU before 8.0: every key it prints, and no other
				// but "children".
				var old []map[string]any
				if err := json.Unmarshal([]byte(theirs), &old); err != nil {
					t.Fatalf("%s: %v\n%s", q.Name(t), err, theirs)
				}
				var ours []map[string]any
				json.Unmarshal([]byte(qemuJSON), &ours)
				for _, l := range ours {
					delete(l, "children")
				}
				if !reflect.DeepEqual(ours, old) {
					t.Errorf("%s: info --json (without children) differs from qemu-img info --output=json --backing-chain:\n%s",
						q.Name(t), imagetest.LineDiff(indentJSON(t, ours), indentJSON(t, old)))
				}
				if got := childNodeText.ReplaceAllString(qemuText, ""); got != theirText {
					t.Errorf("%s: info (without Child node) differs from qemu-img info --backing-chain:\n%s", q.Name(t), imagetest.LineDiff(got, theirText))
				}
			}
		})
	}
}

// checkOwnKeys checks the "chainfs" member of each layer.
func checkOwnKeys(t *testing.T, dir string, row infoRow, infos []map[string]any) {
	t.Helper()
	for i, l := range infos {
		own, _ := l["chainfs"].(map[string]any)
		want := map[string]any{"depth": float64(i)}
		for _, p := range row.probed {
			if p == i {
				want["format-probed"] = true
			}
		}
		if i == 0 && row.dataFile != nil {
			want["data-file-path"] = row.dataFile(dir)
		}
		if !reflect.DeepEqual(own, want) {
			t.Errorf("layer %d: chainfs member %v, want %v", i, own, want)
		}
	}
}

// qemuInfo runs q's qemu-img info --backing-chain in dir.
func qemuInfo(t *testing.T, q imagetest.QEMU, dir string, args ...string) string {
	t.Helper()
	out, stderr, err := q.ImgErr(t, dir, append([]string{"info", "--backing-chain"}, args...)...)
	if err != nil {
		t.Fatalf("%s: qemu-img info %q: %v\n%s", q.Name(t), args, err, stderr)
	}
	return out
}

// chainfsIn runs the binary in dir and returns its stdout and stderr; it
// fails the test unless it exits 0.
func chainfsIn(t *testing.T, dir string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(chainfsBin, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chainfs %q: %v\n%s", args, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

func indentJSON(t *testing.T, v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

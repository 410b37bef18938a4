package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-V"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != exitOK {
			t.Fatalf("chainfs %q: exit %d: %s", args, code, errb.String())
		}
		first, rest, _ := strings.Cut(out.String(), "\n")
		if first != "chainfs "+versionString() {
			t.Errorf("chainfs %q: first line %q", args, first)
		}
		// The build information, as "go version -m" prints it.
		for _, want := range []string{"go\tgo1.", "path\tgithub.com/chainfs/chainfs/", "dep\tgithub.com/hanwen/go-fuse/v2\t"} {
			if !strings.Contains(rest, want) {
				t.Errorf("chainfs %q lacks %q:\n%s", args, want, out.String())
			}
		}
	}
	version = "v1.2.3-4-gabcdef"
	defer func() { version = "" }()
	if got := versionString(); got != "v1.2.3-4-gabcdef" {
		t.Errorf("stamped version reads %q", got)
	}
}

// TestMountForm: a first word that names no command is an IMAGE only if
// it looks like one; anything else is an unknown command, not a mount.
func TestMountForm(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "disk.qcow2"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for arg, want := range map[string]bool{
		"disk.qcow2":         true,  // exists
		"/vm/missing.qcow2":  true,  // a path: /etc/fstab's missing image is a mount error
		"./missing.qcow2":    true,  // a path
		"verison":            false, // a typo
		"mout":               false,
		"missing.qcow2":      false, // no such file, no slash
		"-x":                 false,
		"":                   false,
		"sub/dir/disk.qcow2": true,
	} {
		if got := mountForm(arg); got != want {
			t.Errorf("mountForm(%q) = %v, want %v", arg, got, want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"verison"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), `unknown command "verison"`) {
		t.Errorf("chainfs verison: exit %d, %q", code, errb.String())
	}
}

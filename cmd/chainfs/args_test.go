package main

import (
	"bytes"
	"flag"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseArgsInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		pos, os []string
		fg      bool
	}{
		{args: []string{"img", "mnt"}, pos: []string{"img", "mnt"}},
		{args: []string{"-f", "img", "mnt"}, pos: []string{"img", "mnt"}, fg: true},
		{args: []string{"img", "mnt", "-o", "ro,allow_other"}, pos: []string{"img", "mnt"}, os: []string{"ro,allow_other"}},
		{args: []string{"img", "-o", "ro", "mnt", "--foreground", "-o", "noexec"}, pos: []string{"img", "mnt"}, os: []string{"ro", "noexec"}, fg: true},
		{args: []string{"-f", "--", "-img", "mnt"}, pos: []string{"-img", "mnt"}, fg: true},
		{args: []string{"img", "--", "-f"}, pos: []string{"img", "-f"}},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var fg bool
		var o optList
		fs.BoolVar(&fg, "f", false, "")
		fs.BoolVar(&fg, "foreground", false, "")
		fs.Var(&o, "o", "")
		pos, err := parseArgs(fs, tc.args)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !slices.Equal(pos, tc.pos) || !slices.Equal([]string(o), tc.os) || fg != tc.fg {
			t.Errorf("%q: positional %q, -o %q, -f %v; want %q, %q, %v", tc.args, pos, o, fg, tc.pos, tc.os, tc.fg)
		}
	}
}

func TestMountOpts(t *testing.T) {
	// What /etc/fstab lines and mount.fuse3 hand over.
	m, err := parseMountOpts([]string{"ro,allow_other,nofail,_netdev,defaults,noauto,user,users,dev,suid,x-systemd.automount", "noexec,fsname=vm,max_read=131072"})
	if err != nil {
		t.Fatal(err)
	}
	if !m.fs.AllowOther || !m.fs.DefaultPermissions {
		t.Errorf("allow_other: AllowOther %v, DefaultPermissions %v; want both (allow_other implies default_permissions)", m.fs.AllowOther, m.fs.DefaultPermissions)
	}
	if m.fs.FsName != "vm" || m.fs.MaxRead != 131072 || !reflect.DeepEqual(m.fs.ExtraOptions, []string{"noexec"}) {
		t.Errorf("got FsName %q MaxRead %d ExtraOptions %q", m.fs.FsName, m.fs.MaxRead, m.fs.ExtraOptions)
	}
	m, err = parseMountOpts([]string{"rw"})
	if err != nil || m.fs.AllowOther || m.fs.DefaultPermissions {
		t.Errorf("rw: %+v, %v", m, err)
	}
	m, err = parseMountOpts([]string{"confine=/srv/images,max_depth=3"})
	if err != nil || m.confine != "/srv/images" || m.maxDepth != 3 {
		t.Errorf("confine=/srv/images,max_depth=3: %+v, %v", m, err)
	}
	for _, bad := range []string{"uid=5", "max_read=12", "frobnicate", "max_depth=0", "max_depth=x", "confine"} {
		if _, err := parseMountOpts([]string{bad}); err == nil {
			t.Errorf("-o %s accepted", bad)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--bogus"},
		{"mount", "only-one"},
		{"mount", "-o", "uid=1", "img", "mnt"},
		{"mount", "--log-format", "xml", "img", "mnt"},
		{"info"},
		{"map", "--layer", "x", "img"},
		{"info", "--max-depth", "0", "img"},
		{"depth", "--confine", "/nonexistent-dir", "img"},
		{"info", "--confine", "/etc/passwd", "img"},
		{"mount", "--max-depth", "-1", "img", "mnt"},
		{"mount", "--confine", "/nonexistent-dir", "img", "mnt"},
		{"mount", "-o", "max_depth=0", "img", "mnt"},
		{"umount"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != exitUsage {
			t.Errorf("chainfs %q: exit %d, want %d (usage); stderr %q", args, code, exitUsage, errb.String())
		} else if errb.Len() == 0 {
			t.Errorf("chainfs %q: no message on stderr", args)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"info", "/nonexistent.qcow2"}, &out, &errb); code != exitImage || !strings.Contains(errb.String(), "/nonexistent.qcow2") {
		t.Errorf("info of a missing image: exit %d, stderr %q", code, errb.String())
	}
}

package tests

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReadOnlyImages: chainfs needs nothing but read access. The chains
// are made read-only twice over, mode 0444 (which root ignores) and a
// read-only bind mount of their directory (which root does not), and
// mounted from there: every check of TestChains passes, and the locks are
// still taken (they live on read-only descriptors), so qemu-io cannot open
// the files for writing through their writable path.
func TestReadOnlyImages(t *testing.T) {
	for _, name := range []string{"raw base with holes, compressed and zero clusters above", "external data file"} {
		t.Run(name, func(t *testing.T) {
			var c chainCase
			for _, cc := range chainCases {
				if cc.name == name {
					c = cc
				}
			}
			if c.build == nil {
				t.Fatalf("no chain case %q", name)
			}
			dir := t.TempDir()
			images := filepath.Join(dir, "images")
			if err := os.Mkdir(images, 0o755); err != nil {
				t.Fatal(err)
			}
			chain := c.build(t, images)
			entries, err := os.ReadDir(images)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if err := os.Chmod(filepath.Join(images, e.Name()), 0o444); err != nil {
					t.Fatal(err)
				}
			}
			ro := bindReadOnly(t, images, filepath.Join(dir, "ro"))
			if f, err := os.OpenFile(filepath.Join(ro, filepath.Base(chain[0].path)), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
				if err == nil {
					f.Close()
				}
				t.Fatalf("opening an image read-write through the read-only bind mount: %v, want EROFS", err)
			}
			var roChain []layer
			for _, l := range chain {
				roChain = append(roChain, layer{filepath.Join(ro, filepath.Base(l.path)), l.format})
			}

			mnt := mount(t, roChain[0].path)
			checkNames(t, mnt, roChain)
			for i, l := range roChain {
				t.Run(viewName(i, l), func(t *testing.T) { checkLayer(t, mnt, i, l) })
			}
			for _, l := range chain {
				cmd := exec.Command("qemu-io", "-f", l.format, "-c", "write 0 4k", l.path)
				cmd.Dir = images
				out, err := cmd.CombinedOutput()
				if err == nil || !strings.Contains(string(out), `Failed to get "write" lock`) {
					t.Errorf("qemu-io write to %s while mounted read-only: %v, %s", filepath.Base(l.path), err, out)
				}
			}
		})
	}
}

// bindReadOnly bind-mounts dir at ro, read-only, until the test ends. The
// cleanup is registered before any chainfs mount of the test, so it runs
// after their unmounts.
func bindReadOnly(t *testing.T, dir, ro string) string {
	t.Helper()
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", dir, ro).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", ro).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", ro, err, out)
			exec.Command("umount", "-l", ro).Run()
		}
	})
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", ro).CombinedOutput(); err != nil {
		t.Fatalf("mount -o remount,bind,ro: %v: %s", err, out)
	}
	return ro
}

// TestViewPermissions: the views keep the image's owner and read bits
// (the root directory the opened image's, with x where r is), and with
// allow_other the kernel enforces them (default_permissions): nobody
// cannot list the mount of a root image of mode 0600 nor read its views,
// but can those of one of mode 0644. Without allow_other nobody gets in
// at all.
func TestViewPermissions(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"private.raw": 0o600, "public.raw": 0o644} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 64<<10), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	asNobody := func(args ...string) (string, error) {
		out, err := exec.Command("setpriv", append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct {
		image    string
		opts     string
		wantMode uint32
		readable bool
	}{
		{"private.raw", "allow_other", 0o400, false},
		{"public.raw", "allow_other", 0o444, true},
		{"public.raw", "ro", 0o444, false}, // no allow_other: only root
	} {
		mnt := mount(t, filepath.Join(dir, c.image), "-o", c.opts)
		openUp(t, filepath.Dir(mnt))
		var dst syscall.Stat_t
		if err := syscall.Stat(mnt, &dst); err != nil || dst.Mode&0o7777 != c.wantMode|c.wantMode>>2 {
			t.Errorf("%s: the mount's root has mode %o, %v; want %o", c.image, dst.Mode&0o7777, err, c.wantMode|c.wantMode>>2)
		}
		if out, err := asNobody("ls", mnt); c.opts == "allow_other" && (err == nil) != c.readable {
			t.Errorf("%s -o %s: ls of the mount as nobody: %v, %q", c.image, c.opts, err, out)
		}
		view := filepath.Join(mnt, "0-"+c.image+".raw")
		var st syscall.Stat_t
		if err := syscall.Stat(view, &st); err != nil || st.Mode&0o7777 != c.wantMode || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s -o %s: mode %o uid %d gid %d, %v; want %o root", c.image, c.opts, st.Mode&0o7777, st.Uid, st.Gid, err, c.wantMode)
		}
		out, err := asNobody("cat", view)
		switch {
		case c.readable && (err != nil || len(out) != 64<<10):
			t.Errorf("%s -o %s: cat as nobody: %v, %d bytes; want the 64 KiB", c.image, c.opts, err, len(out))
		case !c.readable && (err == nil || !strings.Contains(out, "Permission denied")):
			t.Errorf("%s -o %s: cat as nobody: %v, %.100q; want Permission denied", c.image, c.opts, err, out)
		}
	}
}

// openUp makes dir and its parents up to the test root searchable by
// everyone, so that another user can reach a mount point below it.
func openUp(t *testing.T, dir string) {
	t.Helper()
	for d := dir; strings.HasPrefix(d, testRoot); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if d == testRoot {
			break
		}
	}
}

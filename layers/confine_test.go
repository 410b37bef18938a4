package layers_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// TestConfine: with Options.Confine, every file of the chain must really
// lie inside the directory, however its name gets out of it; the error
// names the image that named the file, the name and the real path.
func TestConfine(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	root := t.TempDir()
	jail := filepath.Join(root, "jail")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{jail, outside, filepath.Join(jail, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	imagetest.Create(t, outside, "secret.raw", "raw", 1*MiB)
	imagetest.Create(t, jail, "base.raw", "raw", 1*MiB)
	symlink := func(target, link string) {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	symlink(filepath.Join(outside, "secret.raw"), filepath.Join(jail, "link.raw"))
	symlink("base.raw", filepath.Join(jail, "inner.raw"))
	symlink(outside, filepath.Join(jail, "sub", "door"))
	top := func(name, backing string) string {
		p := filepath.Join(jail, name)
		imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", p, "1M")
		return p
	}
	rows := []struct {
		name  string
		image string
		want  []string // in the error; none: the chain opens
	}{
		{"backing inside", top("ok.qcow2", "base.raw"), nil},
		{"backing through a symlink that stays inside", top("inner.qcow2", "inner.raw"), nil},
		{"absolute backing name outside", top("abs.qcow2", filepath.Join(outside, "secret.raw")),
			[]string{"abs.qcow2: backing file", "secret.raw", "lies outside " + jail}},
		{"relative backing name climbing out", top("dots.qcow2", "../outside/secret.raw"),
			[]string{`dots.qcow2: backing file "../outside/secret.raw"`, "real path " + filepath.Join(outside, "secret.raw")}},
		{"backing through a symlink to a file outside", top("link.qcow2", "link.raw"),
			[]string{`link.qcow2: backing file "link.raw"`, "real path " + filepath.Join(outside, "secret.raw")}},
		{"backing through a symlinked directory", top("door.qcow2", "sub/door/secret.raw"),
			[]string{`backing file "sub/door/secret.raw"`, "lies outside"}},
		{"the image itself outside", filepath.Join(jail, "link.raw"),
			[]string{"link.raw: real path " + filepath.Join(outside, "secret.raw")}},
	}
	// An external data file outside, through a symlink.
	data := filepath.Join(jail, "data.qcow2")
	imagetest.Create(t, jail, "data.qcow2", "qcow2", 1*MiB, "data_file=data.raw")
	os.Remove(filepath.Join(jail, "data.raw"))
	symlink(filepath.Join(outside, "secret.raw"), filepath.Join(jail, "data.raw"))
	rows = append(rows, struct {
		name  string
		image string
		want  []string
	}{"external data file through a symlink", data, []string{`data.qcow2: external data file "data.raw"`, "lies outside"}})

	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			log, _ := testLog()
			c, err := layers.Open(r.image, &layers.Options{Confine: jail, Log: log})
			if r.want == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("Open succeeded; want an error containing %q", r.want)
			}
			if !errors.Is(err, layers.ErrConfined) {
				t.Errorf("error %v is not ErrConfined", err)
			}
			contains(t, err, r.want...)
			// Without Confine the same chain opens.
			if c, err := layers.Open(r.image, &layers.Options{Log: log}); err != nil {
				t.Errorf("without Confine: %v", err)
			} else {
				c.Close()
			}
		})
	}
}

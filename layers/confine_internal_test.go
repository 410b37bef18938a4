package layers

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestConfinedFile: the check after opening goes by the file the
// descriptor has open, not by the name: a name that was swapped for a
// symlink to a file outside after confined looked at it is caught.
func TestConfinedFile(t *testing.T) {
	root := t.TempDir()
	jail, outside := filepath.Join(root, "jail"), filepath.Join(root, "outside")
	os.Mkdir(jail, 0o755)
	os.Mkdir(outside, 0o755)
	secret := filepath.Join(outside, "secret.raw")
	if err := os.WriteFile(secret, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(jail, "disk.raw")
	if err := os.WriteFile(name, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := confined(jail, name); err != nil {
		t.Fatalf("confined before the swap: %v", err)
	}
	// The swap: name now leads outside, and that is what gets opened.
	os.Remove(name)
	if err := os.Symlink(secret, name); err != nil {
		t.Fatal(err)
	}
	f, err := openHostFile(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := confinedFile(jail, f); !errors.Is(err, ErrConfined) {
		t.Errorf("confinedFile after the swap: %v, want ErrConfined", err)
	}
	if err := confinedFile(root, f); err != nil {
		t.Errorf("confinedFile with the file inside: %v", err)
	}
	if err := confinedFile("", f); err != nil {
		t.Errorf("confinedFile without confinement: %v", err)
	}
}

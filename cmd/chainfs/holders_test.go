package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestProcessHolds: this process, holding a file under a directory with
// a space in its name open, mapped and as its working directory, is
// found holding it all three ways; nothing is found for another
// directory whose name merely starts the same.
func TestProcessHolds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt point")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "0-top.qcow2.raw")
	if err := os.WriteFile(file, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, 4096, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(m)
	t.Chdir(dir)

	found, err := processHolds(os.Getpid(), dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range found {
		got = append(got, h.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		file + " (fd ",
		file + " (memory mapping)",
		dir + " (working directory)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("holders lack %q:\n%s", want, all)
		}
	}
	if found, _ := processHolds(os.Getpid(), dir[:len(dir)-1]); len(found) != 0 {
		t.Errorf("holders of %q: %v", dir[:len(dir)-1], found)
	}
}

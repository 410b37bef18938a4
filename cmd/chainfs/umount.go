package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// cmdUmount unmounts with fusermount3 -u, and lazily (-z) if the mount is
// busy, so it never stays behind: the kernel finishes the unmount when the
// last file on it is closed, and the server then exits.
func cmdUmount(args []string, stderr io.Writer) int {
	fset := newFlagSet("umount", "umount MOUNTPOINT", stderr)
	pos, err := parseArgs(fset, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fset.Usage()
		return exitUsage
	}
	mnt, err := filepath.Abs(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "chainfs umount: %v\n", err)
		return exitUsage
	}
	if !mounted(mnt) {
		fmt.Fprintf(stderr, "chainfs umount: %s is not mounted\n", mnt)
		return exitUnmount
	}
	out, err := fusermount("-u", mnt)
	if err == nil {
		return exitOK
	}
	if lerr := lazyUnmount(mnt); lerr != nil {
		fmt.Fprintf(stderr, "chainfs umount: %s: %v: %s; lazily: %v\n", mnt, err, strings.TrimSpace(out), lerr)
		return exitUnmount
	}
	fmt.Fprintf(stderr, "chainfs umount: %s was busy (%s); unmounted lazily: it goes once the last file on it is closed\n", mnt, strings.TrimSpace(out))
	return exitOK
}

// mounted reports whether mnt is a mount point, from /proc/self/mountinfo
// (field 5 is the mount point, with spaces and the like octal-escaped).
// When mountinfo cannot be read it says yes and lets fusermount3 decide.
func mounted(mnt string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return true
	}
	defer f.Close()
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(mnt)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == esc {
			return true
		}
	}
	return false
}

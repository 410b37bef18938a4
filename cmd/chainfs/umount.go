package main

import (
	"fmt"
	"io"
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
	out, err := fusermount("-u", mnt)
	if err == nil {
		return exitOK
	}
	if strings.Contains(out, "not found in") || strings.Contains(out, "not mounted") {
		fmt.Fprintf(stderr, "chainfs umount: %s is not mounted: %s\n", mnt, strings.TrimSpace(out))
		return exitUnmount
	}
	if lerr := lazyUnmount(mnt); lerr != nil {
		fmt.Fprintf(stderr, "chainfs umount: %s: %v: %s; lazily: %v\n", mnt, err, strings.TrimSpace(out), lerr)
		return exitUnmount
	}
	fmt.Fprintf(stderr, "chainfs umount: %s was busy (%s); unmounted lazily: it goes once the last file on it is closed\n", mnt, strings.TrimSpace(out))
	return exitOK
}

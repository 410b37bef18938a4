package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const umountSynopsis = `umount [--wait] MOUNTPOINT

Unmounts MOUNTPOINT with fusermount3 -u. If files on it are still open it
unmounts lazily: the mount leaves the directory tree at once, and its
server keeps running, with the chain's images open and QEMU's locks on
them, until the last of them is closed. chainfs then lists what holds
them: processes (open files, working directories, memory mappings) and
loop devices.

options:`

// cmdUmount unmounts with fusermount3 -u, and lazily (-z) if the mount is
// busy, so it never stays behind: the kernel finishes the unmount when the
// last file on it is closed, and the server then exits. Lazy is the
// default because a mount nobody can remove is worse than one that goes a
// little later; what still holds it is printed, since until then the
// images stay locked.
func cmdUmount(args []string, stderr io.Writer) int {
	fset := newFlagSet("umount", umountSynopsis, stderr)
	wait := fset.Bool("wait", false, "block until the server has exited and released its locks on the images (once nothing holds the mount)")
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
	conn, isMounted := mountConn(mnt)
	if !isMounted {
		fmt.Fprintf(stderr, "chainfs umount: %s is not mounted\n", mnt)
		return exitUnmount
	}
	// The server is found while the mount is still attached.
	var servers []process
	known := false
	if *wait && conn != 0 {
		servers, known = fuseServers(conn)
	}
	out, err := fusermount("-u", mnt)
	busy := err != nil
	if busy {
		holders, hidden := findHolders(mnt)
		if lerr := lazyUnmount(mnt); lerr != nil {
			fmt.Fprintf(stderr, "chainfs umount: %s: %v: %s; lazily: %v\n", mnt, err, strings.TrimSpace(out), lerr)
			return exitUnmount
		}
		reportBusy(stderr, mnt, strings.TrimSpace(out), holders, hidden, *wait)
	}
	if *wait {
		return waitForServer(stderr, mnt, conn, servers, known, busy)
	}
	return exitOK
}

// reportBusy says that mnt was unmounted lazily, what still holds it, and
// what that means for the images' locks.
func reportBusy(w io.Writer, mnt, why string, holders []holder, hidden int, waiting bool) {
	fmt.Fprintf(w, "chainfs umount: %s was busy (%s); unmounted lazily: it is gone from the directory tree, "+
		"but its server keeps the chain's images open, and QEMU's locks on them (a VM cannot open them for writing), "+
		"until the last file on it is closed.\n", mnt, why)
	if len(holders) == 0 {
		fmt.Fprintf(w, "chainfs umount: found no process or loop device that holds it\n")
	} else {
		fmt.Fprintf(w, "chainfs umount: still held by:\n")
		for _, h := range holders {
			fmt.Fprintf(w, "  %s\n", h)
		}
	}
	if hidden > 0 {
		fmt.Fprintf(w, "chainfs umount: (%d processes of other users could not be looked into)\n", hidden)
	}
	if !waiting {
		fmt.Fprintf(w, "chainfs umount: \"chainfs umount --wait\" waits until the server has exited\n")
	}
}

// waitForServer blocks until the processes serving the mount have exited,
// saying so if the mount was busy (else the wait is short, and quiet).
// Without them (a kernel that does not name a /dev/fuse descriptor's
// connection) it waits for the kernel to drop the connection instead,
// which is when the server is told to exit.
func waitForServer(stderr io.Writer, mnt string, conn uint64, servers []process, known, busy bool) int {
	gone := func() bool {
		for _, p := range servers {
			if p.alive() {
				return false
			}
		}
		return true
	}
	if len(servers) > 0 {
		if busy && !gone() {
			var names []string
			for _, p := range servers {
				names = append(names, fmt.Sprintf("%s, pid %d", p.comm, p.pid))
			}
			fmt.Fprintf(stderr, "chainfs umount: waiting for the server of %s (%s) to exit\n", mnt, strings.Join(names, "; "))
		}
		waitGone(gone)
		return exitOK
	}
	dir := fuseConnDir(conn)
	if _, err := os.Stat(dir); err != nil {
		if known {
			return exitOK // the kernel names no server: it has gone already
		}
		fmt.Fprintf(stderr, "chainfs umount: --wait: cannot tell which process serves %s (no fuse_connection in /proc/*/fdinfo, no %s)\n", mnt, dir)
		return exitFailure
	}
	if busy {
		fmt.Fprintf(stderr, "chainfs umount: waiting for the kernel to release %s (FUSE connection %d)\n", mnt, conn)
	}
	waitGone(func() bool { _, err := os.Stat(dir); return err != nil })
	return exitOK
}

// mountConn reports whether mnt is a mount point, from
// /proc/self/mountinfo, and its device number as the kernel numbers FUSE
// connections (major<<20 | minor; 0 if unknown). Field 3 is the device,
// field 5 the mount point, with spaces and the like octal-escaped. When
// mountinfo cannot be read it says mounted and lets fusermount3 decide.
func mountConn(mnt string) (conn uint64, ok bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return 0, true
	}
	defer f.Close()
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(mnt)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) <= 4 || fields[4] != esc {
			continue
		}
		// The last mount on mnt is the one on top.
		ok, conn = true, 0
		if ma, mi, found := strings.Cut(fields[2], ":"); found {
			major, err1 := strconv.ParseUint(ma, 10, 32)
			minor, err2 := strconv.ParseUint(mi, 10, 32)
			if err1 == nil && err2 == nil {
				conn = major<<20 | minor
			}
		}
	}
	return conn, ok
}

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// What keeps a busy mount alive, found as fuser -m and losetup find it:
// every process's open files, working and root directories, executable and
// memory mappings under /proc, and every loop device's backing file in
// /sys/block. Only names are compared (readlink, never stat), so a hung
// filesystem elsewhere cannot block the search.

// holder is one thing that holds a file on the mount.
type holder struct {
	pid  int    // 0 for a loop device
	comm string // process name, or the loop device
	path string // the file held
	how  string // "fd 3", "working directory", "memory mapping", "backing file"
}

func (h holder) String() string {
	if h.pid == 0 {
		return fmt.Sprintf("%s: %s %s", h.comm, h.how, h.path)
	}
	return fmt.Sprintf("pid %d (%s): %s (%s)", h.pid, h.comm, h.path, h.how)
}

// under reports whether path is mnt or lies below it.
func under(path, mnt string) bool {
	return path == mnt || strings.HasPrefix(path, mnt+"/") || mnt == "/"
}

// findHolders lists the processes and loop devices holding files under
// mnt, and how many processes it could not look into (other users'
// processes, for a user who is not root).
func findHolders(mnt string) (holders []holder, hidden int) {
	self := os.Getpid()
	for _, pid := range pids() {
		if pid == self {
			continue
		}
		found, err := processHolds(pid, mnt)
		if errors.Is(err, fs.ErrPermission) {
			hidden++
		}
		holders = append(holders, found...)
	}
	return append(holders, loopHolders(mnt)...), hidden
}

// pids lists the processes in /proc.
func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// processHolds lists what process pid holds under mnt.
func processHolds(pid int, mnt string) ([]holder, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	comm := processName(pid)
	var found []holder
	add := func(path, how string) {
		if under(path, mnt) {
			found = append(found, holder{pid: pid, comm: comm, path: path, how: how})
		}
	}
	for _, l := range []struct{ link, how string }{{"cwd", "working directory"}, {"root", "root directory"}, {"exe", "executable"}} {
		if p, err := os.Readlink(dir + "/" + l.link); err == nil {
			add(p, l.how)
		}
	}
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return found, err
	}
	for _, fd := range fds {
		if p, err := os.Readlink(dir + "/fd/" + fd.Name()); err == nil {
			add(p, "fd "+fd.Name())
		}
	}
	if maps, err := os.Open(dir + "/maps"); err == nil {
		defer maps.Close()
		seen := map[string]bool{}
		sc := bufio.NewScanner(maps)
		for sc.Scan() {
			// "address perms offset dev inode   path": the path, which
			// may hold spaces, runs from the first slash to the end.
			line := sc.Text()
			i := strings.Index(line, " /")
			if i < 0 {
				continue
			}
			if p := line[i+1:]; !seen[p] {
				seen[p] = true
				add(p, "memory mapping")
			}
		}
	}
	return found, nil
}

// processName is the command name of pid, from /proc/PID/comm.
func processName(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// loopHolders lists the loop devices whose backing file lies under mnt.
func loopHolders(mnt string) []holder {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var found []holder
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if p := strings.TrimSpace(string(b)); under(p, mnt) {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			found = append(found, holder{comm: dev, path: p, how: "backing file"})
		}
	}
	return found
}

// process identifies a process across time: a pid with the start time
// the kernel gives it (field 22 of /proc/PID/stat), so that a reused pid
// is not mistaken for it.
type process struct {
	pid   int
	start string
	comm  string
}

// processStart returns pid's start time and whether it runs (and is not a
// zombie, which holds no files any more).
func processStart(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	// The name (field 2) may hold spaces and parentheses: fields count
	// from the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return f[19], true
}

func (p process) alive() bool {
	start, ok := processStart(p.pid)
	return ok && start == p.start
}

// fuseServers finds the processes that serve the FUSE connection conn
// (the mount's device number): those with /dev/fuse open on it, which the
// kernel names in the descriptor's fdinfo ("fuse_connection:", Linux 6.x).
// ok is false when the kernel does not say (older kernels).
func fuseServers(conn uint64) (servers []process, ok bool) {
	want := strconv.FormatUint(conn, 10)
	for _, pid := range pids() {
		dir := "/proc/" + strconv.Itoa(pid)
		fds, err := os.ReadDir(dir + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if p, err := os.Readlink(dir + "/fd/" + fd.Name()); err != nil || p != "/dev/fuse" {
				continue
			}
			info, err := os.ReadFile(dir + "/fdinfo/" + fd.Name())
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(info), "\n") {
				k, v, _ := strings.Cut(line, ":")
				if k != "fuse_connection" {
					continue
				}
				ok = true
				if strings.TrimSpace(v) == want {
					if start, alive := processStart(pid); alive {
						servers = append(servers, process{pid: pid, start: start, comm: processName(pid)})
					}
				}
			}
			if slices.ContainsFunc(servers, func(s process) bool { return s.pid == pid }) {
				break
			}
		}
	}
	return servers, ok
}

// fuseConnDir is where the kernel shows FUSE connection conn while it
// lives (fusectl), if fusectl is mounted.
func fuseConnDir(conn uint64) string {
	return "/sys/fs/fuse/connections/" + strconv.FormatUint(conn, 10)
}

// waitGone polls until done reports true.
func waitGone(done func() bool) {
	for !done() {
		time.Sleep(50 * time.Millisecond)
	}
}

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The readiness protocol between a background mount and the command that
// started it (as gocryptfs and sshfs do it): the command re-executes
// itself in the foreground with one end of a pipe as an inherited file
// descriptor, named by readyEnv; the server writes readyByte once the
// mount is up, or the error text if it fails, and closes the pipe.
const (
	readyEnv  = "CHAINFS_READY_FD"
	readyByte = 0
)

// readyPipe returns the readiness pipe this process inherited, or nil.
func readyPipe() (*os.File, error) {
	v, ok := os.LookupEnv(readyEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(readyEnv) // not for fusermount3 and other children
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%w: %q", errNoReadyFD, v)
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "ready"), nil
}

// daemonize starts "chainfs mount --foreground ARGS" in a new session with
// a readiness pipe, and waits: exit 0 once the server says the mount is
// ready, else the server's exit code with its error on stderr. The server
// shares our stderr until it is ready, so what fusermount3 says reaches
// the user.
func daemonize(args []string, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "chainfs: finding my own executable: %v\n", err)
		return exitDaemon
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "chainfs: %v\n", err)
		return exitDaemon
	}
	defer r.Close()
	cmd := exec.Command(exe, append([]string{"mount", "--foreground"}, args...)...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.Stdout = os.Stdout
	cmd.Stderr = stderr
	if f, ok := stderr.(*os.File); ok {
		cmd.Stderr = f
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		fmt.Fprintf(stderr, "chainfs: starting the background server: %v\n", err)
		return exitDaemon
	}
	w.Close()
	msg, _ := io.ReadAll(r)
	if len(msg) == 1 && msg[0] == readyByte {
		cmd.Process.Release()
		return exitOK
	}
	// The server failed: it exits right after writing why.
	werr := cmd.Wait()
	code := exitDaemon
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() > 0 {
		code = cmd.ProcessState.ExitCode()
	}
	if len(msg) == 0 {
		fmt.Fprintf(stderr, "chainfs: the background server ended (%v) before the mount was ready\n", werr)
		if code == exitOK {
			code = exitDaemon
		}
		return code
	}
	fmt.Fprintf(stderr, "chainfs: %s\n", msg)
	return code
}

// detachStdio points stdin and stdout at /dev/null, and stderr at the log
// file (so that a crash's stack trace lands in the log) or /dev/null.
func detachStdio(logFile *os.File) error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	errTo := null
	if logFile != nil {
		errTo = logFile
	}
	for fd, to := range []*os.File{null, null, errTo} {
		if err := unix.Dup3(int(to.Fd()), fd, 0); err != nil {
			return fmt.Errorf("dup3 onto fd %d: %w", fd, err)
		}
	}
	return nil
}

// fusermount runs fusermount3 (or fusermount) with args and returns its
// combined output.
func fusermount(args ...string) (string, error) {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return "", fmt.Errorf("neither fusermount3 nor fusermount is installed")
		}
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

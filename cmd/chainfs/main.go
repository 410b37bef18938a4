// Command chainfs mounts a QEMU disk-image backing chain read-only, every
// layer as a raw view with its qemu-img map and allocation depth, and
// prints a chain's layers, maps and depths without mounting.
//
//	chainfs mount [options] IMAGE MOUNTPOINT
//	chainfs umount [--wait] MOUNTPOINT
//	chainfs info [--json] IMAGE
//	chainfs map [--layer N] IMAGE
//	chainfs depth [--layer N] [--json] IMAGE
//	chainfs bitmap [--layer N] [--json] IMAGE BITMAP
//	chainfs IMAGE MOUNTPOINT [-o OPTIONS]   (as mount.fuse3 calls it, for /etc/fstab)
//	chainfs version | --version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `usage:
  chainfs mount [options] IMAGE MOUNTPOINT   mount the chain of IMAGE read-only
  chainfs umount [--wait] MOUNTPOINT         unmount (lazily if busy, naming what holds it)
  chainfs info [--json] IMAGE                qemu-img info --backing-chain of IMAGE
  chainfs map [--layer N] IMAGE              qemu-img map --output=json of a layer
  chainfs depth [--layer N] [--json] IMAGE   nbdinfo --map=qemu:allocation-depth of a layer
  chainfs bitmap [--layer N] [--json] IMAGE BITMAP
                                             nbdinfo --map=qemu:dirty-bitmap:BITMAP of a layer
  (map and depth take --snapshot SNAP: an internal snapshot of the layer)
  chainfs IMAGE MOUNTPOINT [-o OPTIONS]      mount, as mount.fuse3 (/etc/fstab) calls it
  chainfs version                            the version and Go build information

For every layer N (0 is IMAGE) the mount shows N-NAME.raw (the layer read
with its backing chain), N-NAME.map.json and N-NAME.depth; N-NAME@SNAP.raw,
.map.json and .depth for each internal snapshot SNAP of the layer, and
N-NAME.BITMAP.bitmap for each persistent dirty bitmap.
Run "chainfs COMMAND -h" for the options of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "mount":
		return cmdMount(args[1:], stderr)
	case "umount", "unmount":
		return cmdUmount(args[1:], stderr)
	case "info":
		return cmdInfo(args[1:], stdout, stderr)
	case "map":
		return cmdMap(args[1:], stdout, stderr)
	case "depth":
		return cmdDepth(args[1:], stdout, stderr)
	case "bitmap":
		return cmdBitmap(args[1:], stdout, stderr)
	case "version", "-version", "--version", "-V":
		return cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if mountForm(args[0]) {
		// mount.fuse3's form: chainfs IMAGE MOUNTPOINT -o OPTIONS.
		return cmdMount(args, stderr)
	}
	fmt.Fprintf(stderr, "chainfs: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// mountForm reports whether a first argument that names no command is the
// IMAGE of mount.fuse3's form (chainfs IMAGE MOUNTPOINT -o OPTIONS, what
// /etc/fstab and mount -t fuse.chainfs run): a path that exists, or one
// with a slash in it, so that a missing image in /etc/fstab is reported
// as such. Any other word ("verison", "mout") is an unknown command: it
// must not be taken for an image and fail with a confusing mount error.
// Commands win over files of the same name in the working directory;
// ./info mounts a file named info.
func mountForm(arg string) bool {
	if arg == "" || strings.HasPrefix(arg, "-") {
		return false
	}
	if strings.Contains(arg, "/") {
		return true
	}
	_, err := os.Stat(arg)
	return err == nil
}

// parseArgs parses args with fs, allowing flags after positional
// arguments (chainfs IMAGE MNT -o ro, as mount.fuse3 calls it), and
// returns the positional arguments. Everything after "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// newFlagSet returns a flag set that reports errors itself (to stderr)
// and prints the command's usage line before its flags.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chainfs %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// flagExit maps a parse error to an exit code: -h is not a failure.
func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

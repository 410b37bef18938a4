// Command ceiling is the reference point of tests/bench/compare.sh: the
// least a go-fuse server can do to serve a disk image. It mounts a
// directory holding one read-only file, NAME, whose reads are a pread of
// the raw image RAW into go-fuse's buffer, and nothing else, with the mount
// options chainfs uses (fs.GoFuseOptions: ro, max_read and readahead of
// 1 MiB with the readahead window widened after mounting, 64 background
// requests, no splice, no READDIRPLUS, no xattrs, hour-long
// attribute and entry timeouts; files opened with keep_cache and
// noflush, st_blksize 1 MiB), and chainfs's scheduling of go-fuse's
// request readers (fs.MountWithReaders). Whatever chainfs spends above it
// is the cost of resolving the chain.
//
//	ceiling [-name NAME] [-max-read BYTES] RAW MOUNTPOINT
//
// It serves in the foreground until unmounted or sent SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	chainfs "github.com/chainfs/chainfs/fs"
)

// Copied from chainfs's fs package defaults (fs/options.go); kept as
// literals so the ceiling does not depend on chainfs's code.
const (
	defaultMaxRead       = 1 << 20
	defaultMaxBackground = 64
	cacheTimeout         = time.Hour
)

type root struct {
	gofs.Inode
	name string
	file *rawFile
}

func (r *root) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: 2})
	r.AddChild(r.name, ch, false)
}

func (r *root) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFDIR | 0555
	out.Nlink = 2
	return 0
}

type rawFile struct {
	gofs.Inode
	fd      int
	size    int64
	blksize uint32
}

var (
	_ gofs.NodeGetattrer = (*rawFile)(nil)
	_ gofs.NodeOpener    = (*rawFile)(nil)
	_ gofs.NodeReader    = (*rawFile)(nil)
)

func (f *rawFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0444
	out.Nlink = 1
	out.Size = uint64(f.size)
	out.Blocks = uint64((f.size + 511) / 512)
	out.Blksize = f.blksize
	return 0
}

func (f *rawFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

func (f *rawFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	got := 0
	for got < len(dest) {
		n, err := unix.Pread(f.fd, dest[got:], off+int64(got))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		if n == 0 {
			break
		}
		got += n
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func main() {
	name := flag.String("name", "", "name of the file in the mount (default: base name of RAW)")
	maxRead := flag.Int("max-read", defaultMaxRead, "max_read and readahead in bytes")
	procs := flag.Int("procs", 0, "GOMAXPROCS while serving (0: as chainfs sets it, fs.MountWithReaders)")
	readers := flag.Int("readers", 0, "go-fuse's waiting readers (0: chainfs's fs.DefaultReaders)")
	bg := flag.Int("max-background", defaultMaxBackground, "max_background")
	congestion := flag.Int("congestion", 0, "congestion_threshold (0: go-fuse's 3/4 of max_background)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: ceiling [-name NAME] [-max-read BYTES] RAW MOUNTPOINT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	path, mnt := flag.Arg(0), flag.Arg(1)
	if *name == "" {
		*name = filepath.Base(path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ceiling: %s: %v\n", path, err)
		os.Exit(1)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		fmt.Fprintf(os.Stderr, "ceiling: %s: %v\n", path, err)
		os.Exit(1)
	}
	timeout := cacheTimeout
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			Options:             []string{"ro", "nosuid", "nodev"},
			FsName:              path,
			Name:                "ceiling",
			MaxWrite:            *maxRead,
			MaxReadAhead:        *maxRead,
			MaxBackground:       *bg,
			CongestionThreshold: *congestion,
			DisableReadDirPlus:  true,
			DisableXAttrs:       true,
			DisableSplice:       true,
			ExtraCapabilities:   fuse.CAP_ASYNC_DIO, // as chainfs (fs/mount.go)
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
	}
	r := &root{name: *name, file: &rawFile{fd: fd, size: st.Size, blksize: uint32(*maxRead)}}
	// The same scheduling as chainfs (fs/sched.go).
	srv, err := chainfs.MountWithReaders(mnt, r, opts, *readers)
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ceiling: mount %s: %v\n", mnt, err)
		os.Exit(1)
	}
	// The same readahead window as chainfs, which widens it after mounting.
	chainfs.RaiseReadahead(mnt, *maxRead, logrus.StandardLogger())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		if err := srv.Unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "ceiling: unmount: %v\n", err)
		}
	}()
	fmt.Fprintf(os.Stderr, "ceiling: serving %s as %s/%s\n", path, mnt, *name)
	srv.Wait()
}

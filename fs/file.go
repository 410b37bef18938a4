package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/layers"
)

// file is what every file of one layer shares: the layer, the image
// file's attributes, and a logger carrying the file's name and layer.
type file struct {
	layer *layers.Layer
	attr  hostAttr
	log   logrus.FieldLogger
	name  string
}

// named returns a copy of f for the file called name.
func (f file) named(name string) file {
	f.name = name
	f.log = f.log.WithFields(logrus.Fields{"file": name, "layer": f.layer.Index})
	return f
}

// fill sets the attributes every file of the layer shares, plus size and
// st_blocks (in 512-byte units, as stat counts them).
func (f *file) fill(out *fuse.AttrOut, size, blocks int64) {
	a := &out.Attr
	a.Mode = fuse.S_IFREG | f.attr.perm
	a.Nlink = 1
	a.Size = uint64(size)
	a.Blocks = uint64(blocks)
	// A non-zero Blksize also keeps go-fuse from replacing Blocks with
	// the size rounded up to pages. Large, so cp and friends read in
	// large requests.
	a.Blksize = blksize
	a.Owner = f.attr.owner
	a.SetTimes(&f.attr.atime, &f.attr.mtime, &f.attr.ctime)
}

// blksize is st_blksize, the preferred I/O size: cp and cat read in
// buffers of at least this size, so it matches the largest read request.
const blksize = DefaultMaxRead

// blocks returns n bytes as 512-byte blocks, rounded up.
func blocks(n int64) int64 { return (n + 511) / 512 }

// openFlags checks the flags of an open: anything but a plain read-only
// open is EROFS.
func (f *file) openFlags(flags uint32) syscall.Errno {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		f.log.WithFields(logrus.Fields{"op": "open", "flags": flagString(flags)}).Debug("write access refused: EROFS")
		return syscall.EROFS
	}
	return 0
}

// Setattr refuses chmod, chown, utimes and truncate: the view is read-only.
func (f *file) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.log.WithFields(logrus.Fields{"op": "setattr", "valid": in.Valid}).Debug("refused: EROFS")
	return syscall.EROFS
}

// Write refuses: the view is read-only. The mount is "ro", so the kernel
// refuses writes before they get here; this is the second line.
func (f *file) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.log.WithFields(logrus.Fields{"op": "write", "off": off, "len": len(data)}).Debug("refused: EROFS")
	return 0, syscall.EROFS
}

// Allocate refuses fallocate, which could punch holes: EROFS.
func (f *file) Allocate(ctx context.Context, fh gofs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	f.log.WithFields(logrus.Fields{"op": "fallocate", "off": off, "len": size}).Debug("refused: EROFS")
	return syscall.EROFS
}

func flagString(flags uint32) string {
	switch flags & syscall.O_ACCMODE {
	case syscall.O_WRONLY:
		return "O_WRONLY"
	case syscall.O_RDWR:
		return "O_RDWR"
	}
	if flags&syscall.O_TRUNC != 0 {
		return "O_RDONLY|O_TRUNC"
	}
	return "O_RDONLY"
}

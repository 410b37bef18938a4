package fs

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// rawNode is N-name.raw: the layer read with its backing chain.
type rawNode struct {
	gofs.Inode
	file

	// mu guards dataBytes, computed on the first stat (a walk of the
	// layer's map) and kept: the image cannot change under the mount.
	mu        sync.Mutex
	dataBytes int64
	haveData  bool
}

// usedBytes returns the bytes the layer's map marks "data": true. When the
// map cannot be computed (a broken image), it logs why once and counts
// every byte as data: stat must still work and give the size, or the view
// could not even be opened to read its good parts, and overstating
// st_blocks is the safe error, since tools that guess sparseness from it
// would skip data if it were understated.
func (n *rawNode) usedBytes() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.haveData {
		b, err := status.DataBytes(n.layer)
		if err != nil {
			n.log.WithField("op", "getattr").WithError(err).Error("the layer's map cannot be computed; st_blocks counts every byte as data")
			b = n.layer.Size
		}
		n.dataBytes, n.haveData = b, true
	}
	return n.dataBytes
}

// Getattr reports the virtual size, and as st_blocks the data bytes of the
// layer's map, so du and ls -s show what the layer really holds.
func (n *rawNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(out, n.layer.Size, blocks(n.usedBytes()))
	return 0
}

// rawHandle is one open of a view: its reads go through a layers.Stream,
// which reads compressed clusters ahead while the reads are sequential.
type rawHandle struct {
	stream *layers.Stream
}

// Open allows reading only. The content never changes, so the kernel may
// keep its page cache across opens, and closing needs no FLUSH round trip.
func (n *rawNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if errno := n.openFlags(flags); errno != 0 {
		return nil, 0, errno
	}
	return &rawHandle{stream: n.layer.NewStream()}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// Read fills dest straight from the layer; reads at or past the end are
// empty. When any part of the request cannot be read (a broken image), the
// whole request fails with EIO, never with a short read: the kernel takes
// a short read before the end for the end of the file and would shrink the
// cached size. The kernel retries a failed readahead page by page, so the
// pages around a broken cluster still read; only those that touch it fail.
func (n *rawNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off < 0 {
		n.log.WithFields(logrus.Fields{"op": "read", "off": uint64(off), "len": len(dest)}).Error("read at an offset past 2^63: EINVAL")
		return nil, syscall.EINVAL
	}
	if off >= n.layer.Size {
		return fuse.ReadResultData(nil), 0
	}
	readStarts()
	defer readsNow.Add(-1)
	var got int
	var err error
	if h, ok := fh.(*rawHandle); ok {
		got, err = h.stream.ReadAt(dest, off)
	} else {
		got, err = n.layer.ReadAt(dest, off)
	}
	if err != nil && err != io.EOF {
		n.log.WithFields(logrus.Fields{"op": "read", "off": off, "len": len(dest)}).WithError(err).Error("read failed: EIO")
		return nil, syscall.EIO
	}
	r := readResults.Get().(*readResult)
	r.b = dest[:got]
	return r, 0
}

// readsNow counts the reads of views being served, and readsPeak keeps
// the most there have been at once: a queue of O_DIRECT reads (libaio,
// io_uring) reaches the daemon in parallel only with FUSE_ASYNC_DIO
// (mount.go), and this shows it did.
var readsNow, readsPeak atomic.Int64

// PeakConcurrentReads returns the most reads of .raw views that this
// process has served at once, over all its mounts.
func PeakConcurrentReads() int64 { return readsPeak.Load() }

func readStarts() {
	now := readsNow.Add(1)
	for peak := readsPeak.Load(); now > peak; peak = readsPeak.Load() {
		if readsPeak.CompareAndSwap(peak, now) {
			return
		}
	}
}

// readResult is fuse.ReadResultData's result, back in a pool once go-fuse
// has taken the bytes (it calls Done right after Bytes): one allocation
// less per read.
type readResult struct{ b []byte }

var readResults = sync.Pool{New: func() any { return new(readResult) }}

func (r *readResult) Bytes([]byte) ([]byte, fuse.Status) { return r.b, fuse.OK }
func (r *readResult) Size() int                          { return len(r.b) }
func (r *readResult) Done() {
	r.b = nil
	readResults.Put(r)
}

// Lseek answers SEEK_DATA and SEEK_HOLE (the kernel handles the other
// whences itself) from the layer's map: holes are exactly the ranges it
// marks "data": false. As lseek(2) specifies, SEEK_DATA with no data at or
// after off, and either whence at or past the end, are ENXIO; SEEK_HOLE
// with no hole left returns the size (the implicit hole at EOF).
func (n *rawNode) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := uint64(n.layer.Size)
	switch whence {
	case unixSeekData:
		if off >= size {
			return 0, syscall.ENXIO
		}
		at, ok, err := status.SeekData(n.layer, int64(off))
		if err != nil {
			n.log.WithFields(logrus.Fields{"op": "lseek", "whence": "SEEK_DATA", "off": off}).WithError(err).Error("walking the layer's map failed: EIO")
			return 0, syscall.EIO
		}
		if !ok {
			return 0, syscall.ENXIO
		}
		return uint64(at), 0
	case unixSeekHole:
		if off >= size {
			return 0, syscall.ENXIO
		}
		at, err := status.SeekHole(n.layer, int64(off))
		if err != nil {
			n.log.WithFields(logrus.Fields{"op": "lseek", "whence": "SEEK_HOLE", "off": off}).WithError(err).Error("walking the layer's map failed: EIO")
			return 0, syscall.EIO
		}
		return uint64(at), 0
	}
	n.log.WithFields(logrus.Fields{"op": "lseek", "whence": whence, "off": off}).Warn("unexpected whence from the kernel: EINVAL")
	return 0, syscall.EINVAL
}

// SEEK_DATA and SEEK_HOLE (linux/fs.h); package syscall lacks them.
const (
	unixSeekData = 3
	unixSeekHole = 4
)

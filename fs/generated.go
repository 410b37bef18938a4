package fs

import (
	"bytes"
	"context"
	"io"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/layers"
)

// genNode is a file whose content a status function renders for the layer
// (N-name.map.json, N-name.depth). It is rendered on the first stat or
// open, never at readdir, and kept: tools trust st_size, so the size must
// be exact before anyone reads, and the image cannot change under the
// mount. A failed rendering is not kept; the next access tries again.
type genNode struct {
	gofs.Inode
	file
	gen func(io.Writer, *layers.Layer) error

	mu   sync.Mutex
	data []byte
	done bool
}

// content renders the file once; op names the request for the log.
func (n *genNode) content(op string) ([]byte, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done {
		return n.data, 0
	}
	var b bytes.Buffer
	if err := n.gen(&b, n.layer); err != nil {
		n.log.WithField("op", op).WithError(err).Error("rendering the file failed: EIO")
		return nil, syscall.EIO
	}
	n.data, n.done = b.Bytes(), true
	return n.data, 0
}

func (n *genNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	data, errno := n.content("getattr")
	if errno != 0 {
		return errno
	}
	n.fill(out, int64(len(data)), blocks(int64(len(data))))
	return 0
}

func (n *genNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if errno := n.openFlags(flags); errno != 0 {
		return nil, 0, errno
	}
	if _, errno := n.content("open"); errno != 0 {
		return nil, 0, errno
	}
	return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

func (n *genNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	data, errno := n.content("read")
	if errno != 0 {
		return nil, errno
	}
	if off < 0 {
		n.log.WithFields(logrus.Fields{"op": "read", "off": uint64(off), "len": len(dest)}).Error("read at an offset past 2^63: EINVAL")
		return nil, syscall.EINVAL
	}
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(data[off:min(int64(len(data)), off+int64(len(dest)))]), 0
}

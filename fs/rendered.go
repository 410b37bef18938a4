package fs

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/internal/lru"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// RenderedBytes is the budget, per mount, of the rendered text files
// (N-name.map.json, N-name.depth, and a layer's snapshot and bitmap files)
// kept in memory. A map lists every extent of a layer and the layers
// above it, so a deep chain of fragmented layers renders gigabytes of text
// in all: more than any budget, so none is kept whole. Each file is
// rendered once on its first stat (tools trust st_size, so the size must
// be exact before anyone reads), and keeps only its size and a mark every
// renderChunk bytes (where rendering can resume); its text is cut into
// chunks that live in one budgeted cache and are rendered again from
// their mark when they have fallen out.
const RenderedBytes = 2 << 20

// renderChunk is the unit of rendered text that is cached, and the
// distance between the marks a file keeps: some 650 map entries.
const renderChunk = 64 << 10

// renderFunc renders a layer's text from a mark (status.Text.Render); a
// text that cannot resume ignores from and never calls mark, and is then
// rendered from its start whenever a chunk is missing.
type renderFunc func(w io.Writer, l *layers.Layer, from status.Mark, mark func(status.Mark)) error

// chunkKey names chunk c of a rendered file.
type chunkKey struct {
	n *renderedNode
	c int64
}

// renderedCache holds the rendered chunks of every file of one mount.
type renderedCache = lru.Cache[chunkKey, []byte]

func newRenderedCache() *renderedCache { return lru.New[chunkKey, []byte](RenderedBytes) }

// rendered returns the node of a file of f's layer rendered by render.
func (r *rootNode) rendered(f file, render renderFunc) *renderedNode {
	return &renderedNode{file: f, render: render, chunks: r.texts}
}

// renderedNode is a file whose content is rendered for the layer
// (N-name.map.json, N-name.depth). It is rendered on the first stat or
// open, never at readdir. A failed rendering is not kept; the next access
// tries again.
type renderedNode struct {
	gofs.Inode
	file
	render renderFunc
	chunks *renderedCache

	mu    sync.Mutex
	done  bool
	size  int64
	marks []status.Mark // marks[c]: where rendering resumes for chunk c
}

// prepare renders the file once, to learn its size and marks; op names
// the request for the log.
func (n *renderedNode) prepare(op string) (int64, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done {
		return n.size, 0
	}
	w := &chunker{n: n}
	prev := status.Mark{}
	var marks []status.Mark
	err := n.render(w, n.layer, status.Mark{}, func(m status.Mark) {
		for int64(len(marks))*renderChunk < m.Byte {
			marks = append(marks, prev)
		}
		prev = m
	})
	if err != nil {
		n.log.WithField("op", op).WithError(err).Error("rendering the file failed: EIO")
		return 0, syscall.EIO
	}
	w.flush()
	for int64(len(marks))*renderChunk < w.pos {
		marks = append(marks, prev)
	}
	n.size, n.marks, n.done = w.pos, marks, true
	return n.size, 0
}

// chunker caches the chunks of a file's first rendering as they fill.
type chunker struct {
	n   *renderedNode
	pos int64
	buf []byte
}

func (w *chunker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = make([]byte, 0, renderChunk)
		}
		k := min(len(p), renderChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		w.pos += int64(k)
		if len(w.buf) == renderChunk {
			w.flush()
		}
	}
	return n, nil
}

func (w *chunker) flush() {
	if len(w.buf) > 0 {
		c := (w.pos - 1) / renderChunk
		w.n.chunks.Put(chunkKey{w.n, c}, w.buf, int64(cap(w.buf)))
		w.buf = nil
	}
}

// chunk returns chunk c of the prepared file: cached, or rendered again
// from its mark.
func (n *renderedNode) chunk(c int64) ([]byte, error) {
	if b, ok := n.chunks.Get(chunkKey{n, c}); ok {
		return b, nil
	}
	from := n.marks[c]
	w := &window{skip: c*renderChunk - from.Byte, want: min(renderChunk, n.size-c*renderChunk)}
	w.buf = make([]byte, 0, w.want)
	err := n.render(w, n.layer, from, nil)
	if err != nil && err != errChunkDone {
		return nil, err
	}
	if int64(len(w.buf)) != w.want {
		return nil, errors.New("rendering again gave a shorter text than the first time")
	}
	n.chunks.Put(chunkKey{n, c}, w.buf, int64(cap(w.buf)))
	return w.buf, nil
}

var errChunkDone = errors.New("chunk rendered")

// window keeps want bytes of what is written after the first skip bytes,
// then stops the rendering.
type window struct {
	skip, want int64
	buf        []byte
}

func (w *window) Write(p []byte) (int, error) {
	n := len(p)
	if w.skip > 0 {
		k := min(int64(len(p)), w.skip)
		w.skip -= k
		p = p[k:]
	}
	k := min(int64(len(p)), w.want-int64(len(w.buf)))
	w.buf = append(w.buf, p[:k]...)
	if int64(len(w.buf)) == w.want {
		return n, errChunkDone
	}
	return n, nil
}

func (n *renderedNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size, errno := n.prepare("getattr")
	if errno != 0 {
		return errno
	}
	n.fill(out, size, blocks(size))
	return 0
}

func (n *renderedNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if errno := n.openFlags(flags); errno != 0 {
		return nil, 0, errno
	}
	if _, errno := n.prepare("open"); errno != 0 {
		return nil, 0, errno
	}
	return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

func (n *renderedNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size, errno := n.prepare("read")
	if errno != 0 {
		return nil, errno
	}
	if off < 0 {
		n.log.WithFields(logrus.Fields{"op": "read", "off": uint64(off), "len": len(dest)}).Error("read at an offset past 2^63: EINVAL")
		return nil, syscall.EINVAL
	}
	end := min(size, off+int64(len(dest)))
	if off >= end {
		return fuse.ReadResultData(nil), 0
	}
	if c := off / renderChunk; c == (end-1)/renderChunk {
		b, err := n.chunk(c)
		if err != nil {
			n.log.WithFields(logrus.Fields{"op": "read", "off": off, "len": len(dest)}).WithError(err).Error("rendering the file again failed: EIO")
			return nil, syscall.EIO
		}
		return fuse.ReadResultData(b[off-c*renderChunk : end-c*renderChunk]), 0
	}
	for at := off; at < end; {
		c := at / renderChunk
		b, err := n.chunk(c)
		if err != nil {
			n.log.WithFields(logrus.Fields{"op": "read", "off": off, "len": len(dest)}).WithError(err).Error("rendering the file again failed: EIO")
			return nil, syscall.EIO
		}
		at += int64(copy(dest[at-off:end-off], b[at-c*renderChunk:]))
	}
	return fuse.ReadResultData(dest[:end-off]), 0
}

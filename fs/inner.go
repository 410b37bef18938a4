package fs

import (
	"context"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// Inode numbers of the files of what a layer keeps inside it, apart from
// the layers' own files (2, 3, 4, ...): bit 62 set, the layer index from
// bit 19, then for snapshot table entry i the three files 4i to 4i+2, and
// for bitmap directory entry j the file 2^18+j (both tables hold fewer
// than 2^16 entries). They depend only on the layer and the entry, so
// they stay the same across mounts of the same chain.
func innerIno(layer int, bitmap bool, entry, file int) uint64 {
	ino := uint64(1)<<62 | uint64(layer)<<19
	if bitmap {
		return ino | 1<<18 | uint64(entry)
	}
	return ino | uint64(entry)<<2 | uint64(file)
}

// addInner adds, after layer l's own files, the three files of each of its
// internal snapshots and the file of each of its persistent bitmaps. No
// file is rendered here: a snapshot's view reads nothing until used, and
// maps, depths and bitmaps render on first stat, so listing a layer of a
// hundred snapshots stays instant.
func (r *rootNode) addInner(ctx context.Context, l *layers.Layer, attr hostAttr) {
	add := func(name string, node gofs.InodeEmbedder, ino uint64) {
		ch := r.NewPersistentInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino})
		if !r.AddChild(name, ch, false) {
			// Only contrived names can collide (a layer name holding
			// "..." where it is shortened): say so and go on.
			r.log.WithFields(logrus.Fields{"layer": l.Index, "name": name}).Warn("a snapshot or bitmap file has the name of another file; it is left out")
			return
		}
		r.files++
	}
	for i, tag := range SnapshotTags(l) {
		if tag == "" {
			continue // QEMU could not load it: logged when the image opened
		}
		v, err := l.SnapshotLayer(i)
		if err != nil {
			r.log.WithFields(logrus.Fields{"layer": l.Index, "snapshot": tag}).WithError(err).Warn("snapshot left out")
			continue
		}
		f := file{layer: v, attr: attr, log: r.log}
		raw := SnapshotFileName(l, tag, ".raw")
		add(raw, &rawNode{file: f.named(raw)}, innerIno(l.Index, false, i, 0))
		m := SnapshotFileName(l, tag, ".map.json")
		add(m, r.rendered(f.named(m), status.MapJSON.Render), innerIno(l.Index, false, i, 1))
		d := SnapshotFileName(l, tag, ".depth")
		add(d, r.rendered(f.named(d), status.DepthText.Render), innerIno(l.Index, false, i, 2))
	}
	for i, tag := range BitmapTags(l) {
		b := &l.Bitmaps()[i]
		name := BitmapFileName(l, tag)
		f := file{layer: l, attr: attr, log: r.log}.named(name)
		// A bitmap's text cannot resume: it ignores from and sets no marks.
		render := func(w io.Writer, _ *layers.Layer, _ status.Mark, _ func(status.Mark)) error {
			return status.WriteBitmap(w, b)
		}
		n := &bitmapNode{renderedNode: renderedNode{file: f, render: render, chunks: r.texts}, unusable: b.Err}
		add(name, n, innerIno(l.Index, true, i, 0))
	}
}

// bitmapNode is N-name.B.bitmap: what nbdinfo prints for the layer's
// bitmap B served by qemu-nbd -B. A bitmap QEMU would not use (in use:
// its VM is running, or died without saving it) is listed, empty, and
// fails to open with EIO, as qemu-nbd refuses to export it.
type bitmapNode struct {
	renderedNode
	unusable error
}

func (n *bitmapNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if n.unusable != nil {
		n.fill(out, 0, 0)
		return 0
	}
	return n.renderedNode.Getattr(ctx, fh, out)
}

func (n *bitmapNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.unusable != nil {
		if errno := n.openFlags(flags); errno != 0 {
			return nil, 0, errno
		}
		n.log.WithField("op", "open").WithError(n.unusable).Error("QEMU would not use this bitmap: EIO")
		return nil, 0, syscall.EIO
	}
	return n.renderedNode.Open(ctx, flags)
}

func (n *bitmapNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.unusable != nil {
		n.log.WithField("op", "read").WithError(n.unusable).Error("QEMU would not use this bitmap: EIO")
		return nil, syscall.EIO
	}
	return n.renderedNode.Read(ctx, fh, dest, off)
}

package fs

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// filesPerLayer is the number of files each layer shows; the inode
// numbers below depend on it.
const filesPerLayer = 3

// rootNode is the mount's only directory. Its children are built once, in
// OnAdd, and never change.
type rootNode struct {
	gofs.Inode
	chain *layers.Chain
	log   logrus.FieldLogger
	attr  hostAttr // of the opened image
	files int      // regular files in the tree, for statfs
	texts *renderedCache
}

// NewRoot returns the root node of a filesystem showing chain. The chain
// must stay open as long as the filesystem is mounted.
func NewRoot(chain *layers.Chain, opts *Options) gofs.InodeEmbedder {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.log()
	return &rootNode{chain: chain, log: log, attr: statHost(chain.Top(), log), texts: newRenderedCache()}
}

// OnAdd builds the whole tree: persistent inodes, so the kernel forgetting
// them drops nothing, with inode numbers derived from the layer index, so
// they are the same on every mount of the chain. Each layer's own three
// files come first, then those of its snapshots and bitmaps (inner.go).
func (r *rootNode) OnAdd(ctx context.Context) {
	for _, l := range r.chain.Layers {
		attr := statHost(l, r.log)
		base := layerBase(l)
		ino := 2 + uint64(l.Index)*filesPerLayer
		add := func(suffix string, node gofs.InodeEmbedder, i uint64) {
			name := entryName(l.Index, base, suffix)
			ch := r.NewPersistentInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFREG, Ino: ino + i})
			if !r.AddChild(name, ch, false) {
				r.log.WithField("name", name).Error("BUG: duplicate file name in chain view")
			}
		}
		f := file{layer: l, attr: attr, log: r.log}
		add(".raw", &rawNode{file: f.named(entryName(l.Index, base, ".raw"))}, 0)
		add(".map.json", r.rendered(f.named(entryName(l.Index, base, ".map.json")), status.MapJSON.Render), 1)
		add(".depth", r.rendered(f.named(entryName(l.Index, base, ".depth")), status.DepthText.Render), 2)
		r.files += filesPerLayer
		r.addInner(ctx, l, attr)
	}
}

// layerBase is the name of a layer's files: its image file's base name.
func layerBase(l *layers.Layer) string { return filepath.Base(l.Path) }

// entryName is "N-base.suffix", with base shortened in the middle if the
// name would pass NAME_MAX (the kernel refuses longer names at lookup).
func entryName(index int, base, suffix string) string {
	const nameMax = 255
	prefix := fmt.Sprintf("%d-", index)
	if over := len(prefix) + len(base) + len(suffix) - nameMax; over > 0 {
		keep := len(base) - over - len("...")
		base = base[:keep/2] + "..." + base[len(base)-(keep-keep/2):]
	}
	return prefix + base + suffix
}

// Lookup finds a child and its attributes. go-fuse's default lookup
// ignores a failed Getattr and answers with empty attributes, which the
// kernel would cache as a file of size 0 (reads then end at once, silently
// losing the content); here the lookup fails with Getattr's errno instead,
// and nothing is cached, so the next lookup asks again.
func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := r.GetChild(name)
	if ch == nil {
		return nil, syscall.ENOENT
	}
	if ga, ok := ch.Operations().(gofs.NodeGetattrer); ok {
		var a fuse.AttrOut
		if errno := ga.Getattr(ctx, nil, &a); errno != 0 {
			return nil, errno
		}
		out.Attr = a.Attr
	}
	return ch, 0
}

func (r *rootNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a := &out.Attr
	// The directory is searchable and listable by whoever may read the
	// opened image: with allow_other, someone who cannot read the image
	// does not even see the names in the chain.
	a.Mode = fuse.S_IFDIR | r.attr.perm | (r.attr.perm&0444)>>2
	a.Nlink = 2
	a.Size = 4096
	a.Blksize = 4096
	a.Owner = r.attr.owner
	a.SetTimes(&r.attr.atime, &r.attr.mtime, &r.attr.ctime)
	return 0
}

// Setattr refuses chmod, chown, utimes and truncate: the view is read-only.
func (r *rootNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	r.log.WithField("op", "setattr").Debug("refused on the read-only root: EROFS")
	return syscall.EROFS
}

// Statfs describes a full, read-only filesystem holding the layers'
// virtual sizes, so df shows what the mount presents.
func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	var total uint64
	for _, l := range r.chain.Layers {
		total += uint64(l.Size+bsize-1) / bsize
	}
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = total
	out.Files = uint64(1 + r.files)
	out.NameLen = 255
	return 0
}

// hostAttr is what a layer's files take from its image file: owner, times
// and read permissions.
type hostAttr struct {
	owner               fuse.Owner
	perm                uint32
	atime, mtime, ctime time.Time
}

// statHost stats l's image file. A file that cannot be stated (the chain
// was built on an io.ReaderAt) shows as root's, mode 0444, dated now.
func statHost(l *layers.Layer, log logrus.FieldLogger) hostAttr {
	now := time.Now()
	a := hostAttr{perm: 0444, atime: now, mtime: now, ctime: now}
	f := l.File.File()
	if f == nil {
		return a
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		log.WithFields(logrus.Fields{"layer": l.Index, "image": l.Path}).WithError(err).Warn("stat image file; showing mode 0444 owned by root")
		return a
	}
	a.owner = fuse.Owner{Uid: st.Uid, Gid: st.Gid}
	// The image's mode minus write and execute bits: whoever may read the
	// image may read its views, nobody may write them.
	a.perm = st.Mode & 0444
	a.atime = time.Unix(st.Atim.Unix())
	a.mtime = time.Unix(st.Mtim.Unix())
	a.ctime = time.Unix(st.Ctim.Unix())
	return a
}

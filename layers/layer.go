package layers

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// Layer is one image of a backing chain.
type Layer struct {
	// Index is the layer's depth below the opened image (0 = the image).
	Index int
	// Path is the file as QEMU resolves it: the opened path, or a backing
	// name joined onto the directory of the image naming it.
	Path   string
	Format Format
	// Size is the virtual size in bytes (a multiple of 512).
	Size int64
	// ClusterSize is the qcow2 cluster size; 512 for raw images.
	ClusterSize int64
	// BackingFile and BackingFormat are as recorded in the image ("" when
	// absent); ProbedBacking is true when the backing format was guessed.
	BackingFile   string
	BackingFormat string
	ProbedBacking bool
	// Header is the decoded qcow2 header (nil for raw layers).
	Header *Header
	// File is the image file; DataFile the external data file (or nil).
	File     *HostFile
	DataFile *HostFile
	// Backing is the next layer down, or nil.
	Backing *Layer
	// Snapshot is the internal snapshot this layer shows (SnapshotLayer),
	// nil for an image's current state.
	Snapshot *Snapshot

	q       *qcow2View
	raw     *rawImage
	snaps   *snapshotTable   // snapshot.go
	bitmaps *bitmapDirectory // bitmap.go
	// res resolves ranges through the chain (resolve.go); layers of one
	// chain, and other views sharing their backing chain, share it.
	res *resolver
}

// Status appends to dst the extents of [off, off+length) as this layer
// alone holds them, without looking at its backing file, clipped to the
// virtual size. Adjacent ranges of one kind that are host-contiguous come
// back merged; compressed clusters come one per extent. It reads each L2
// table the range touches once.
func (l *Layer) Status(dst []Extent, off, length int64) ([]Extent, error) {
	if off < 0 || length < 0 {
		return dst, fmt.Errorf("%s: status of negative range", l.Path)
	}
	if l.q != nil {
		return l.q.status(dst, off, length)
	}
	return l.raw.status(dst, off, length)
}

// MetadataPreallocated reports whether QEMU would treat this qcow2 layer
// as created with preallocation=metadata, in which case its block status
// asks the host file whether data clusters are holes (and reports holes as
// zero). Always false for raw layers.
func (l *Layer) MetadataPreallocated() (bool, error) {
	if l.q == nil {
		return false, nil
	}
	return l.q.metadataPreallocated()
}

// runPool recycles the run slices of ReadAt.
var runPool = sync.Pool{New: func() any { s := make([]Run, 0, 64); return &s }}

// ReadAt reads the layer as a guest booted from it sees it: its own data,
// with unallocated ranges read from the backing chain (zero past a shorter
// backing file's end, and zero where no layer has anything). Reads are
// clipped to Size; a read starting at or past Size returns io.EOF. Safe for
// concurrent use.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read at negative offset", l.Path)
	}
	if off >= l.Size {
		return 0, io.EOF
	}
	n := len(p)
	short := false
	if rem := l.Size - off; int64(n) > rem {
		n = int(rem)
		short = true
	}
	if err := l.read(p[:n], off); err != nil {
		return 0, err
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

// read fills p from [off, off+len(p)), which lies within Size: it resolves
// the range through the chain (resolve.go), then reads each run from the
// layer that holds it.
func (l *Layer) read(p []byte, off int64) error {
	sp := runPool.Get().(*[]Run)
	defer runPool.Put(sp)
	runs, err := l.resolveRead((*sp)[:0], off, off+int64(len(p)))
	*sp = runs[:0]
	if err != nil {
		return err
	}
	compressed := 0
	for i := range runs {
		r := &runs[i]
		buf := p[r.Offset-off : r.End()-off]
		switch {
		case r.Kind == Data && !r.HostHole:
			if _, err := r.File.ReadAt(buf, r.HostOffset); err != nil {
				return &FormatError{File: r.File.Name, Msg: fmt.Sprintf("read %d bytes at %#x", len(buf), r.HostOffset), Err: err}
			}
		case r.Kind == Compressed:
			compressed++
		default: // zeroes, a host hole, or nothing anywhere in the chain
			clear(buf)
		}
	}
	if compressed > 0 {
		return inflateAll(p, off, runs, compressed)
	}
	return nil
}

// inflateAll inflates the compressed clusters among runs into p, each
// from the layer that holds it. Inflating is the one CPU-bound step of a
// read, so the clusters of one large read are shared out among up to one
// goroutine per CPU.
func inflateAll(p []byte, off int64, exts []Run, n int) error {
	one := func(r *Run) error { return r.Layer.readCompressed(p[r.Offset-off:r.End()-off], &r.Extent) }
	workers := min(n, cpus())
	if workers <= 1 {
		for i := range exts {
			if exts[i].Kind == Compressed {
				if err := one(&exts[i]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	work := func() {
		defer wg.Done()
		for {
			i := int(next.Add(1) - 1)
			if i >= len(exts) {
				return
			}
			if exts[i].Kind != Compressed {
				continue
			}
			if err := one(&exts[i]); err != nil {
				errOnce.Do(func() { firstErr = err })
				return
			}
		}
	}
	wg.Add(workers)
	for w := 1; w < workers; w++ {
		go work()
	}
	work()
	wg.Wait()
	return firstErr
}

// readCompressed copies the part of a compressed cluster that e covers,
// through the chain's cache of inflated clusters.
func (l *Layer) readCompressed(buf []byte, e *Extent) error {
	q := l.q
	return q.cache.clusters.read(q.qcow2Image, e, buf, e.Offset&(q.csize-1))
}

// clusterBufs pools cluster-sized scratch buffers by size. Each has
// decodeSlack bytes of spare capacity, for the zstd decoder's fast path.
var clusterBufs bufPools

type bufPools struct{ m sync.Map } // int64 -> *sync.Pool

func (b *bufPools) get(size int64) []byte {
	p, _ := b.m.LoadOrStore(size, &sync.Pool{New: func() any { return make([]byte, size, size+decodeSlack) }})
	return p.(*sync.Pool).Get().([]byte)
}

func (b *bufPools) put(buf []byte) {
	if p, ok := b.m.Load(int64(len(buf))); ok {
		p.(*sync.Pool).Put(buf) //nolint:staticcheck // slices are small headers
	}
}

package layers

import (
	"fmt"
	"iter"
	"math/bits"
	"slices"
	"sort"
	"sync"
	"unsafe"

	"github.com/chainfs/chainfs/internal/lru"
)

// Run is a range of a layer's guest view resolved through its backing
// chain: the extent, as Layer.Status gives it, of the layer that decides
// what the range reads as. This is what QEMU's block layer answers when it
// asks for the status of a range "above" the bottom of the chain
// (block/io.c, bdrv_co_common_block_status_above).
type Run struct {
	Extent
	// Layer decides the range: it holds it (Data, Compressed, Zero), or,
	// for Unallocated, the search stopped there, because Layer has no
	// backing file or its backing file ends before the range. Absent
	// ranges read as zero.
	Layer *Layer
	// HostHole marks Data of a layer QEMU believes was created with
	// preallocation=metadata (Layer.MetadataPreallocated) whose host
	// clusters are a hole in the file: block status then reports data that
	// reads as zero (qcow2_co_block_status asks the file).
	HostHole bool
}

// DefaultResolvedBytes is the budget of a chain's resolved views (Open
// makes one per chain; Options.ResolvedBytes overrides it). It holds, per
// window of guest space, what every layer decides there (a column: memory
// linear in the chain depth, not quadratic) and the flattened runs of the
// layers recently read or mapped. 8 MiB is some 130,000 runs: the whole
// resolved state of a 256-layer chain of 1 GiB disks whose layers each hold
// a few hundred extents.
const DefaultResolvedBytes = 8 << 20

// windowClusters is the size of a resolution window in clusters of the
// smallest cluster size of the chain: a window of one layer holds at most
// that many extents (times 32 with subclusters), and one L2 table of
// 64 KiB clusters maps two windows.
const windowClusters = 4096

// Why a chain is resolved a window at a time, and how:
//
// The answer for layer k is its own status overlaid on the answer for
// layer k+1. Instead of walking the sub-chain again for every layer (the
// work of layer k+1 redone for layer k, quadratic in the depth), the
// resolver reads the status of every layer over a window once, keeps what
// each layer decides there (its column), and derives the answer of any
// layer from the column by one sweep over its boundaries: at each point
// the decider is the topmost layer, at or below the one asked about, that
// decides there. Sweeps are linear in the column; the column is linear in
// the chain depth. Flattened answers are cached too, so that reads and
// repeated walks of one layer look runs up by binary search.
//
// A layer decides a range when it holds data or zeroes there, or holds
// nothing and has no backing file, or holds nothing past the end of its
// backing file (QEMU reads zeroes there without asking the backing file).
//
// Errors never widen: a window whose column cannot be read (a broken table
// somewhere in it) is resolved by walking the chain exactly as far as each
// range needs, so a layer above the damage, or a range that does not reach
// it, resolves as before, and a read fails only where its own bytes do.

// resolver resolves the layers of one chain. Layer.Index is a layer's
// position in layers; a Layer that shares a resolver without being one of
// its layers (an internal snapshot: the same backing chain under another
// L1 table) is resolved as its own status over its backing file's answer.
type resolver struct {
	layers     []*Layer
	windowBits uint
	cache      *lru.Cache[resKey, any] // *column or *flat
	maxEntry   int64                   // bytes; larger answers are not cached

	flightMu sync.Mutex
	flights  map[resKey]*flight

	touchMu sync.Mutex
	touched [touchSlots]resKey
	touchN  int

	mappedOnce sync.Once
	mapped     *mapped // mapped.go
}

// resKey names a column (layer nil) or a layer's flattened answer, by
// window index.
type resKey struct {
	layer *Layer
	w     int64
}

// flat is a layer's answer over one window. direct marks a window that is
// not resolved through its column (it is too large to cache, or the column
// cannot be read): walks take the chain layer by layer there.
type flat struct {
	runs   []Run
	direct bool
}

const (
	runBytes   = int64(unsafe.Sizeof(Run{}))
	eventBytes = int64(unsafe.Sizeof(event{}))
	entryBytes = 160 // a cache entry, its key and its value's header
	touchSlots = 16
)

func newResolver(ls []*Layer, budget int64) *resolver {
	cbits := uint(21) // QEMU's largest cluster
	for _, l := range ls {
		if l.q != nil {
			cbits = min(cbits, l.q.cbits)
		}
	}
	r := &resolver{
		layers:     ls,
		windowBits: cbits + uint(bits.TrailingZeros(windowClusters)),
		cache:      lru.New[resKey, any](budget),
		flights:    map[resKey]*flight{},
	}
	r.maxEntry = r.cache.ShardBudget() / 2
	for _, l := range ls {
		l.res = r
	}
	return r
}

// inColumn reports whether l is one of the chain's layers.
func (r *resolver) inColumn(l *Layer) bool {
	return l.Index >= 0 && l.Index < len(r.layers) && r.layers[l.Index] == l
}

// Resolve appends to dst the runs of [off, off+length), clipped to the
// virtual size, in offset order. Runs split at window boundaries (and
// nowhere else that the deciding extent does not), so neighbours may share
// layer and kind: consumers merge as they print. Resolving caches what it
// learns within the chain's budget. Safe for concurrent use.
func (l *Layer) Resolve(dst []Run, off, length int64) ([]Run, error) {
	for r, err := range l.Runs(off, length) {
		if err != nil {
			return dst, err
		}
		dst = append(dst, r)
	}
	return dst, nil
}

// Runs iterates over the runs of [off, off+length) as Resolve returns
// them; an error ends the iteration.
func (l *Layer) Runs(off, length int64) iter.Seq2[Run, error] {
	return func(yield func(Run, error) bool) {
		if off < 0 || length < 0 {
			yield(Run{}, fmt.Errorf("%s: resolve negative range", l.Path))
			return
		}
		end := min(off+length, l.Size)
		var direct []Run
		empty := newEmptyScan(l)
		for off < end {
			if r, ok := empty.next(off, end); ok {
				if !yield(r, nil) {
					return
				}
				off = r.End()
				continue
			}
			we := min(l.windowEnd(off), end)
			f := l.flatten(off)
			runs := f.runs
			if f.direct {
				var err error
				if direct, err = l.direct(direct[:0], off, we, true); err != nil {
					yield(Run{}, err)
					return
				}
				runs = direct
			}
			for i := searchRuns(runs, off); i < len(runs) && runs[i].Offset < we; i++ {
				if !yield(clip(runs[i], off, we), nil) {
					return
				}
			}
			off = we
		}
	}
}

// resolveRead appends the runs of [off, end) for a read: from the cached
// answers where there are some; otherwise a window is resolved whole only
// when it is read a second time (sequential reads then resolve each window
// once), and a first read walks the chain for its own range only, so that
// random reads of a large disk do not resolve a window apiece.
func (l *Layer) resolveRead(dst []Run, off, end int64) ([]Run, error) {
	r := l.res
	for off < end {
		we := min(l.windowEnd(off), end)
		var f *flat
		if r != nil {
			k := resKey{l, off >> r.windowBits}
			if v, ok := r.cache.Get(k); ok {
				f = v.(*flat)
			} else if e, ok := l.nothingBelow(off, we); ok {
				dst = append(dst, e)
				off = e.End()
				continue
			} else if r.touch(k) {
				f = l.flatten(off)
			}
		}
		if f == nil || f.direct {
			var err error
			if dst, err = l.direct(dst, off, we, false); err != nil {
				return dst, err
			}
		} else {
			for i := searchRuns(f.runs, off); i < len(f.runs) && f.runs[i].Offset < we; i++ {
				dst = append(dst, clip(f.runs[i], off, we))
			}
		}
		off = we
	}
	return dst, nil
}

// touch records a read of window k and reports whether it was read
// recently already.
func (r *resolver) touch(k resKey) bool {
	r.touchMu.Lock()
	defer r.touchMu.Unlock()
	for _, t := range r.touched {
		if t == k {
			return true
		}
	}
	r.touched[r.touchN%touchSlots] = k
	r.touchN++
	return false
}

func (l *Layer) windowEnd(off int64) int64 {
	bits := uint(62)
	if l.res != nil {
		bits = l.res.windowBits
	}
	return (off>>bits + 1) << bits
}

// searchRuns returns the index of the run holding off (runs are sorted and
// contiguous), or len(runs).
func searchRuns(runs []Run, off int64) int {
	return sort.Search(len(runs), func(i int) bool { return runs[i].End() > off })
}

// clip returns the part of r within [from, to).
func clip(r Run, from, to int64) Run {
	s, e := max(r.Offset, from), min(r.End(), to)
	if s != r.Offset && r.File != nil && r.Kind != Compressed {
		r.HostOffset += s - r.Offset
	}
	r.Offset, r.Length = s, e-s
	return r
}

// flatten returns l's answer over the window holding off, from the cache
// or resolved now (and cached). A flat marked direct tells the caller to
// walk the chain instead.
func (l *Layer) flatten(off int64) *flat {
	r := l.res
	if r == nil {
		return &flat{direct: true}
	}
	k := resKey{l, off >> r.windowBits}
	if v, ok := r.cache.Get(k); ok {
		return v.(*flat)
	}
	v, _ := r.do(k, func() (any, int64, error) {
		f := l.buildFlat(k.w)
		return f, entryBytes + int64(len(f.runs))*runBytes, nil
	})
	return v.(*flat)
}

// buildFlat resolves l over window w: a sweep of the chain's column, or
// for a layer outside the column, its own decisions over its backing
// file's answer. A window that cannot be resolved whole (some layer's
// tables are broken in it) or whose answer is too large to cache comes
// back marked direct.
func (l *Layer) buildFlat(w int64) *flat {
	r := l.res
	ws := w << r.windowBits
	we := min(ws+1<<r.windowBits, l.Size)
	if ws >= we {
		return &flat{}
	}
	var runs []Run
	if r.inColumn(l) {
		c, err := r.columnFor(w, l.Index)
		if err != nil {
			return &flat{direct: true}
		}
		st := sweepPool.Get().(*sweepState)
		runs, err = c.sweep(nil, l.Index, ws, we, st)
		sweepPool.Put(st)
		if err != nil {
			return &flat{direct: true}
		}
	} else {
		var sc scratch
		own, err := appendOwn(nil, l, ws, we, &sc)
		if err != nil {
			return &flat{direct: true}
		}
		var below []Run
		if b := l.Backing; b != nil && ws < b.Size {
			bf := b.flatten(ws)
			if bf.direct {
				return &flat{direct: true}
			}
			below = bf.runs
		}
		runs = overlay(nil, own, below, ws, we)
	}
	if int64(len(runs))*runBytes > r.maxEntry {
		return &flat{direct: true}
	}
	return &flat{runs: slices.Clip(runs)}
}

// flight is one resolution in progress: callers wanting the same answer
// wait for it rather than resolving it again.
type flight struct {
	done chan struct{}
	val  any
	err  error
}

// do returns the value of k: computing it once however many callers ask
// at the same time, and caching it when build gives a size >= 0.
func (r *resolver) do(k resKey, build func() (any, int64, error)) (any, error) {
	r.flightMu.Lock()
	if f, ok := r.flights[k]; ok {
		r.flightMu.Unlock()
		<-f.done
		return f.val, f.err
	}
	f := &flight{done: make(chan struct{})}
	r.flights[k] = f
	r.flightMu.Unlock()

	var size int64
	f.val, size, f.err = build()
	if f.err == nil && size >= 0 {
		r.cache.Put(k, f.val, size)
	}
	r.flightMu.Lock()
	delete(r.flights, k)
	r.flightMu.Unlock()
	close(f.done)
	return f.val, f.err
}

package layers

import (
	"errors"
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

// column is what each layer from position from to the bottom decides in
// one window: runs, grouped by layer, each group by offset; and the points
// where some layer's decision changes, in offset order.
type column struct {
	from   int
	runs   []Run
	events []event
}

// event: from pos on, layer p decides as runs[run], or defers (run -1).
type event struct {
	pos int64
	p   int32
	run int32
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
			f, err := l.flatten(off)
			var runs []Run
			switch {
			case err != nil:
				yield(Run{}, err)
				return
			case f.direct:
				if direct, err = l.direct(direct[:0], off, we, true); err != nil {
					yield(Run{}, err)
					return
				}
				runs = direct
			default:
				runs = f.runs
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
				f, _ = l.flatten(off) // on error, walk the range below
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

// nothingBelow is the fast answer for the empty stretches of a disk: when
// l and every layer below it down to one that decides has no L2 table at
// off (a zero L1 entry: nothing there, not even a zero cluster), the range
// from off to where that stops being true (at most end) is one absent run
// of the layer where QEMU's search stops. It costs a look at one L1 entry
// per layer and L2 span, however many windows the range covers: a 4 TiB
// image with four extents maps in microseconds. ok is false when some
// layer has a table at off (or is raw): the range needs the windows.
func (l *Layer) nothingBelow(off, end int64) (Run, bool) {
	for cur := l; ; {
		q := cur.q
		if q == nil {
			return Run{}, false
		}
		if end = min(end, q.unmappedUntil(off, end)); end <= off {
			return Run{}, false
		}
		b := cur.Backing
		if b == nil || b.Size <= off {
			return Run{Extent: Extent{Offset: off, Length: end - off, Kind: Unallocated}, Layer: cur}, true
		}
		end = min(end, b.Size)
		cur = b
	}
}

// unmappedUntil returns how far from off (up to limit, within the virtual
// size) the view's L1 table maps no L2 table: off itself when the entry
// at off has one.
func (q *qcow2View) unmappedUntil(off, limit int64) int64 {
	limit = min(limit, q.size)
	for i := off >> q.spanBits; off < limit; i++ {
		e, err := q.l1Entry(i)
		if err != nil || e.l2Offset() != 0 {
			return off
		}
		off = (i + 1) << q.spanBits
	}
	return limit
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
func (l *Layer) flatten(off int64) (*flat, error) {
	r := l.res
	if r == nil {
		return &flat{direct: true}, nil
	}
	k := resKey{l, off >> r.windowBits}
	if v, ok := r.cache.Get(k); ok {
		return v.(*flat), nil
	}
	v, err := r.do(k, func() (any, int64, error) {
		f := l.buildFlat(k.w)
		return f, entryBytes + int64(len(f.runs))*runBytes, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*flat), nil
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
			bf, err := b.flatten(ws)
			if err != nil || bf.direct {
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

// columnFor returns the column of window w holding at least the layers
// from position p down, building or extending it. A column is built from
// the layer first asked about; when a layer above is asked about, it is
// extended to the top of the chain at once, so that a walk down the chain
// extends each column once.
func (r *resolver) columnFor(w int64, p int) (*column, error) {
	k := resKey{nil, w}
	v, ok := r.cache.Get(k)
	if ok && v.(*column).from <= p {
		return v.(*column), nil
	}
	var old *column
	if ok {
		old = v.(*column)
	}
	v, err := r.do(k, func() (any, int64, error) {
		from := p
		if old != nil {
			from = 0
		}
		c, err := r.buildColumn(w, from, old)
		if err != nil {
			return nil, 0, err
		}
		size := entryBytes + int64(len(c.runs))*runBytes + int64(len(c.events))*eventBytes
		if size > r.maxEntry {
			size = -1 // used once, not cached
		}
		return c, size, nil
	})
	if err != nil {
		return nil, err
	}
	c := v.(*column)
	if c.from > p {
		// Another caller built a shallower column meanwhile.
		return r.buildColumn(w, p, c)
	}
	return c, nil
}

// buildColumn reads what the layers from position from down decide in
// window w, reusing old for the layers it holds.
func (r *resolver) buildColumn(w int64, from int, old *column) (*column, error) {
	ws := w << r.windowBits
	we := ws + 1<<r.windowBits
	c := &column{from: from}
	var sc scratch
	stop := len(r.layers)
	if old != nil {
		stop = old.from
	}
	var err error
	for p := from; p < stop; p++ {
		if c.runs, err = appendOwn(c.runs, r.layers[p], ws, we, &sc); err != nil {
			return nil, err
		}
	}
	if old != nil {
		c.runs = append(c.runs, old.runs...)
	}
	c.runs = slices.Clip(c.runs)
	// Events: where each layer starts deciding as each of its runs, and
	// where it stops deciding (a gap before its next run).
	for i := range c.runs {
		ru := &c.runs[i]
		p := int32(ru.Layer.Index)
		c.events = append(c.events, event{ru.Offset, p, int32(i)})
		if i+1 == len(c.runs) || c.runs[i+1].Layer != ru.Layer || c.runs[i+1].Offset != ru.End() {
			c.events = append(c.events, event{ru.End(), p, -1})
		}
	}
	slices.SortFunc(c.events, func(a, b event) int {
		switch {
		case a.pos < b.pos:
			return -1
		case a.pos > b.pos:
			return 1
		}
		return 0
	})
	c.events = slices.Clip(c.events)
	return c, nil
}

// sweepState is a sweep's scratch: the run each layer decides as at the
// current point, and the set of deciding layers.
type sweepState struct {
	cur  []int32
	bits []uint64
}

var sweepPool = sync.Pool{New: func() any { return &sweepState{} }}

var errNoDecider = errors.New("no layer decides")

// sweep appends the answer of the layer at position top over [a, b) within
// the column's window: at each point, the run of the topmost deciding
// layer at or below top.
func (c *column) sweep(dst []Run, top int, a, b int64, st *sweepState) ([]Run, error) {
	n := 0
	if len(c.runs) > 0 {
		n = c.runs[len(c.runs)-1].Layer.Index + 1
	}
	st.cur = slices.Grow(st.cur[:0], n)[:n]
	st.bits = slices.Grow(st.bits[:0], (n+63)/64)[:(n+63)/64]
	clear(st.bits)
	apply := func(e event) {
		if int(e.p) < top {
			return
		}
		if e.run < 0 {
			st.bits[e.p>>6] &^= 1 << (e.p & 63)
			return
		}
		st.cur[e.p] = e.run
		st.bits[e.p>>6] |= 1 << (e.p & 63)
	}
	ev := c.events
	i := 0
	for ; i < len(ev) && ev[i].pos <= a; i++ {
		apply(ev[i])
	}
	lastRun := int32(-1)
	for x := a; x < b; {
		next := b
		if i < len(ev) && ev[i].pos < b {
			next = ev[i].pos
		}
		h := -1
		for wi, word := range st.bits {
			if word != 0 {
				h = wi<<6 + bits.TrailingZeros64(word)
				break
			}
		}
		if h < 0 {
			return dst, fmt.Errorf("window at %#x: %w at %#x", a, errNoDecider, x)
		}
		if ri := st.cur[h]; ri == lastRun {
			dst[len(dst)-1].Length = next - dst[len(dst)-1].Offset
		} else {
			dst = append(dst, clip(c.runs[ri], x, next))
			lastRun = ri
		}
		for ; i < len(ev) && ev[i].pos == next; i++ {
			apply(ev[i])
		}
		x = next
	}
	return dst, nil
}

// overlay appends the answer over [a, b) of a layer that decides own and
// defers elsewhere to below (its backing file's answer).
func overlay(dst, own, below []Run, a, b int64) []Run {
	j := 0
	x := a
	for _, o := range own {
		if o.Offset > x {
			dst, j = appendRange(dst, below, j, x, o.Offset)
		}
		dst = append(dst, o)
		x = o.End()
	}
	if x < b {
		dst, _ = appendRange(dst, below, j, x, b)
	}
	return dst
}

// appendRange appends runs[j:] clipped to [from, to), returning the index
// to continue from.
func appendRange(dst, runs []Run, j int, from, to int64) ([]Run, int) {
	for j < len(runs) && runs[j].End() <= from {
		j++
	}
	for ; j < len(runs) && runs[j].Offset < to; j++ {
		dst = append(dst, clip(runs[j], from, to))
		if runs[j].End() > to {
			break
		}
	}
	return dst, j
}

// scratch holds the status extents of one layer at a time.
type scratch struct{ exts []Extent }

// appendOwn appends what l decides in [ws, we) (clipped to its size):
// its status where it holds something, where it holds nothing and has no
// backing file, and where it holds nothing past its backing file's end.
// Data of a metadata-preallocated image is split where the host file has
// holes, as block status reports it.
func appendOwn(dst []Run, l *Layer, ws, we int64, sc *scratch) ([]Run, error) {
	end := min(we, l.Size)
	if ws >= end {
		return dst, nil
	}
	exts, err := l.Status(sc.exts[:0], ws, end-ws)
	sc.exts = exts[:0]
	if err != nil {
		return dst, err
	}
	return appendDecided(dst, l, exts, true), nil
}

// appendDecided appends the extents of l that it decides (see appendOwn);
// holes says whether to split preallocated data at host holes.
func appendDecided(dst []Run, l *Layer, exts []Extent, holes bool) []Run {
	b := l.Backing
	prealloc := false
	if holes && l.q != nil {
		prealloc, _ = l.q.metadataPreallocated() // QEMU treats a failed check as "no"
	}
	for _, e := range exts {
		switch {
		case e.Kind == Unallocated && b != nil:
			if e.End() <= b.Size {
				continue
			}
			if cut := b.Size - e.Offset; cut > 0 {
				e.Offset, e.Length = b.Size, e.Length-cut
				if e.File != nil {
					e.HostOffset += cut
				}
			}
			dst = append(dst, Run{Extent: e, Layer: l})
		case e.Kind == Data && prealloc:
			dst = appendHostHoles(dst, l, e)
		default:
			dst = append(dst, Run{Extent: e, Layer: l})
		}
	}
	return dst
}

// appendHostHoles splits a data extent of a metadata-preallocated image
// where its host file has holes (qcow2_co_block_status passes the file's
// status through for such images).
func appendHostHoles(dst []Run, l *Layer, e Extent) []Run {
	for done := int64(0); done < e.Length; {
		data, n, err := e.File.Allocation(e.HostOffset+done, e.Length-done)
		if err != nil || n <= 0 {
			n, data = e.Length-done, true // errors only cost the extra information
		}
		dst = append(dst, Run{
			Extent:   Extent{Offset: e.Offset + done, Length: n, Kind: Data, File: e.File, HostOffset: e.HostOffset + done},
			Layer:    l,
			HostHole: !data,
		})
		done += n
	}
	return dst
}

// direct appends the runs of [off, end) by walking the chain from l as far
// as each range needs, using the cached answers of the layers below where
// there are some. It is what a window that cannot be resolved whole, and a
// first read of a window, take; its errors are exactly those of the
// tables the range needs.
func (l *Layer) direct(dst []Run, off, end int64, holes bool) ([]Run, error) {
	var sc []scratch
	return l.walk(dst, off, end, holes, &sc, 0)
}

func (l *Layer) walk(dst []Run, off, end int64, holes bool, sc *[]scratch, depth int) ([]Run, error) {
	if depth > 0 && l.res != nil {
		// A layer below with a cached answer needs no walk.
		if v, ok := l.res.cache.Get(resKey{l, off >> l.res.windowBits}); ok {
			if f := v.(*flat); !f.direct && (end-1)>>l.res.windowBits == off>>l.res.windowBits {
				for i := searchRuns(f.runs, off); i < len(f.runs) && f.runs[i].Offset < end; i++ {
					dst = append(dst, clip(f.runs[i], off, end))
				}
				return dst, nil
			}
		}
	}
	if depth >= len(*sc) {
		*sc = append(*sc, scratch{})
	}
	exts, err := l.Status((*sc)[depth].exts[:0], off, end-off)
	(*sc)[depth].exts = exts[:0]
	if err != nil {
		return dst, err
	}
	b := l.Backing
	for i := range exts {
		e := exts[i]
		if e.Kind == Unallocated && b != nil && e.Offset < b.Size {
			split := min(b.Size, e.End())
			if dst, err = b.walk(dst, e.Offset, split, holes, sc, depth+1); err != nil {
				return dst, err
			}
			if split == e.End() {
				continue
			}
		}
		dst = appendDecided(dst, l, exts[i:i+1], holes)
	}
	return dst, nil
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

package layers

import (
	"cmp"
	"slices"
)

// mapped records where the layers of a chain map anything at all: the
// guest ranges of their allocated L1 entries (the whole disk of a raw
// layer), all layers merged in offset order. Where no layer from a top
// down maps anything, the top reads as absent without a look at any L2
// table or any window; a scan of a deep chain of huge sparse disks walks
// it once per layer instead of looking at every layer for every stretch
// (256 layers of 1 TiB, each holding a cluster: ls -l in a fraction of a
// second rather than a minute).
type mapped struct {
	spans []mappedSpan // by start
	sizes []int64      // the distinct virtual sizes of the chain, sorted
}

// mappedSpan: layer position p maps something in [start, end).
type mappedSpan struct {
	start, end int64
	p          int
}

// Limits of the index: an L1 table longer than mappedMaxL1 entries (64 TiB
// with 64 KiB clusters) counts as mapping everything rather than being
// read whole, and a chain whose layers map more than mappedMaxSpans
// separate ranges has no index (scans then look at each layer's L1 table,
// a window at a time). Either way the index stays under 2 MiB.
const (
	mappedMaxL1    = 1 << 17
	mappedMaxSpans = 1 << 16
)

// mappedIndex returns the chain's index, built on first use; nil when the
// chain maps too much for one.
func (r *resolver) mappedIndex() *mapped {
	r.mappedOnce.Do(func() { r.mapped = buildMapped(r.layers) })
	return r.mapped
}

func buildMapped(ls []*Layer) *mapped {
	m := &mapped{}
	for p, l := range ls {
		m.sizes = append(m.sizes, l.Size)
		q := l.q
		if q == nil || q.l1Len() > mappedMaxL1 {
			m.spans = append(m.spans, mappedSpan{0, l.Size, p})
			continue
		}
		for i, n := int64(0), q.l1Len(); i < n && i<<q.spanBits < l.Size; i++ {
			e, err := q.l1Entry(i)
			if err == nil && e.l2Offset() == 0 {
				continue
			}
			s, end := i<<q.spanBits, min((i+1)<<q.spanBits, l.Size)
			if k := len(m.spans) - 1; k >= 0 && m.spans[k].p == p && m.spans[k].end == s {
				m.spans[k].end = end
			} else {
				m.spans = append(m.spans, mappedSpan{s, end, p})
			}
			if len(m.spans) > mappedMaxSpans {
				return nil
			}
		}
	}
	slices.SortFunc(m.spans, func(a, b mappedSpan) int { return cmp.Compare(a.start, b.start) })
	slices.Sort(m.sizes)
	m.sizes = slices.Compact(m.sizes)
	return m
}

// l1Len is the number of entries of the view's L1 table.
func (q *qcow2View) l1Len() int64 {
	if q.l1 != nil {
		return int64(len(q.l1))
	}
	return q.l1Size
}

// emptyScan finds, for one scan of a top from low to high offsets, the
// stretches where nothing from the top down to the layer QEMU's search
// stops at maps anything. Its cursor only moves forwards, so a whole scan
// costs one pass over the index.
type emptyScan struct {
	top  *Layer
	m    *mapped
	from int // the first position the index answers for
	// own is set for a top outside the chain's layers (a snapshot's
	// view), whose own L1 table is looked at directly; ownUntil caches how
	// far it maps nothing.
	own      *Layer
	ownUntil int64
	cur      int // spans before cur end before the scan's offset or lie above from
	// The layer where the search stops over an empty stretch depends only
	// on the sizes of the layers; it holds from decLo to decHi.
	dec          *Layer
	decLo, decHi int64
}

func newEmptyScan(top *Layer) *emptyScan {
	s := &emptyScan{top: top, decHi: -1}
	r := top.res
	if r == nil {
		return s
	}
	switch {
	case r.inColumn(top):
		s.from = top.Index
	case top.Backing != nil && r.inColumn(top.Backing):
		s.own, s.from = top, top.Backing.Index
	default:
		return s
	}
	s.m = r.mappedIndex()
	return s
}

// next returns the absent run of the empty stretch from off (to at most
// end), and false when something maps off: the range then needs the
// windows. Calls must come with offsets that never decrease.
func (s *emptyScan) next(off, end int64) (Run, bool) {
	if s.m == nil {
		// No index: one window at a time, each layer's L1 table looked at.
		return s.top.nothingBelow(off, min(end, s.top.windowEnd(off)))
	}
	if o := s.own; o != nil {
		if off >= s.ownUntil {
			if o.q == nil {
				return Run{}, false
			}
			s.ownUntil = o.q.unmappedUntil(off, o.Size)
		}
		if s.ownUntil <= off {
			return Run{}, false
		}
		end = min(end, s.ownUntil)
	}
	sp := s.m.spans
	for s.cur < len(sp) && (sp[s.cur].end <= off || sp[s.cur].p < s.from) {
		s.cur++
	}
	if s.cur < len(sp) {
		if sp[s.cur].start <= off {
			return Run{}, false
		}
		end = min(end, sp[s.cur].start)
	}
	if off < s.decLo || off >= s.decHi {
		s.decide(off)
	}
	end = min(end, s.decHi)
	return Run{Extent: Extent{Offset: off, Length: end - off, Kind: Unallocated}, Layer: s.dec}, true
}

// decide finds the layer where the search stops over an empty stretch at
// off: the first from the top without a backing file or whose backing
// file ends at or before off. It holds until the next size in the chain.
func (s *emptyScan) decide(off int64) {
	d := s.top
	for d.Backing != nil && d.Backing.Size > off {
		d = d.Backing
	}
	s.dec = d
	i, _ := slices.BinarySearch(s.m.sizes, off+1)
	s.decLo, s.decHi = off, s.top.Size
	if i < len(s.m.sizes) {
		s.decHi = min(s.decHi, s.m.sizes[i])
	}
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

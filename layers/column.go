package layers

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
)

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
	slices.SortFunc(c.events, func(a, b event) int { return cmp.Compare(a.pos, b.pos) })
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

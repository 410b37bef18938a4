package status

import (
	"github.com/chainfs/chainfs/layers"
)

// Depth streams the allocation depth of l over [off, off+length) clipped
// to l.Size, as qemu-nbd's "qemu:allocation-depth" context reports it and
// nbdinfo prints it, equal neighbours merged.
//
// It differs from the map in two ways, both from block/io.c asking without
// want_zero (bdrv_is_allocated_above): a raw layer counts as allocated
// everywhere, holes included; and a range past the end of a shorter
// backing file counts as allocated in that backing file, while the map
// reports it as not present at the layer above.
func Depth(l *layers.Layer, off, length int64, fn func(DepthExtent) error) error {
	end := min(off+length, l.Size)
	if off < 0 || off >= end {
		return nil
	}
	d := &depther{fn: fn}
	step := window(l)
	for ws := off; ws < end; {
		we := min(ws+step, end)
		if err := d.walk(l, 0, ws, we); err != nil {
			return err
		}
		if d.err != nil {
			return d.err
		}
		ws = we
	}
	if d.err == nil && d.cur.Length > 0 {
		d.err = fn(d.cur)
	}
	return d.err
}

type depther struct {
	scratch [][]layers.Extent
	cur     DepthExtent
	fn      func(DepthExtent) error
	err     error
}

func (d *depther) walk(l *layers.Layer, level int, off, end int64) error {
	if l.Format == layers.FormatRaw {
		d.add(off, end-off, level+1)
		return nil
	}
	if level >= len(d.scratch) {
		d.scratch = append(d.scratch, nil)
	}
	exts, err := l.Status(d.scratch[level][:0], off, end-off)
	d.scratch[level] = exts[:0]
	if err != nil {
		return err
	}
	for _, e := range exts {
		if e.Kind != layers.Unallocated {
			d.add(e.Offset, e.Length, level+1)
			continue
		}
		b := l.Backing
		if b == nil {
			d.add(e.Offset, e.Length, 0)
			continue
		}
		split := min(max(b.Size, e.Offset), e.End())
		if split > e.Offset {
			if err := d.walk(b, level+1, e.Offset, split); err != nil {
				return err
			}
		}
		if split < e.End() {
			// Zeroes synthesized past a short backing file's end count as
			// allocated in that file.
			d.add(split, e.End()-split, level+2)
		}
	}
	return nil
}

func (d *depther) add(off, length int64, depth int) {
	if d.err != nil || length <= 0 {
		return
	}
	if d.cur.Length > 0 && d.cur.Depth == depth && d.cur.Offset+d.cur.Length == off {
		d.cur.Length += length
		return
	}
	if d.cur.Length > 0 {
		d.err = d.fn(d.cur)
	}
	d.cur = DepthExtent{Offset: off, Length: length, Depth: depth}
}

package status

import (
	"github.com/chainfs/chainfs/layers"
)

// Depth streams the allocation depth of l over [off, off+length) clipped
// to l.Size, as qemu-nbd's "qemu:allocation-depth" context reports it and
// nbdinfo prints it, equal neighbours merged.
func Depth(l *layers.Layer, off, length int64, fn func(DepthExtent) error) error {
	end := min(off+length, l.Size)
	if off < 0 || off >= end {
		return nil
	}
	var cur DepthExtent
	for r, err := range l.Runs(off, end-off) {
		if err != nil {
			return err
		}
		d := depthOf(l, &r)
		if cur.Length > 0 && cur.Depth == d && cur.Offset+cur.Length == r.Offset {
			cur.Length += r.Length
			continue
		}
		if cur.Length > 0 {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur = DepthExtent{Offset: r.Offset, Length: r.Length, Depth: d}
	}
	if cur.Length > 0 {
		return fn(cur)
	}
	return nil
}

// depthOf is the allocation depth of a run of top: 1 for top itself, n for
// the layer n-1 below it, 0 where no layer holds anything. It differs from
// the map's depth in two ways, both from block/io.c asking without
// want_zero (bdrv_is_allocated_above): a raw layer counts as allocated
// everywhere, holes included (its status is data or zero throughout); and
// a range past the end of a shorter backing file counts as allocated in
// that backing file, where the map reports it as not present at the layer
// above.
func depthOf(top *layers.Layer, r *layers.Run) int {
	d := r.Layer.Index - top.Index + 1
	if r.Kind == layers.Unallocated {
		if r.Layer.Backing == nil {
			return 0
		}
		return d + 1
	}
	return d
}

package status

import (
	"github.com/chainfs/chainfs/layers"
)

// isData reports whether the map marks a run "data": true: data and
// compressed clusters, including preallocated data over a host hole.
func isData(r *layers.Run) bool { return r.Kind == layers.Data || r.Kind == layers.Compressed }

// SeekData returns the first offset at or after off that the map of l marks
// "data": true, and false when there is none (lseek's ENXIO).
func SeekData(l *layers.Layer, off int64) (int64, bool, error) {
	off = max(off, 0)
	if off >= l.Size {
		return 0, false, nil
	}
	for r, err := range l.Runs(off, l.Size-off) {
		if err != nil {
			return 0, false, err
		}
		if isData(&r) {
			return max(r.Offset, off), true, nil
		}
	}
	return 0, false, nil
}

// SeekHole returns the first offset at or after off that the map of l marks
// "data": false, or l.Size when no hole is left (the implicit hole at EOF).
func SeekHole(l *layers.Layer, off int64) (int64, error) {
	off = max(off, 0)
	if off >= l.Size {
		return l.Size, nil
	}
	for r, err := range l.Runs(off, l.Size-off) {
		if err != nil {
			return 0, err
		}
		if !isData(&r) {
			return max(r.Offset, off), nil
		}
	}
	return l.Size, nil
}

// DataBytes returns the number of bytes the map of l marks "data": true.
func DataBytes(l *layers.Layer) (int64, error) {
	var n int64
	for r, err := range l.Runs(0, l.Size) {
		if err != nil {
			return 0, err
		}
		if isData(&r) {
			n += r.Length
		}
	}
	return n, nil
}

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
	return seek(l, max(off, 0), true)
}

// SeekHole returns the first offset at or after off that the map of l marks
// "data": false, or l.Size when no hole is left (the implicit hole at EOF).
func SeekHole(l *layers.Layer, off int64) (int64, error) {
	at, ok, err := seek(l, max(off, 0), false)
	if !ok && err == nil {
		at = l.Size
	}
	return at, err
}

// seek returns the first offset at or after off (not negative) whose run
// isData reports as data, and false when there is none before l.Size.
func seek(l *layers.Layer, off int64, data bool) (int64, bool, error) {
	if off >= l.Size {
		return 0, false, nil
	}
	for r, err := range l.Runs(off, l.Size-off) {
		if err != nil {
			return 0, false, err
		}
		if isData(&r) == data {
			return max(r.Offset, off), true, nil
		}
	}
	return 0, false, nil
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

package status

import (
	"errors"

	"github.com/chainfs/chainfs/layers"
)

var errStop = errors.New("stop")

// SeekData returns the first offset at or after off that the map of l marks
// "data": true, and false when there is none (lseek's ENXIO).
func SeekData(l *layers.Layer, off int64) (int64, bool, error) {
	if off < 0 {
		off = 0
	}
	found, at := false, int64(0)
	err := Map(l, off, l.Size-off, func(e Entry) error {
		if e.Data {
			found, at = true, max(e.Start, off)
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return 0, false, err
	}
	return at, found, nil
}

// SeekHole returns the first offset at or after off that the map of l marks
// "data": false, or l.Size when no hole is left (the implicit hole at EOF).
func SeekHole(l *layers.Layer, off int64) (int64, error) {
	if off < 0 {
		off = 0
	}
	at := l.Size
	err := Map(l, off, l.Size-off, func(e Entry) error {
		if !e.Data {
			at = max(e.Start, off)
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return 0, err
	}
	return at, nil
}

// DataBytes returns the number of bytes the map of l marks "data": true.
func DataBytes(l *layers.Layer) (int64, error) {
	var n int64
	err := Map(l, 0, l.Size, func(e Entry) error {
		if e.Data {
			n += e.Length
		}
		return nil
	})
	return n, err
}

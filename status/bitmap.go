package status

import (
	"bufio"
	"fmt"
	"io"

	"github.com/chainfs/chainfs/layers"
)

// BitmapExtent is one line of `nbdinfo --map=qemu:dirty-bitmap:B`: a run of
// the bitmap, dirty or clean.
type BitmapExtent struct {
	Offset, Length int64
	Dirty          bool
}

// Type is the extent's value in the qemu:dirty-bitmap context: 1 dirty, 0
// clean.
func (e BitmapExtent) Type() int {
	if e.Dirty {
		return 1
	}
	return 0
}

// BitmapDescription is nbdinfo's description of a qemu:dirty-bitmap value.
func BitmapDescription(dirty bool) string {
	if dirty {
		return "dirty"
	}
	return "clean"
}

// Bitmap streams the runs of persistent bitmap b as qemu-nbd's
// "qemu:dirty-bitmap:B" context reports them (`qemu-nbd -B B`): dirty and
// clean ranges of the disk, neighbours merged, granularity-aligned but for
// the last, which ends at the disk size (nbd/server.c, bitmap_to_extents).
// A bitmap QEMU would not use (b.Err) is an error, as qemu-nbd refuses to
// export it.
func Bitmap(b *layers.Bitmap, fn func(BitmapExtent) error) error {
	return b.Runs(func(off, length int64, dirty bool) error {
		return fn(BitmapExtent{Offset: off, Length: length, Dirty: dirty})
	})
}

// WriteBitmap writes what `nbdinfo --map=qemu:dirty-bitmap:B` prints for
// bitmap b of a layer served by `qemu-nbd -B B`: offset, length and value
// right-aligned in columns of 10, 10 and 3, then "dirty" or "clean".
func WriteBitmap(w io.Writer, b *layers.Bitmap) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	err := Bitmap(b, func(e BitmapExtent) error {
		_, err := fmt.Fprintf(bw, "%10d  %10d  %3d  %s\n", e.Offset, e.Length, e.Type(), BitmapDescription(e.Dirty))
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// WriteBitmapJSON writes what `nbdinfo --json --map=qemu:dirty-bitmap:B`
// prints.
func WriteBitmapJSON(w io.Writer, b *layers.Bitmap) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	first := true
	if _, err := bw.WriteString("[\n"); err != nil {
		return err
	}
	err := Bitmap(b, func(e BitmapExtent) error {
		sep := ",\n"
		if first {
			sep, first = "", false
		}
		_, err := fmt.Fprintf(bw, "%s{ \"offset\": %d, \"length\": %d, \"type\": %d, \"description\": %q}",
			sep, e.Offset, e.Length, e.Type(), BitmapDescription(e.Dirty))
		return err
	})
	if err != nil {
		return err
	}
	if _, err := bw.WriteString("\n]\n"); err != nil {
		return err
	}
	return bw.Flush()
}

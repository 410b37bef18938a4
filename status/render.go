package status

import (
	"bufio"
	"fmt"
	"io"
	"strconv"

	"github.com/chainfs/chainfs/layers"
)

// AppendMapJSON appends e as one object of `qemu-img map --output=json`
// (qemu-img.c, dump_map_entry), in the current upstream format with the
// "compressed" key.
func AppendMapJSON(b []byte, e Entry) []byte {
	b = append(b, `{ "start": `...)
	b = strconv.AppendInt(b, e.Start, 10)
	b = append(b, `, "length": `...)
	b = strconv.AppendInt(b, e.Length, 10)
	b = append(b, `, "depth": `...)
	b = strconv.AppendInt(b, int64(e.Depth), 10)
	b = append(b, `, "present": `...)
	b = strconv.AppendBool(b, e.Present)
	b = append(b, `, "zero": `...)
	b = strconv.AppendBool(b, e.Zero)
	b = append(b, `, "data": `...)
	b = strconv.AppendBool(b, e.Data)
	b = append(b, `, "compressed": `...)
	b = strconv.AppendBool(b, e.Compressed)
	if e.HasOffset {
		b = append(b, `, "offset": `...)
		b = strconv.AppendInt(b, e.Offset, 10)
	}
	return append(b, '}')
}

// WriteMapJSON writes what `qemu-img map --output=json` prints for l:
// "[", one entry per line joined by ",\n", then "]\n".
func WriteMapJSON(w io.Writer, l *layers.Layer) error {
	return MapJSON.Render(w, l, Mark{}, nil)
}

// Text is one of the text renderings of a layer that chainfs shows as
// files.
type Text uint8

const (
	// MapJSON is what `qemu-img map --output=json` prints (WriteMapJSON).
	MapJSON Text = iota
	// DepthText is what `nbdinfo --map=qemu:allocation-depth` prints
	// against `qemu-nbd -A` (WriteDepth).
	DepthText
)

// Mark is a point where a rendering can resume: an entry (or line) that
// starts at guest offset Guest and whose text starts at byte Byte of the
// rendered file. Rendering from a mark gives the same text as rendering
// from the start, cut at Byte: entries are merged only forwards, so the
// entry at a mark is the same whether or not the ones before it were
// rendered. The zero Mark is the start of the file.
type Mark struct{ Guest, Byte int64 }

// Render writes the text of l from mark from (the zero Mark: the whole
// file) to its end. mark, if not nil, is called with the mark of each entry
// before its text is written, so that callers can resume there later
// without keeping the text.
func (t Text) Render(w io.Writer, l *layers.Layer, from Mark, mark func(Mark)) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	pos := from.Byte
	buf := make([]byte, 0, 256)
	emit := func(start int64, text []byte) error {
		if mark != nil {
			mark(Mark{start, pos})
		}
		pos += int64(len(text))
		_, err := bw.Write(text)
		return err
	}
	var err error
	switch t {
	case MapJSON:
		if from.Byte == 0 {
			bw.WriteString("[")
			pos = 1
		}
		err = Map(l, from.Guest, l.Size-from.Guest, func(e Entry) error {
			buf = buf[:0]
			if e.Start > 0 { // every entry but the first follows a comma
				buf = append(buf, ",\n"...)
			}
			return emit(e.Start, AppendMapJSON(buf, e))
		})
		if err == nil && l.Size == 0 && from.Byte == 0 {
			// qemu-img map prints its last entry after the loop even when
			// the loop never filled it: an image of no bytes maps to one
			// entry of length 0, every flag false (qemu-img.c, img_map).
			err = emit(0, AppendMapJSON(buf[:0], Entry{}))
		}
		if err == nil {
			_, err = bw.WriteString("]\n")
		}
	case DepthText:
		err = Depth(l, from.Guest, l.Size-from.Guest, func(e DepthExtent) error {
			return emit(e.Offset, AppendDepthLine(buf[:0], e))
		})
	default:
		err = fmt.Errorf("status: unknown text %d", t)
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

// DepthDescription is nbdinfo's description of a qemu:allocation-depth value.
func DepthDescription(depth int) string {
	switch depth {
	case 0:
		return "absent"
	case 1:
		return "local"
	}
	return "backing depth " + strconv.Itoa(depth)
}

// WriteDepth writes what `nbdinfo --map=qemu:allocation-depth` prints for
// l served by `qemu-nbd -A`: one line per extent (AppendDepthLine).
func WriteDepth(w io.Writer, l *layers.Layer) error {
	return DepthText.Render(w, l, Mark{}, nil)
}

// AppendDepthLine appends the line nbdinfo prints for e: offset, length
// and value right-aligned in columns of 10, 10 and 3, two spaces apart,
// then the description.
func AppendDepthLine(b []byte, e DepthExtent) []byte {
	b = appendRight(b, e.Offset, 10)
	b = append(b, "  "...)
	b = appendRight(b, e.Length, 10)
	b = append(b, "  "...)
	b = appendRight(b, int64(e.Depth), 3)
	b = append(b, "  "...)
	b = append(b, DepthDescription(e.Depth)...)
	return append(b, '\n')
}

// appendRight appends n right-aligned in width columns (wider if it needs
// more), as printf's %*d does.
func appendRight(b []byte, n int64, width int) []byte {
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], n, 10)
	for i := len(d); i < width; i++ {
		b = append(b, ' ')
	}
	return append(b, d...)
}

// WriteDepthJSON writes what `nbdinfo --json --map=qemu:allocation-depth`
// prints.
func WriteDepthJSON(w io.Writer, l *layers.Layer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	first := true
	if _, err := bw.WriteString("[\n"); err != nil {
		return err
	}
	err := Depth(l, 0, l.Size, func(e DepthExtent) error {
		sep := ",\n"
		if first {
			sep, first = "", false
		}
		_, err := fmt.Fprintf(bw, "%s{ \"offset\": %d, \"length\": %d, \"type\": %d, \"description\": %q}",
			sep, e.Offset, e.Length, e.Depth, DepthDescription(e.Depth))
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

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
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 256)
	first := true
	if _, err := bw.WriteString("["); err != nil {
		return err
	}
	err := Map(l, 0, l.Size, func(e Entry) error {
		buf = buf[:0]
		if !first {
			buf = append(buf, ",\n"...)
		}
		first = false
		_, err := bw.Write(AppendMapJSON(buf, e))
		return err
	})
	if err != nil {
		return err
	}
	if _, err := bw.WriteString("]\n"); err != nil {
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
// l served by `qemu-nbd -A`: offset, length and value right-aligned in
// columns of 10, 10 and 3, then the description.
func WriteDepth(w io.Writer, l *layers.Layer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	err := Depth(l, 0, l.Size, func(e DepthExtent) error {
		_, err := fmt.Fprintf(bw, "%10d  %10d  %3d  %s\n", e.Offset, e.Length, e.Depth, DepthDescription(e.Depth))
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
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

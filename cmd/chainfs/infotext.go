package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/chainfs/chainfs/layers"
)

// writeInfoJSON writes infos as `qemu-img info --output=json
// --backing-chain` does, byte for byte as QEMU 8.0 and later print it,
// with each layer's "chainfs" member last.
func writeInfoJSON(w io.Writer, infos []imageInfo) error {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range infos {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n    ")
		if err := writeLayerJSON(&b, &infos[i]); err != nil {
			return err
		}
	}
	b.WriteString("\n]\n")
	_, err := w.Write(b.Bytes())
	return err
}

// writeLayerJSON writes one layer's object at nesting level 1. QEMU's keys
// come in QEMU's order; "chainfs", which QEMU does not have, comes after
// them, so that removing it leaves exactly what qemu-img prints.
func writeLayerJSON(b *bytes.Buffer, info *imageInfo) error {
	v, err := toQObject(info)
	if err != nil {
		return err
	}
	var own qObject
	dict := v.(qDict)
	qemu := dict[:0:0]
	for _, m := range dict {
		if m.key == "chainfs" {
			own = m.val
			continue
		}
		qemu = append(qemu, m)
	}
	writeQJSON(b, qemu, 1)
	b.Truncate(b.Len() - len("\n    }"))
	b.WriteString(",\n        \"chainfs\": ")
	writeQJSON(b, own, 2)
	b.WriteString("\n    }")
	return nil
}

// writeInfoText writes infos as `qemu-img info --backing-chain` (QEMU 8.0
// and later) prints them, a blank line between layers, each layer followed
// by what chainfs adds under "chainfs:".
func writeInfoText(w io.Writer, infos []imageInfo) error {
	var b bytes.Buffer
	for n, i := range infos {
		if n > 0 {
			b.WriteByte('\n')
		}
		if err := writeLayerText(&b, &i); err != nil {
			return err
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// writeLayerText follows block/qapi.c, bdrv_image_info_dump and
// bdrv_node_info_dump.
func writeLayerText(b *bytes.Buffer, i *imageInfo) error {
	fmt.Fprintf(b, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\ndisk size: %s\n",
		i.Filename, i.Format, sizeToStr(i.VirtualSize), i.VirtualSize, diskSize(i.ActualSize))
	if i.ClusterSize != 0 {
		fmt.Fprintf(b, "cluster_size: %d\n", i.ClusterSize)
	}
	if i.DirtyFlag {
		b.WriteString("cleanly shut down: no\n")
	}
	if i.BackingFilename != "" {
		fmt.Fprintf(b, "backing file: %s", i.BackingFilename)
		if i.FullBackingFilename != i.BackingFilename {
			fmt.Fprintf(b, " (actual path: %s)", i.FullBackingFilename)
		}
		b.WriteByte('\n')
		if i.BackingFilenameFormat != "" {
			fmt.Fprintf(b, "backing file format: %s\n", i.BackingFilenameFormat)
		}
	}
	writeSnapshotList(b, i.Snapshots)
	if err := writeSpecificText(b, i.FormatSpecific, 0); err != nil {
		return err
	}
	for _, c := range i.Children {
		fmt.Fprintf(b, "Child node '/%s':\n", c.Name)
		f := &c.Info
		fmt.Fprintf(b, "    filename: %s\n    protocol type: %s\n    file length: %s (%d bytes)\n    disk size: %s\n",
			f.Filename, f.Format, sizeToStr(f.VirtualSize), f.VirtualSize, diskSize(f.ActualSize))
		if err := writeSpecificText(b, f.FormatSpecific, 1); err != nil {
			return err
		}
	}
	writeChainfsText(b, &i.Chainfs)
	return nil
}

// writeSpecificText writes the "Format specific information:" section of
// a node at the given indentation level; QEMU leaves it out when the data
// is empty (the file-posix node's usually is).
func writeSpecificText(b *bytes.Buffer, spec *formatSpecific, level int) error {
	if spec == nil {
		return nil
	}
	data, err := toQObject(spec.Data)
	if err != nil {
		return err
	}
	if d, ok := data.(qDict); ok && len(d) == 0 {
		return nil
	}
	fmt.Fprintf(b, "%sFormat specific information:\n", strings.Repeat(" ", 4*level))
	dumpQObject(b, data, level+1)
	return nil
}

// writeChainfsText writes the lines chainfs adds to each layer.
func writeChainfsText(b *bytes.Buffer, c *chainfsInfo) {
	b.WriteString("chainfs:\n")
	fmt.Fprintf(b, "    depth: %d\n", c.Depth)
	if c.FormatProbed {
		b.WriteString("    format probed: true (the image naming this layer records no format for it)\n")
	}
	if c.DataFilePath != "" {
		fmt.Fprintf(b, "    data file path: %s\n", c.DataFilePath)
	}
	writeInnerText(b, c)
	if len(c.Damage) > 0 {
		b.WriteString("    damage QEMU reads through (qemu-img check reports it):\n")
		for _, k := range layers.DamageKinds() {
			if n := c.Damage[k.Key()]; n > 0 {
				fmt.Fprintf(b, "        %s: %d\n", k, n)
			}
		}
	}
}

func diskSize(n *int64) string {
	if n == nil {
		return "unavailable"
	}
	return sizeToStr(*n)
}

// sizeToStr prints a byte count as QEMU's size_to_str (util/cutils.c):
// three significant digits in the largest binary unit that keeps the
// number below 1000, "512 B", "196 KiB", "0.977 MiB".
func sizeToStr(n int64) string {
	// frexp of n*1024/1000 gives the exponent that switches to the next
	// unit once the number would reach 1000 in the current one.
	_, e := math.Frexp(float64(n) / (1000.0 / 1024.0))
	i := max((e-1)/10, 0)
	i = min(i, 6)
	units := [...]string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	return fmt.Sprintf("%.3g %sB", float64(n)/float64(uint64(1)<<(10*i)), units[i])
}

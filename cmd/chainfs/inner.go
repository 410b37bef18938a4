package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	chainfs "github.com/chainfs/chainfs/fs"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// What a qcow2 layer keeps inside it, on the command line: `map` and
// `depth` of an internal snapshot (--snapshot), `bitmap`, and the
// snapshot and bitmap parts of `info`.

// registerSnapshot adds --snapshot to map and depth.
func (c *chainFlags) registerSnapshot(fs *flag.FlagSet) {
	fs.StringVar(&c.snapshot, "snapshot", "", "show internal snapshot `SNAP` of the layer (its ID or name, looked up as qemu-img convert -l does: ID first)")
}

// view returns the layer itself, or with --snapshot the snapshot's view
// of it.
func (c *chainFlags) view(l *layers.Layer, cmd string, stderr io.Writer) (*layers.Layer, int) {
	if c.snapshot == "" {
		return l, exitOK
	}
	i, ok := l.FindSnapshot(c.snapshot)
	if !ok {
		fmt.Fprintf(stderr, "chainfs %s: layer %d (%s) has no snapshot with ID or name %q\n", cmd, l.Index, l.Path, c.snapshot)
		return nil, exitFailure
	}
	v, err := l.SnapshotLayer(i)
	if err != nil {
		fmt.Fprintf(stderr, "chainfs %s: %v\n", cmd, err)
		return nil, exitImage
	}
	return v, exitOK
}

const bitmapSynopsis = `bitmap [--layer N] [--json] IMAGE BITMAP

Prints what nbdinfo --map=qemu:dirty-bitmap:BITMAP prints for the layer
served by qemu-nbd -B BITMAP: the dirty and clean ranges of its persistent
dirty bitmap BITMAP (the name as recorded, unescaped).

options:`

func cmdBitmap(args []string, stdout, stderr io.Writer) int {
	fset := newFlagSet("bitmap", bitmapSynopsis, stderr)
	c := chainFlags{more: []string{"BITMAP"}}
	c.register(fset, true)
	asJSON := fset.Bool("json", false, "print what nbdinfo --json prints")
	chain, code := c.open(fset, args, stderr)
	if chain == nil {
		return code
	}
	defer chain.Close()
	l, code := c.pick(chain, "bitmap", stderr)
	if l == nil {
		return code
	}
	name := c.moreArgs[0]
	i, ok := l.FindBitmap(name)
	if !ok {
		fmt.Fprintf(stderr, "chainfs bitmap: layer %d (%s) has no persistent bitmap %q\n", l.Index, l.Path, name)
		return exitFailure
	}
	write := status.WriteBitmap
	if *asJSON {
		write = status.WriteBitmapJSON
	}
	if err := write(stdout, &l.Bitmaps()[i]); err != nil {
		fmt.Fprintf(stderr, "chainfs bitmap: layer %d (%s): %v\n", l.Index, l.Path, err)
		return exitFailure
	}
	return exitOK
}

// describeInner fills what `qemu-img info` says of the layer's snapshots
// and bitmaps, and what chainfs adds: which files show them.
func describeInner(l *layers.Layer, i *imageInfo) {
	snaps := l.Snapshots()
	// qcow2_snapshot_list refuses to list an image with an external data
	// file; qemu-img info then shows no snapshots.
	if len(snaps) > 0 && l.DataFile == nil {
		tags := chainfs.SnapshotTags(l)
		for n, s := range snaps {
			si := snapshotInfo{
				ID: qemuString(s.ID, 127), Name: qemuString(s.Name, 255), VMStateSize: int64(s.VMStateSize),
				DateSec: int64(s.DateSec), DateNsec: int64(s.DateNsec),
				VMClockSec: int64(s.VMClockNsec / 1e9), VMClockNsec: int64(s.VMClockNsec % 1e9),
			}
			if s.ICount != -1 {
				si.ICount = ptr(s.ICount)
			}
			i.Snapshots = append(i.Snapshots, si)
			own := snapshotFiles{ID: s.ID, Name: s.Name, DiskSize: int64(s.DiskSize)}
			if s.Err != nil {
				own.LeftOut = s.Err.Error()
			} else {
				own.File = chainfs.SnapshotFileName(l, tags[n], ".raw")
			}
			i.Chainfs.Snapshots = append(i.Chainfs.Snapshots, own)
		}
	}
	bms := l.Bitmaps()
	if len(bms) == 0 {
		return
	}
	q := i.FormatSpecific.Data.(*qcow2Info)
	tags := chainfs.BitmapTags(l)
	for n, b := range bms {
		flags := []string{}
		if b.InUse() {
			flags = append(flags, "in-use")
		}
		if b.Auto() {
			flags = append(flags, "auto")
		}
		q.Bitmaps = append(q.Bitmaps, bitmapInfo{Name: qemuString(b.Name, -1), Granularity: b.Granularity, Flags: flags})
		own := bitmapFiles{Name: b.Name, File: chainfs.BitmapFileName(l, tags[n])}
		if b.Err != nil {
			own.Unusable = b.Err.Error()
		}
		i.Chainfs.Bitmaps = append(i.Chainfs.Bitmaps, own)
	}
}

// snapshotFiles is what chainfs says of one internal snapshot: its disk
// size and the file of its view (the .map.json and .depth beside it), or
// why QEMU could not load it.
type snapshotFiles struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	DiskSize int64  `json:"disk-size"`
	File     string `json:"file,omitempty"`
	LeftOut  string `json:"left-out,omitempty"`
}

// bitmapFiles is what chainfs says of one persistent bitmap: its file,
// and why it cannot be read when QEMU would not use it.
type bitmapFiles struct {
	Name     string `json:"name"`
	File     string `json:"file"`
	Unusable string `json:"unusable,omitempty"`
}

// qemuString is s as QEMU's tools print a snapshot or bitmap name: up to
// a NUL byte, and at most max bytes (the size of QEMUSnapshotInfo's
// buffers, less one) where max >= 0.
func qemuString(s string, max int) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if max >= 0 && len(s) > max {
		s = s[:max]
	}
	return s
}

// writeSnapshotList writes the "Snapshot list:" section of qemu-img info
// as QEMU 8.0 and later print it (block/qapi.c, bdrv_snapshot_dump): the
// header, then a row per snapshot, dated in local time.
func writeSnapshotList(b *bytes.Buffer, snaps []snapshotInfo) {
	if len(snaps) == 0 {
		return
	}
	b.WriteString("Snapshot list:\n")
	snapshotRow(b, "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT")
	for _, s := range snaps {
		secs := s.VMClockSec
		clock := fmt.Sprintf("%04d:%02d:%02d.%03d", int32(secs/3600), int32(secs/60%60), int32(secs%60), int32(s.VMClockNsec/1e6%1000))
		icount := "--"
		if s.ICount != nil {
			icount = strconv.FormatInt(*s.ICount, 10)
		}
		snapshotRow(b, s.ID, s.Name, sizeToStr(s.VMStateSize),
			time.Unix(s.DateSec, 0).Local().Format("2006-01-02 15:04:05"), clock, icount)
	}
}

// snapshotRow writes one row in QEMU's columns ("%-7s %-16s %8s %19s
// %15s %10s"), padded by bytes as C's printf pads.
func snapshotRow(b *bytes.Buffer, id, tag, size, date, clock, icount string) {
	pad := func(s string, n int, left bool) {
		fill := strings.Repeat(" ", max(0, n-len(s)))
		if left {
			b.WriteString(s + fill)
		} else {
			b.WriteString(fill + s)
		}
	}
	pad(id, 7, true)
	b.WriteByte(' ')
	pad(tag, 16, true)
	b.WriteByte(' ')
	pad(size, 8, false)
	b.WriteByte(' ')
	pad(date, 19, false)
	b.WriteByte(' ')
	pad(clock, 15, false)
	b.WriteByte(' ')
	pad(icount, 10, false)
	b.WriteByte('\n')
}

// writeInnerText writes the snapshot and bitmap lines of the "chainfs:"
// section of a layer.
func writeInnerText(b *bytes.Buffer, c *chainfsInfo) {
	if len(c.Snapshots) > 0 {
		b.WriteString("    snapshots (ID, name, disk size: files):\n")
		for _, s := range c.Snapshots {
			fmt.Fprintf(b, "        %s %q %s: ", s.ID, s.Name, sizeToStr(s.DiskSize))
			if s.LeftOut != "" {
				fmt.Fprintf(b, "left out: %s\n", s.LeftOut)
				continue
			}
			stem := strings.TrimSuffix(s.File, ".raw")
			fmt.Fprintf(b, "%s.raw %s.map.json %s.depth\n", stem, stem, stem)
		}
	}
	if len(c.Bitmaps) > 0 {
		b.WriteString("    bitmaps (name: file):\n")
		for _, bm := range c.Bitmaps {
			fmt.Fprintf(b, "        %q: %s", bm.Name, bm.File)
			if bm.Unusable != "" {
				fmt.Fprintf(b, " (unusable: %s)", bm.Unusable)
			}
			b.WriteByte('\n')
		}
	}
}

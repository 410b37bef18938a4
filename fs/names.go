package fs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/chainfs/chainfs/layers"
)

// File names for what a qcow2 layer keeps inside it. Snapshot and bitmap
// names are arbitrary bytes chosen by whoever wrote the image; in a file
// name they are escaped (Escape) and, where that cannot give a unique name
// of reasonable length, replaced by a tag that can (SnapshotTags,
// BitmapTags). `chainfs info` shows which file is which.

// fits reports whether name, escaped, is at most maxTagLen bytes (escaping
// never shortens a name).
func fits(name string) bool { return len(name) <= maxTagLen && len(Escape(name)) <= maxTagLen }

// maxTagLen bounds the escaped snapshot or bitmap part of a file name, so
// that "N-name@TAG.map.json" stays within NAME_MAX (255 bytes) with room
// for the layer's own name.
const maxTagLen = 192

// Escape writes a snapshot or bitmap name as it appears in file names:
// '%', '/' and control bytes (below 0x20, and 0x7f) as %XX in upper-case
// hex, and a leading '#' as %23, which keeps the tags SnapshotTags and
// BitmapTags make ("#ID", "##N") apart from every name. Everything else,
// spaces and UTF-8 included, is kept as it is.
func Escape(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '%' || c == '/' || c < 0x20 || c == 0x7f || (i == 0 && c == '#') {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// SnapshotTags returns, for each internal snapshot of l in table order,
// the SNAP of its files N-name@SNAP.raw, .map.json and .depth: its escaped
// name; "#" and its escaped ID when the name is empty, shared with another
// snapshot of the layer, or longer than 192 bytes escaped; "##" and its
// table index (from 0) when the ID will not do either. "" for a snapshot
// that has no files (QEMU could not load it; the reason is logged when the
// image opens).
func SnapshotTags(l *layers.Layer) []string {
	snaps := l.Snapshots()
	ids, names, bad := make([]string, len(snaps)), make([]string, len(snaps)), make([]bool, len(snaps))
	for i, s := range snaps {
		ids[i], names[i], bad[i] = s.ID, s.Name, s.Err != nil
	}
	return snapshotTags(ids, names, bad)
}

// snapshotTags is SnapshotTags of a table of IDs and names, bad marking
// the snapshots that have no files.
func snapshotTags(ids, names []string, bad []bool) []string {
	nameCount, idCount := map[string]int{}, map[string]int{}
	for i := range ids {
		nameCount[names[i]]++
		idCount[ids[i]]++
	}
	tags := make([]string, len(ids))
	for i, id := range ids {
		name := names[i]
		switch {
		case bad[i]:
		case name != "" && nameCount[name] == 1 && fits(name):
			tags[i] = Escape(name)
		case id != "" && idCount[id] == 1 && len(id) < maxTagLen && 1+len(Escape(id)) <= maxTagLen:
			tags[i] = "#" + Escape(id)
		default:
			tags[i] = "##" + strconv.Itoa(i)
		}
	}
	return tags
}

// BitmapTags returns, for each persistent bitmap of l in directory order,
// the B of its file N-name.B.bitmap: its escaped name, or "##" and its
// directory index (from 0) when the name is empty or longer than 192
// bytes escaped. (QEMU refuses an image with two bitmaps of one name.)
func BitmapTags(l *layers.Layer) []string {
	bms := l.Bitmaps()
	tags := make([]string, len(bms))
	for i, b := range bms {
		if b.Name != "" && fits(b.Name) {
			tags[i] = Escape(b.Name)
		} else {
			tags[i] = "##" + strconv.Itoa(i)
		}
	}
	return tags
}

// SnapshotFileName is the name of a snapshot's file: "N-name@SNAP" and
// suffix (".raw", ".map.json", ".depth"), the layer's name shortened in
// the middle if the whole would pass NAME_MAX.
func SnapshotFileName(l *layers.Layer, tag, suffix string) string {
	return entryName(l.Index, layerBase(l), "@"+tag+suffix)
}

// BitmapFileName is the name of a bitmap's file: "N-name.B.bitmap".
func BitmapFileName(l *layers.Layer, tag string) string {
	return entryName(l.Index, layerBase(l), "."+tag+".bitmap")
}

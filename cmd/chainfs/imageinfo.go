package main

import (
	"os"
	"strings"

	"github.com/chainfs/chainfs/layers"
)

// The types below are what `chainfs info --json` prints for each layer:
// QEMU's ImageInfo (qapi/block-core.json), key for key as
// `qemu-img info --output=json --backing-chain` prints it, so that a script
// written against qemu-img reads chainfs unchanged; chainfs's own facts sit
// apart under the one key "chainfs". A key QEMU leaves out when it does not
// apply (cluster-size of a raw image, lazy-refcounts of a version 2 image)
// is left out here too: pointers and omitempty say which.

// imageInfo is one layer: QAPI ImageInfo plus BlockGraphInfo's children.
type imageInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	DirtyFlag   bool   `json:"dirty-flag"`
	ActualSize  *int64 `json:"actual-size,omitempty"`
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size,omitempty"`
	// BackingFilename is the name the image records; FullBackingFilename
	// the same name made a path as QEMU makes it (see pathCombine), which
	// is the next layer's Filename.
	BackingFilename       string `json:"backing-filename,omitempty"`
	FullBackingFilename   string `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string `json:"backing-filename-format,omitempty"`
	// Snapshots are the layer's internal snapshots (QAPI SnapshotInfo).
	Snapshots      []snapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific *formatSpecific `json:"format-specific,omitempty"`
	// Children holds the protocol node QEMU 8.0 and later show under a
	// format node: the host file ("file"). QEMU lists no data-file child
	// here, as qemu-img info does not open it.
	Children []childInfo `json:"children"`
	// Chainfs holds what chainfs adds; QEMU has no such key.
	Chainfs chainfsInfo `json:"chainfs"`
}

// formatSpecific is QAPI ImageInfoSpecific: a type tag and its data
// (*qcow2Info for "qcow2", struct{} for "file").
type formatSpecific struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// qcow2Info is QAPI ImageInfoSpecificQCow2, filled as QEMU's
// qcow2_get_specific_info fills it: a version 2 image ("compat": "0.10")
// has no feature bits, so their keys are absent.
type qcow2Info struct {
	Compat        string `json:"compat"`
	DataFile      string `json:"data-file,omitempty"`
	DataFileRaw   *bool  `json:"data-file-raw,omitempty"`
	ExtendedL2    *bool  `json:"extended-l2,omitempty"`
	LazyRefcounts *bool  `json:"lazy-refcounts,omitempty"`
	Corrupt       *bool  `json:"corrupt,omitempty"`
	RefcountBits  int    `json:"refcount-bits"`
	// Bitmaps are the persistent dirty bitmaps (QAPI Qcow2BitmapInfo).
	Bitmaps         []bitmapInfo `json:"bitmaps,omitempty"`
	CompressionType string       `json:"compression-type"`
}

// snapshotInfo is QAPI SnapshotInfo: one internal snapshot.
type snapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize int64  `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	ICount      *int64 `json:"icount,omitempty"`
}

// bitmapInfo is QAPI Qcow2BitmapInfo: one persistent dirty bitmap, its
// flags named as QEMU names them ("in-use", "auto").
type bitmapInfo struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}

// childInfo is QAPI BlockChildInfo: a named child node of a layer.
type childInfo struct {
	Name string   `json:"name"`
	Info fileInfo `json:"info"`
}

// fileInfo is QAPI BlockGraphInfo of a protocol node, the host file
// itself: "file" for a regular file, "host_device" for a block device
// (QEMU's file-posix drivers).
type fileInfo struct {
	Filename       string          `json:"filename"`
	Format         string          `json:"format"`
	DirtyFlag      bool            `json:"dirty-flag"`
	ActualSize     *int64          `json:"actual-size,omitempty"`
	VirtualSize    int64           `json:"virtual-size"`
	FormatSpecific *formatSpecific `json:"format-specific,omitempty"`
	Children       []childInfo     `json:"children"`
}

// chainfsInfo is what chainfs says of a layer beyond QEMU's keys.
type chainfsInfo struct {
	// Depth is the layer's place in the chain: 0 for the opened image,
	// 1 for its backing file, ...; the N of the mount's N-name files.
	Depth int `json:"depth"`
	// FormatProbed: the image naming this layer recorded no format for
	// it, so chainfs probed it (as QEMU does, with a warning).
	FormatProbed bool `json:"format-probed,omitempty"`
	// DataFilePath is the external data file as chainfs opened it: the
	// recorded name (format-specific data-file) resolved against the
	// image's directory.
	DataFilePath string `json:"data-file-path,omitempty"`
	// Snapshots and Bitmaps say which files show the layer's internal
	// snapshots and persistent bitmaps (inner.go).
	Snapshots []snapshotFiles `json:"snapshots,omitempty"`
	Bitmaps   []bitmapFiles   `json:"bitmaps,omitempty"`
	// Damage counts, per kind (layers.DamageKind.Key), the damage QEMU
	// reads through that chainfs noticed: what opening the chain read,
	// or with --check every table of the layer.
	Damage map[string]int64 `json:"damage,omitempty"`
}

// describeChain says of every layer of chain, top first, what
// `qemu-img info --backing-chain` says of it.
func describeChain(chain *layers.Chain) []imageInfo {
	infos := make([]imageInfo, 0, len(chain.Layers))
	// QEMU names each backing layer by its parent's full backing name.
	filename := chain.Top().Path
	for _, l := range chain.Layers {
		i := describeLayer(l, filename)
		infos = append(infos, i)
		filename = i.FullBackingFilename
	}
	return infos
}

// describeLayer describes one layer, named filename as QEMU names it.
func describeLayer(l *layers.Layer, filename string) imageInfo {
	i := imageInfo{
		Filename:    filename,
		Format:      l.Format.String(),
		VirtualSize: l.Size,
		ActualSize:  allocated(l.File),
		Children:    []childInfo{{Name: "file", Info: describeFile(l.File, filename)}},
		Chainfs:     chainfsInfo{Depth: l.Index, FormatProbed: l.ProbedBacking},
	}
	if l.BackingFile != "" {
		i.BackingFilename = l.BackingFile
		i.FullBackingFilename = pathCombine(filename, l.BackingFile)
		i.BackingFilenameFormat = l.BackingFormat
	}
	if l.DataFile != nil {
		i.Chainfs.DataFilePath = l.DataFile.Name
	}
	i.Chainfs.Damage = damageByKey(l.Damage())
	if h := l.Header; h != nil {
		i.ClusterSize = l.ClusterSize
		i.DirtyFlag = h.IncompatibleFeatures&layers.IncompatDirty != 0
		i.FormatSpecific = &formatSpecific{Type: "qcow2", Data: describeQcow2(h)}
		describeInner(l, &i)
	}
	return i
}

// describeQcow2 fills ImageInfoSpecificQCow2 from a header.
func describeQcow2(h *layers.Header) *qcow2Info {
	q := &qcow2Info{
		Compat:          "0.10",
		RefcountBits:    1 << h.RefcountOrder,
		CompressionType: "zlib",
	}
	if h.CompressionType == layers.CompressionZstd {
		q.CompressionType = "zstd"
	}
	if h.Version < 3 {
		return q
	}
	q.Compat = "1.1"
	q.LazyRefcounts = ptr(h.LazyRefcounts())
	q.Corrupt = ptr(h.IncompatibleFeatures&layers.IncompatCorrupt != 0)
	q.ExtendedL2 = ptr(h.ExtendedL2())
	if h.ExternalData() {
		// QEMU prints data-file-raw only when there is a data file: the
		// bit means nothing without one.
		q.DataFile = h.DataFile
		q.DataFileRaw = ptr(h.DataFileRaw())
	}
	return q
}

// describeFile describes the host file of a layer as QEMU's file-posix
// driver does: its length in whole 512-byte sectors (bdrv_getlength
// rounds up), and its allocated bytes.
func describeFile(f *layers.HostFile, filename string) fileInfo {
	format := "file"
	if of := f.File(); of != nil {
		if st, err := of.Stat(); err == nil && st.Mode()&os.ModeDevice != 0 {
			format = "host_device"
		}
	}
	return fileInfo{
		Filename:       filename,
		Format:         format,
		ActualSize:     allocated(f),
		VirtualSize:    (f.Size() + 511) &^ 511,
		FormatSpecific: &formatSpecific{Type: "file", Data: struct{}{}},
		Children:       []childInfo{},
	}
}

// allocated is QEMU's actual-size: the bytes the host file occupies
// (st_blocks), or nil when it cannot be told. For a qcow2 with an external
// data file it is the qcow2 file's alone, as qemu-img info reports it.
func allocated(f *layers.HostFile) *int64 {
	n, err := f.AllocatedBytes()
	if err != nil {
		return nil
	}
	return &n
}

// pathCombine makes a backing file name a path as QEMU does (block.c,
// path_combine): an absolute name as it is, a relative one appended to
// the directory part of the naming image's own name, as text. QEMU leaves
// "." and ".." to the kernel, so this does not clean the result either.
func pathCombine(base, name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	return base[:strings.LastIndexByte(base, '/')+1] + name
}

func ptr[T any](v T) *T { return &v }

// damageByKey maps the kinds of d that were noted (layers.DamageKind.Key)
// to their counts; nil when none was.
func damageByKey(d layers.DamageCounts) map[string]int64 {
	var m map[string]int64
	for k, n := range d {
		if n > 0 {
			if m == nil {
				m = map[string]int64{}
			}
			m[layers.DamageKind(k).Key()] = n
		}
	}
	return m
}

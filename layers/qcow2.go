package layers

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// qcow2Image is an opened qcow2 file: its header, the geometry derived
// from it, and what every view of the file shares (the external data file,
// the chain's table cache, inflated clusters, the preallocation guess). It
// knows nothing of its backing file; Layer puts the chain together.
type qcow2Image struct {
	name  string
	file  *HostFile // the qcow2 file
	data  *HostFile // where guest data lives: file, or the external data file
	hdr   *Header
	cbits uint  // cluster bits
	csize int64 // cluster size
	extL2 bool
	// l2Bits is log2 of the entries per L2 table; spanBits is log2 of the
	// guest bytes one L2 table maps.
	l2Bits, spanBits uint

	// Compressed-cluster descriptor layout (qcow2.txt "Compressed Clusters Descriptor").
	csizeShift  uint
	csizeMask   uint64
	coffsetMask uint64

	cache *Cache
	// strict makes the damage QEMU reads through an error (Options.Strict);
	// damage counts and logs it either way.
	strict   bool
	damage   *damageLog
	prealloc struct {
		once sync.Once
		yes  bool
		err  error
	}
	// holeChecks counts the data extents resolve.go asked the host file
	// about before deciding whether QEMU's preallocation guess matters.
	holeChecks atomic.Int32
}

// qcow2View is one state of a qcow2 image that a guest could boot: the
// current disk, or an internal snapshot. Views differ only in their L1
// table and virtual size; they read through the image they share.
type qcow2View struct {
	*qcow2Image
	size int64 // virtual size, rounded down to 512 as QEMU does
	// l1 is the active L1 table, read at open from l1Offset. A snapshot's
	// L1 table, or an active one larger than l1ResidentBytes (l1 nil),
	// stays on disk there and is read a cluster at a time through the chain's
	// cache (snapshotL1Entry): views of thousands of snapshots, and deep
	// chains of huge disks, cost nothing until used, and never more than
	// the cache's budget.
	l1       []l1Entry
	l1Offset uint64
	l1Size   int64 // entries
	// scanned marks the L2 tables (by L1 index) already looked at for
	// damage (damage.go), made on first use.
	scanned     tableBits
	scannedOnce sync.Once
}

// newQcow2Image derives the geometry of an image from its validated
// header. data is the external data file (nil: guest data lives in f).
func newQcow2Image(f *HostFile, hdr *Header, data *HostFile, cache *Cache, strict bool, log *slog.Logger) *qcow2Image {
	q := &qcow2Image{
		name:   f.Name,
		file:   f,
		data:   f,
		hdr:    hdr,
		cbits:  uint(hdr.ClusterBits),
		csize:  hdr.ClusterSize(),
		extL2:  hdr.ExtendedL2(),
		cache:  cache,
		strict: strict,
		damage: newDamageLog(f.Name, log, strict),
	}
	if data != nil {
		q.data = data
	}
	entryBits := uint(3)
	if q.extL2 {
		entryBits = 4
	}
	q.l2Bits = q.cbits - entryBits
	q.spanBits = q.cbits + q.l2Bits
	q.csizeShift = 62 - (q.cbits - 8)
	q.csizeMask = 1<<(q.cbits-8) - 1
	q.coffsetMask = 1<<q.csizeShift - 1
	return q
}

// l1ResidentBytes bounds the active L1 table that view reads whole. A
// larger table (more than 1 TiB of guest space with 64 KiB clusters, or
// 2 GiB with 512-byte ones) is read a cluster at a time through the
// chain's table cache when used, as a snapshot's is: QEMU allows 32 MiB
// per table, so a chain of 256 such layers would otherwise hold 8 GiB of
// L1 tables outside any budget. An L1 entry is looked up once per L2 table
// a request touches, so paging costs one cache lookup there.
const l1ResidentBytes = 16 << 10

// view returns the view of the image that an L1 table of l1Size entries
// at l1Offset maps, of the given virtual size, reading the table now if
// it is small. The caller has checked the table against QEMU's limits
// (qcow2_validate_table), so the allocation is bounded. A table reaching
// past the end of the file reads as zero there, as in QEMU (damage; an
// error when strict).
func (q *qcow2Image) view(size int64, l1Offset uint64, l1Size uint32) (*qcow2View, error) {
	if err := q.tablePastEOF(DamageL1Table, "L1 table", l1Offset, int64(l1Size)*8, fmt.Sprintf("%d entries", l1Size)); err != nil {
		return nil, err
	}
	if int64(l1Size)*8 > l1ResidentBytes {
		return &qcow2View{qcow2Image: q, size: size &^ 511, l1Offset: l1Offset, l1Size: int64(l1Size)}, nil
	}
	raw := make([]byte, int(l1Size)*8)
	if len(raw) > 0 {
		if _, err := q.file.ReadAt(raw, int64(l1Offset)); err != nil {
			return nil, &FormatError{File: q.name, Msg: fmt.Sprintf("read L1 table at %#x", l1Offset), Err: err}
		}
	}
	v := &qcow2View{qcow2Image: q, size: size &^ 511, l1: make([]l1Entry, l1Size), l1Offset: l1Offset}
	for i := range v.l1 {
		v.l1[i] = l1Entry(binary.BigEndian.Uint64(raw[i*8:]))
	}
	return v, nil
}

// l1Entry returns L1 entry i. An index past the end of the table is an
// unallocated entry: QEMU pads a snapshot's shorter L1 table with zeroes
// when it applies it, and qcow2_get_host_offset reads an index past
// l1_size as unallocated.
func (q *qcow2View) l1Entry(i int64) (l1Entry, error) {
	if q.l1 != nil || q.l1Size == 0 {
		if i >= int64(len(q.l1)) {
			return 0, nil
		}
		return q.l1[i], nil
	}
	return q.snapshotL1Entry(i)
}

// l2Offset is the L2 table offset of L1 entry i, for error messages.
func (q *qcow2View) l2Offset(i int64) uint64 {
	e, _ := q.l1Entry(i)
	return e.l2Offset()
}

// l2Table returns the L2 table of L1 index i, or nil when the L1 entry is
// unallocated (qcow2_get_host_offset, l2_load). A table reaching past the
// end of the file reads as zero there, as in QEMU; the first time a view
// reads a table, its entries are looked at for damage.
func (q *qcow2View) l2Table(i int64) ([]byte, error) {
	l1e, err := q.l1Entry(i)
	if err != nil {
		return nil, err
	}
	off := l1e.l2Offset()
	if off&uint64(q.csize-1) != 0 {
		return nil, corrupt(q.name, "L2 table offset %#x (L1 index %d) is not cluster aligned", off, i)
	}
	first := q.firstLook(i)
	if first {
		q.noteL1Entry(i, l1e)
	}
	if q.strict {
		if err := q.strictL1(i, l1e); err != nil {
			return nil, err
		}
	}
	if off == 0 {
		return nil, nil
	}
	t := q.cache.get(q.file, int64(off))
	if t == nil {
		t = make([]byte, q.csize)
		if _, err := q.file.ReadAt(t, int64(off)); err != nil {
			return nil, &FormatError{File: q.name, Msg: fmt.Sprintf("read L2 table at %#x (L1 index %d)", off, i), Err: err}
		}
		q.cache.put(q.file, int64(off), t)
	}
	if first {
		q.scanL2(i, off, t)
	}
	return t, nil
}

// status appends to dst the extents of [off, off+length), clipped to the
// virtual size, in one pass over each L2 table the range touches.
func (q *qcow2View) status(dst []Extent, off, length int64) ([]Extent, error) {
	end := min(off+length, q.size)
	be := binary.BigEndian
	entrySize := int64(8)
	if q.extL2 {
		entrySize = 16
	}
	for off < end {
		l1i := off >> q.spanBits
		spanEnd := min((l1i+1)<<q.spanBits, end)
		table, err := q.l2Table(l1i)
		if err != nil {
			return dst, err
		}
		strictTable := q.strict && table != nil
		if table == nil {
			dst = appendExtent(dst, Extent{Offset: off, Length: spanEnd - off, Kind: Unallocated})
			off = spanEnd
			continue
		}
		for off < spanEnd {
			l2i := (off >> q.cbits) & (1<<q.l2Bits - 1)
			if n := zeroEntries(table, l2i, (spanEnd-1)>>q.cbits&(1<<q.l2Bits-1), entrySize); n > 0 {
				runEnd := min(off&^(q.csize-1)+n<<q.cbits, spanEnd)
				dst = appendExtent(dst, Extent{Offset: off, Length: runEnd - off, Kind: Unallocated})
				off = runEnd
				continue
			}
			e := l2Entry(be.Uint64(table[l2i*entrySize:]))
			var bitmap uint64
			if q.extL2 {
				bitmap = be.Uint64(table[l2i*entrySize+8:])
			}
			clusterStart := off &^ (q.csize - 1)
			clusterEnd := min(clusterStart+q.csize, spanEnd)
			if strictTable {
				if err := q.strictL2Entry(e, bitmap, clusterStart, l2i, l1i); err != nil {
					return dst, err
				}
			}
			if e.compressed() {
				ext, err := q.compressedExtent(e, clusterStart, l2i, l1i)
				if err != nil {
					return dst, err
				}
				ext.Offset, ext.Length = off, clusterEnd-off
				dst = append(dst, ext)
				off = clusterEnd
				continue
			}
			if !q.extL2 {
				t := q.subclusterType(e, 0, 0)
				if (t == scZeroPlain || t == scZeroAlloc) && q.hdr.Version < 3 {
					// Version 2 has no zero flag; QEMU refuses the entry.
					return dst, corrupt(q.name, "zero cluster entry in a version 2 image for guest offset %#x (L2 table at %#x, index %d)",
						clusterStart, q.l2Offset(l1i), l2i)
				}
				ext := Extent{Offset: off, Length: clusterEnd - off, Kind: t.kind()}
				if t.hasHost() {
					if err := q.setHost(&ext, e, off, l2i, l1i); err != nil {
						return dst, err
					}
				}
				dst = appendExtent(dst, ext)
				off = clusterEnd
				continue
			}
			scBits := q.cbits - 5
			for off < clusterEnd {
				sc := uint((off - clusterStart) >> scBits)
				scEnd := min(clusterStart+int64(sc+1)<<scBits, clusterEnd)
				t := q.subclusterType(e, bitmap, sc)
				if t == scInvalid {
					return dst, corrupt(q.name, "invalid extended L2 bitmap %#016x for guest cluster %#x (L2 table at %#x, index %d)",
						bitmap, clusterStart, q.l2Offset(l1i), l2i)
				}
				ext := Extent{Offset: off, Length: scEnd - off, Kind: t.kind()}
				if t.hasHost() {
					if err := q.setHost(&ext, e, off, l2i, l1i); err != nil {
						return dst, err
					}
				}
				dst = appendExtent(dst, ext)
				off = scEnd
			}
		}
	}
	return dst, nil
}

// zeroEntries counts the all-zero L2 entries from index i to last: clusters
// with nothing allocated, not even a zero flag or a subcluster bit, which
// read from the backing file. Most entries of a sparse layer are such:
// skipping them a word at a time is most of resolving it.
func zeroEntries(table []byte, i, last, entrySize int64) int64 {
	n := int64(0)
	for ; i <= last; i++ {
		e := table[i*entrySize : (i+1)*entrySize]
		if binary.NativeEndian.Uint64(e) != 0 || (entrySize == 16 && binary.NativeEndian.Uint64(e[8:]) != 0) {
			break
		}
		n++
	}
	return n
}

// setHost fills in the host offset of a subcluster that has one, after the
// checks qcow2_get_host_offset makes (block/qcow2-cluster.c). A data
// cluster past the end of its file is no error there: QEMU reads it as
// zeroes (damage, noted when its L2 table was first read; an error for the
// bytes past the end when strict).
func (q *qcow2View) setHost(ext *Extent, e l2Entry, off, l2i, l1i int64) error {
	host := e.hostOffset()
	if host&uint64(q.csize-1) != 0 {
		return corrupt(q.name, "cluster allocation offset %#x is not cluster aligned (guest offset %#x, L2 table at %#x, index %d)",
			host, off&^(q.csize-1), q.l2Offset(l1i), l2i)
	}
	inCluster := uint64(off & (q.csize - 1))
	if q.data != q.file && host != uint64(off)-inCluster {
		return corrupt(q.name, "external data file cluster offset %#x does not match guest offset %#x (L2 index %d)",
			host, off-int64(inCluster), l2i)
	}
	if q.strict && ext.Kind == Data && host+inCluster+uint64(ext.Length) > uint64(q.data.Size()) {
		return corrupt(q.data.Name, "data cluster for guest offset %#x at %#x lies beyond end of file (%#x) (L2 table at %#x, index %d)",
			off&^(q.csize-1), host, q.data.Size(), q.l2Offset(l1i), l2i)
	}
	ext.File = q.data
	ext.HostOffset = int64(host + inCluster)
	return nil
}

// compressedExtent decodes a compressed-cluster descriptor
// (qcow2_parse_compressed_l2_entry). QEMU's block status does not look at
// where the stream lies: one that starts past the end of the file still
// maps (only reading it fails), unless strict.
func (q *qcow2View) compressedExtent(e l2Entry, guest, l2i, l1i int64) (Extent, error) {
	if q.data != q.file {
		return Extent{}, corrupt(q.name, "compressed cluster for guest offset %#x in an image with an external data file (L2 index %d)", guest, l2i)
	}
	coff := uint64(e) & q.coffsetMask
	sectors := (uint64(e)>>q.csizeShift)&q.csizeMask + 1
	clen := int64(sectors*512) - int64(coff&511)
	if q.strict && coff >= uint64(q.file.Size()) {
		return Extent{}, corrupt(q.name, "compressed cluster for guest offset %#x at %#x lies beyond end of file (%#x) (L2 table at %#x, index %d)",
			guest, coff, q.file.Size(), q.l2Offset(l1i), l2i)
	}
	return Extent{Kind: Compressed, File: q.file, HostOffset: int64(coff), CompressedSize: clen}, nil
}

// appendExtent appends e to dst, merging it into the last extent when both
// are the same kind and, where they have host offsets, host-contiguous in
// the same file. Compressed clusters are never merged: each is its own
// stream.
func appendExtent(dst []Extent, e Extent) []Extent {
	if n := len(dst); n > 0 {
		last := &dst[n-1]
		if last.Kind == e.Kind && e.Kind != Compressed && last.End() == e.Offset && last.File == e.File &&
			(e.File == nil || last.HostOffset+last.Length == e.HostOffset) {
			last.Length += e.Length
			return dst
		}
	}
	return append(dst, e)
}

// metadataPreallocated reports QEMU's guess that the image was created with
// preallocation=metadata (qcow2_detect_metadata_preallocation): more
// clusters have a non-zero refcount than the file occupies on disk. QEMU
// then asks the host file whether data clusters are holes and reports those
// as zero.
func (q *qcow2Image) metadataPreallocated() (bool, error) {
	q.prealloc.once.Do(func() { q.prealloc.yes, q.prealloc.err = q.detectMetadataPreallocation() })
	return q.prealloc.yes, q.prealloc.err
}

func (q *qcow2Image) detectMetadataPreallocation() (bool, error) {
	real, err := q.file.AllocatedBytes()
	if err != nil {
		return false, err
	}
	realClusters := real / q.csize
	threshold := max(realClusters*10/9, realClusters+2)
	endCluster := (q.file.Size() + q.csize - 1) / q.csize
	rc, err := newRefcounts(q)
	if err != nil {
		return false, err
	}
	var count int64
	for i := int64(0); i < endCluster && count < threshold; i++ {
		r, err := rc.get(i)
		if err != nil {
			return false, err
		}
		if r != 0 {
			count++
		}
	}
	return count >= threshold, nil
}

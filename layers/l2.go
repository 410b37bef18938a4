package layers

// L1 and L2 entry bit fields (docs/interop/qcow2.txt, "Cluster mapping").
const (
	l1OffsetMask   = 0x00fffffffffffe00
	l2OffsetMask   = 0x00fffffffffffe00
	l2Copied       = 1 << 63
	l2Compressed   = 1 << 62
	l2ZeroFlag     = 1 << 0
	subclusters    = 32         // subclusters per cluster with extended L2
	allAllocBits   = 0xffffffff // bitmap bits 0-31: subcluster allocated
	allZeroBits    = 0xffffffff << 32
	l1ReservedBits = 0x7f000000000001ff
)

// l1Entry is one L1 table entry.
type l1Entry uint64

func (e l1Entry) l2Offset() uint64 { return uint64(e) & l1OffsetMask }

// l2Entry is the first (or only) word of an L2 entry.
type l2Entry uint64

func (e l2Entry) compressed() bool { return e&l2Compressed != 0 }
func (e l2Entry) zeroFlag() bool   { return e&l2ZeroFlag != 0 }
func (e l2Entry) copied() bool     { return e&l2Copied != 0 }
func (e l2Entry) hostOffset() uint64 {
	return uint64(e) & l2OffsetMask
}

// clusterType mirrors QEMU's QCow2ClusterType.
type clusterType uint8

const (
	clusterUnallocated clusterType = iota
	clusterZeroPlain
	clusterZeroAlloc
	clusterNormal
	clusterCompressed
)

// subclusterType mirrors QEMU's QCow2SubclusterType.
type subclusterType uint8

const (
	scNormal subclusterType = iota
	scCompressed
	scZeroPlain
	scZeroAlloc
	scUnallocatedPlain
	scUnallocatedAlloc
	scInvalid
)

func (t subclusterType) String() string {
	return [...]string{"normal", "compressed", "zero", "zero (allocated)",
		"unallocated", "unallocated (allocated)", "invalid"}[t]
}

// kind maps a subcluster type to the package's public Kind.
func (t subclusterType) kind() Kind {
	switch t {
	case scNormal:
		return Data
	case scCompressed:
		return Compressed
	case scZeroPlain, scZeroAlloc:
		return Zero
	}
	return Unallocated
}

// hasHost reports whether QEMU keeps a host offset for the subcluster.
func (t subclusterType) hasHost() bool {
	return t == scNormal || t == scZeroAlloc || t == scUnallocatedAlloc
}

// clusterType follows qcow2_get_cluster_type (block/qcow2.h). With an
// external data file, offset 0 is a valid host offset; QEMU disambiguates
// with the COPIED flag, which every data-file cluster carries.
func (q *qcow2Image) clusterType(e l2Entry) clusterType {
	switch {
	case e.compressed():
		return clusterCompressed
	case e.zeroFlag() && !q.extL2:
		if e.hostOffset() != 0 {
			return clusterZeroAlloc
		}
		return clusterZeroPlain
	case e.hostOffset() == 0:
		if q.data != q.file && e.copied() {
			return clusterNormal
		}
		return clusterUnallocated
	}
	return clusterNormal
}

// subclusterType follows qcow2_get_subcluster_type (block/qcow2.h).
func (q *qcow2Image) subclusterType(e l2Entry, bitmap uint64, sc uint) subclusterType {
	ct := q.clusterType(e)
	if q.extL2 {
		switch ct {
		case clusterCompressed:
			return scCompressed
		case clusterNormal:
			switch {
			case (bitmap>>32)&bitmap != 0:
				return scInvalid
			case bitmap&(1<<(32+sc)) != 0:
				return scZeroAlloc
			case bitmap&(1<<sc) != 0:
				return scNormal
			}
			return scUnallocatedAlloc
		default: // unallocated
			switch {
			case bitmap&allAllocBits != 0:
				return scInvalid
			case bitmap&(1<<(32+sc)) != 0:
				return scZeroPlain
			}
			return scUnallocatedPlain
		}
	}
	switch ct {
	case clusterCompressed:
		return scCompressed
	case clusterZeroPlain:
		return scZeroPlain
	case clusterZeroAlloc:
		return scZeroAlloc
	case clusterNormal:
		return scNormal
	}
	return scUnallocatedPlain
}

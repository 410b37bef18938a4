package layers

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
)

// qcow2 on-disk constants (docs/interop/qcow2.txt; limits from block/qcow2.h).
const (
	qcow2Magic = 0x514649fb // "QFI\xfb"

	minClusterBits = 9
	maxClusterBits = 21
	// maxL1Bytes is QCOW_MAX_L1_SIZE: QEMU refuses larger L1 tables.
	maxL1Bytes = 32 << 20
	// maxRefcountTableBytes is QCOW_MAX_REFTABLE_SIZE.
	maxRefcountTableBytes = 8 << 20
	maxBackingNameLen     = 1023
	maxBackingFmtLen      = 16 // sizeof(BlockDriverState.backing_format)
	v2HeaderLen           = 72
	v3MinHeaderLen        = 104

	// Header extension types.
	extEnd          = 0x00000000
	extBackingFmt   = 0xe2792aca
	extFeatureNames = 0x6803f857
	extBitmaps      = 0x23852875
	extCrypto       = 0x0537be77
	extDataFile     = 0x44415441

	// Incompatible feature bits.
	IncompatDirty       = 1 << 0
	IncompatCorrupt     = 1 << 1
	IncompatDataFile    = 1 << 2
	IncompatCompression = 1 << 3
	IncompatExtendedL2  = 1 << 4
	knownIncompat       = IncompatDirty | IncompatCorrupt | IncompatDataFile |
		IncompatCompression | IncompatExtendedL2

	// Compatible feature bits.
	CompatLazyRefcounts = 1 << 0

	// Autoclear feature bits.
	AutoclearBitmaps     = 1 << 0
	AutoclearDataFileRaw = 1 << 1

	// Encryption methods.
	cryptNone = 0
	cryptAES  = 1
	cryptLUKS = 2
)

// Compression types (header byte 104).
const (
	CompressionZlib = 0
	CompressionZstd = 1
)

// Header is a decoded and validated qcow2 header with its extensions.
type Header struct {
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64 // virtual size in bytes as stored
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	HeaderLength          uint32
	CompressionType       uint8

	BackingFile   string // as recorded; "" for none
	BackingFormat string // from the backing-format extension; "" for none
	DataFile      string // from the external-data-file extension
	// FeatureNames maps (type<<8 | bit) to the name from the feature name
	// table; type 0 incompatible, 1 compatible, 2 autoclear.
	FeatureNames map[uint16]string
	HasBitmaps   bool
	// The bitmaps extension (bitmap.go), set when the bitmaps autoclear
	// bit is: QEMU ignores the extension without it.
	NbBitmaps             uint32
	BitmapDirectorySize   uint64
	BitmapDirectoryOffset uint64

	backingFmtCut bool // the backing format extension held a NUL
}

// ClusterSize returns 1 << ClusterBits.
func (h *Header) ClusterSize() int64 { return 1 << h.ClusterBits }

// ExtendedL2 reports whether L2 entries carry subcluster bitmaps.
func (h *Header) ExtendedL2() bool { return h.IncompatibleFeatures&IncompatExtendedL2 != 0 }

// ExternalData reports whether guest data lives in an external data file.
func (h *Header) ExternalData() bool { return h.IncompatibleFeatures&IncompatDataFile != 0 }

// LazyRefcounts reports the lazy_refcounts compatible feature bit.
func (h *Header) LazyRefcounts() bool { return h.CompatibleFeatures&CompatLazyRefcounts != 0 }

// DataFileRaw reports the data_file_raw autoclear bit.
func (h *Header) DataFileRaw() bool { return h.AutoclearFeatures&AutoclearDataFileRaw != 0 }

// DecodeHeader reads and validates the qcow2 header of r, a file of
// fileSize bytes named name (for errors). It makes the checks QEMU makes
// when it opens an image (block/qcow2.c: qcow2_do_open,
// qcow2_validate_table, qcow2_read_extensions) and refuses what QEMU
// refuses. Like QEMU it reads the header and its first cluster as zeroes
// past the end of a short file (block/io.c, bdrv_aligned_preadv); tables
// that reach past the end of the file are left to the caller, since QEMU
// opens such images (see DamageKind).
func DecodeHeader(name string, r io.ReaderAt, fileSize int64) (*Header, error) {
	// The fixed fields first, to learn the cluster size.
	var fixed [v3MinHeaderLen + 8]byte
	if err := readPadded(r, fixed[:], fileSize); err != nil {
		return nil, &FormatError{File: name, Msg: "read header", Err: err}
	}
	be := binary.BigEndian
	h := &Header{}
	if m := be.Uint32(fixed[0:]); m != qcow2Magic {
		return nil, corrupt(name, "bad qcow2 magic %#x", m)
	}
	h.Version = be.Uint32(fixed[4:])
	if h.Version != 2 && h.Version != 3 {
		return nil, unsupported(name, "qcow2 version %d is not supported (only 2 and 3)", h.Version)
	}
	h.ClusterBits = be.Uint32(fixed[20:])
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, corrupt(name, "header: cluster_bits %d outside %d..%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	cs := uint64(1) << h.ClusterBits

	// The header and its extensions lie in the first cluster; 8 bytes more
	// let an extension header start in its last 7 bytes, as QEMU reads it
	// (and then refuses it).
	first := make([]byte, cs+8)
	if err := readPadded(r, first, fileSize); err != nil {
		return nil, &FormatError{File: name, Msg: "read header", Err: err}
	}
	h.BackingFileOffset = be.Uint64(first[8:])
	h.BackingFileSize = be.Uint32(first[16:])
	h.Size = be.Uint64(first[24:])
	h.CryptMethod = be.Uint32(first[32:])
	h.L1Size = be.Uint32(first[36:])
	h.L1TableOffset = be.Uint64(first[40:])
	h.RefcountTableOffset = be.Uint64(first[48:])
	h.RefcountTableClusters = be.Uint32(first[56:])
	h.NbSnapshots = be.Uint32(first[60:])
	h.SnapshotsOffset = be.Uint64(first[64:])
	h.RefcountOrder = 4
	h.HeaderLength = v2HeaderLen

	if h.Version >= 3 {
		h.IncompatibleFeatures = be.Uint64(first[72:])
		h.CompatibleFeatures = be.Uint64(first[80:])
		h.AutoclearFeatures = be.Uint64(first[88:])
		h.RefcountOrder = be.Uint32(first[96:])
		h.HeaderLength = be.Uint32(first[100:])
		if h.HeaderLength < v3MinHeaderLen {
			return nil, corrupt(name, "header: header_length %d is less than %d", h.HeaderLength, v3MinHeaderLen)
		}
		if uint64(h.HeaderLength) > cs {
			return nil, corrupt(name, "header: header_length %d exceeds the cluster size %d", h.HeaderLength, cs)
		}
		if h.HeaderLength > 104 {
			h.CompressionType = first[104]
		}
	}
	if h.BackingFileOffset > cs {
		return nil, corrupt(name, "header: backing file name offset %#x lies beyond the first cluster", h.BackingFileOffset)
	}

	// Extensions come before the backing file name, inside the first cluster.
	extEndOff := cs
	if h.BackingFileOffset != 0 {
		extEndOff = h.BackingFileOffset
	}
	extErr := h.decodeExtensions(name, first, uint64(h.HeaderLength), extEndOff)

	// Feature bits. QEMU reports unknown incompatible features before it
	// looks at the extensions for anything but their names.
	if unknown := h.IncompatibleFeatures &^ knownIncompat; unknown != 0 {
		bit := bits.TrailingZeros64(unknown)
		msg := fmt.Sprintf("unsupported incompatible feature bit %d", bit)
		if n, ok := h.FeatureNames[uint16(bit)]; ok {
			msg = fmt.Sprintf("unsupported incompatible feature bit %d (%q)", bit, n)
		}
		if bits.OnesCount64(unknown) > 1 {
			msg += fmt.Sprintf(" (all unknown bits: %#x)", unknown)
		}
		return nil, unsupported(name, "%s", msg)
	}
	if extErr != nil {
		return nil, extErr
	}
	switch h.CryptMethod {
	case cryptNone:
	case cryptAES:
		return nil, &FormatError{File: name, Msg: "AES-encrypted qcow2", Err: ErrEncrypted}
	case cryptLUKS:
		return nil, &FormatError{File: name, Msg: "LUKS-encrypted qcow2", Err: ErrEncrypted}
	default:
		return nil, corrupt(name, "header: invalid encryption method %d", h.CryptMethod)
	}
	switch {
	case h.CompressionType != CompressionZlib && h.CompressionType != CompressionZstd:
		return nil, unsupported(name, "unknown compression type %d", h.CompressionType)
	case h.CompressionType != CompressionZlib && h.IncompatibleFeatures&IncompatCompression == 0:
		return nil, corrupt(name, "header: compression type %d without the compression-type incompatible bit", h.CompressionType)
	case h.CompressionType == CompressionZlib && h.IncompatibleFeatures&IncompatCompression != 0:
		return nil, corrupt(name, "header: compression-type incompatible bit set with zlib compression")
	}
	if h.ExtendedL2() && h.ClusterBits < 14 {
		return nil, corrupt(name, "header: extended L2 entries need clusters of at least 16 KiB, not %d bytes", cs)
	}
	if h.RefcountOrder > 6 {
		return nil, corrupt(name, "header: refcount_order %d exceeds 6", h.RefcountOrder)
	}
	if h.ExternalData() && h.DataFile == "" {
		return nil, corrupt(name, "header: external data file bit set but no data file name extension")
	}
	if !h.ExternalData() && h.DataFileRaw() {
		// QEMU refuses to open such an image, even read-only.
		return nil, corrupt(name, "header: data_file_raw set without an external data file")
	}
	if err := h.checkTables(name, cs); err != nil {
		return nil, err
	}

	// Backing file name: QEMU reads it into a C string, so it ends at the
	// first NUL, and an empty one means no backing file.
	if h.BackingFileOffset != 0 {
		if h.BackingFileSize > maxBackingNameLen || uint64(h.BackingFileSize) > cs-h.BackingFileOffset {
			return nil, corrupt(name, "header: backing file name of %d bytes at %#x is too long", h.BackingFileSize, h.BackingFileOffset)
		}
		h.BackingFile = cString(string(first[h.BackingFileOffset : h.BackingFileOffset+uint64(h.BackingFileSize)]))
	}
	return h, nil
}

// checkTables makes QEMU's checks of the table offsets and sizes in the
// header (qcow2_do_open, qcow2_validate_table): each table within QEMU's
// limit, its offset cluster aligned and not past what a signed 64-bit file
// offset reaches, even for an empty table; a reference count table at all;
// an L1 table large enough for the virtual size. The L1 and refcount tables,
// which QEMU reads at open, must also lie where QEMU's block layer reads.
func (h *Header) checkTables(name string, cs uint64) error {
	if h.RefcountTableClusters == 0 {
		return corrupt(name, "header: no reference count table (refcount_table_clusters is 0)")
	}
	if uint64(h.RefcountTableClusters)*cs > maxRefcountTableBytes {
		return corrupt(name, "header: refcount table of %d clusters is larger than QEMU's limit", h.RefcountTableClusters)
	}
	reftable := uint64(h.RefcountTableClusters) * cs
	if h.RefcountTableOffset%cs != 0 || h.RefcountTableOffset > math.MaxInt64-reftable {
		return corrupt(name, "header: refcount table offset %#x is invalid", h.RefcountTableOffset)
	}
	if h.RefcountTableOffset+reftable > maxQEMURead {
		return corrupt(name, "header: refcount table at %#x lies beyond what QEMU's block layer reads (%#x)", h.RefcountTableOffset, uint64(maxQEMURead))
	}
	if err := h.checkSnapshotTable(name); err != nil {
		return err
	}
	if uint64(h.L1Size)*8 > maxL1Bytes {
		return corrupt(name, "header: L1 table of %d entries is larger than QEMU's limit of %d bytes", h.L1Size, maxL1Bytes)
	}
	l1 := uint64(h.L1Size) * 8
	if h.L1TableOffset%cs != 0 || h.L1TableOffset > math.MaxInt64-l1 {
		return corrupt(name, "header: L1 table offset %#x is invalid", h.L1TableOffset)
	}
	if h.Size > 1<<62 {
		// QEMU refuses these too: the L1 table would exceed its limit, or
		// the sector count overflows ("Image is too big", "File too large").
		return corrupt(name, "header: virtual size %d is too large", h.Size)
	}
	entry := uint64(8)
	if h.ExtendedL2() {
		entry = 16
	}
	l2Span := cs * (cs / entry) // guest bytes one L2 table covers
	if need := (h.Size + l2Span - 1) / l2Span; uint64(h.L1Size) < need {
		return corrupt(name, "header: L1 table of %d entries is too small for a virtual size of %d bytes (need %d)", h.L1Size, h.Size, need)
	}
	if l1 > 0 && h.L1TableOffset+l1 > maxQEMURead {
		return corrupt(name, "header: L1 table at %#x lies beyond what QEMU's block layer reads (%#x)", h.L1TableOffset, uint64(maxQEMURead))
	}
	return nil
}

// decodeExtensions walks the header extensions in first[start:end) as
// qcow2_read_extensions does: every extension, the end marker included,
// must fit before end, and an extension header that does not fit is an
// error, not the end.
func (h *Header) decodeExtensions(name string, first []byte, start, end uint64) error {
	be := binary.BigEndian
	for off := start; off < end; {
		typ := be.Uint32(first[off:])
		length := uint64(be.Uint32(first[off+4:]))
		data := off + 8
		if data > end || length > end-data {
			return corrupt(name, "header extension %#x at %#x: length %d reaches past the end of the header area (%#x)", typ, off, length, end)
		}
		payload := first[data : data+length]
		switch typ {
		case extEnd:
			return nil
		case extBackingFmt:
			// QEMU keeps it in a 16-byte C string.
			if length >= maxBackingFmtLen {
				return corrupt(name, "backing format extension at %#x: length %d, QEMU allows at most %d", off, length, maxBackingFmtLen-1)
			}
			h.BackingFormat = cString(string(payload))
			h.backingFmtCut = len(h.BackingFormat) < len(payload)
		case extFeatureNames:
			h.FeatureNames = make(map[uint16]string)
			for i := 0; i+48 <= len(payload); i += 48 {
				t, b := payload[i], payload[i+1]
				h.FeatureNames[uint16(t)<<8|uint16(b)] = cString(string(payload[i+2 : i+48]))
			}
		case extBitmaps:
			h.HasBitmaps = true
			if err := h.checkBitmapsExt(name, off, payload); err != nil {
				return err
			}
		case extCrypto:
			// Only LUKS has one; a LUKS image is refused anyway.
			if h.CryptMethod != cryptLUKS {
				return corrupt(name, "crypto header extension at %#x in an image that is not LUKS-encrypted", off)
			}
		case extDataFile:
			h.DataFile = cString(string(payload))
		}
		off = data + (length+7)&^7
	}
	return nil
}

// readPadded fills p from the start of r, a file of size bytes, reading
// what lies past its end as zero, as QEMU's block layer does.
func readPadded(r io.ReaderAt, p []byte, size int64) error {
	n := int64(len(p))
	if size < n {
		n = max(size, 0)
		clear(p[n:])
	}
	if n == 0 {
		return nil
	}
	got, err := r.ReadAt(p[:n], 0)
	if err == io.EOF {
		clear(p[got:n]) // the file shrank: what is missing reads as zero
		err = nil
	}
	return err
}

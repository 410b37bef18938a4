package layers

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
)

// Internal snapshot limits (block/qcow2.h).
const (
	// maxSnapshots is QCOW_MAX_SNAPSHOTS.
	maxSnapshots = 65536
	// snapshotHeaderLen is the fixed part of a snapshot table entry
	// (QCowSnapshotHeader).
	snapshotHeaderLen = 40
	// maxSnapshotExtraData is QCOW_MAX_SNAPSHOT_EXTRA_DATA.
	maxSnapshotExtraData = 1024
	// maxSnapshotTableBytes is QCOW_MAX_SNAPSHOTS_SIZE: the table may
	// average 1 KiB per entry.
	maxSnapshotTableBytes = 1024 * maxSnapshots
	// maxSnapshotEntryBytes bounds one entry: header, extra data, ID and
	// name (16-bit sizes each).
	maxSnapshotEntryBytes = snapshotHeaderLen + maxSnapshotExtraData + 2*math.MaxUint16
)

// Snapshot is one entry of a qcow2 image's internal snapshot table
// (qcow2.txt "Snapshots"), as `qemu-img snapshot -l` lists it.
type Snapshot struct {
	// Index is the entry's position in the table, from 0.
	Index int
	// ID and Name are as recorded. QEMU's tools, which handle them as C
	// strings, see them only up to a NUL byte.
	ID, Name string
	// DiskSize is the guest disk size the snapshot recorded (extra data of
	// version 3 images), or the image's current size when it records none
	// (HasDiskSize false), as QEMU takes it.
	DiskSize    uint64
	HasDiskSize bool
	// VMStateSize is the size of the VM state saved with the snapshot
	// (savevm); it is not part of the disk.
	VMStateSize uint64
	// DateSec and DateNsec are when the snapshot was taken (Unix time);
	// VMClockNsec the guest clock then.
	DateSec, DateNsec uint32
	VMClockNsec       uint64
	// ICount is the guest instruction count at the snapshot, or -1 when
	// not recorded.
	ICount int64
	// L1TableOffset and L1Size locate the snapshot's L1 table.
	L1TableOffset uint64
	L1Size        uint32
	// Err says why QEMU could not load the snapshot (a misaligned or
	// oversized L1 table, ...); such a snapshot has no view. Nil when it
	// can be viewed.
	Err error
}

// checkSnapshotTable makes qcow2_do_open's check of the snapshot table's
// place (qcow2_validate_table): at most QCOW_MAX_SNAPSHOTS entries of
// QCowSnapshotHeader size, and an offset that is cluster aligned and
// leaves the table within a signed 64-bit file offset. QEMU checks the
// offset even when there are no snapshots.
func (h *Header) checkSnapshotTable(name string) error {
	if h.NbSnapshots > maxSnapshots {
		return corrupt(name, "header: snapshot table too large: %d snapshots exceed QEMU's limit of %d", h.NbSnapshots, maxSnapshots)
	}
	if h.SnapshotsOffset%uint64(h.ClusterSize()) != 0 ||
		h.SnapshotsOffset > math.MaxInt64-uint64(h.NbSnapshots)*snapshotHeaderLen {
		return corrupt(name, "header: snapshot table offset invalid: %#x is not a cluster-aligned file offset", h.SnapshotsOffset)
	}
	return nil
}

// readSnapshots decodes the snapshot table of q as QEMU does at open
// (qcow2_do_read_snapshots): an entry with more than
// QCOW_MAX_SNAPSHOT_EXTRA_DATA bytes of extra data, or a table past
// QCOW_MAX_SNAPSHOTS_SIZE, refuses the image. size is the image's current
// virtual size, the disk size of entries that record none. A snapshot
// QEMU could not load is kept with its Err set and logged as left out.
func readSnapshots(q *qcow2Image, size int64, log *slog.Logger) ([]Snapshot, error) {
	h := q.hdr
	if h.NbSnapshots == 0 {
		return nil, nil
	}
	// Entries are read in order from a buffered window over the table,
	// which can never be longer than the limit plus the entry that
	// crosses it; bytes past the end of the file read as zeroes, as
	// QEMU's file driver gives them.
	r := &tableReader{
		name: q.name, what: "snapshot table", start: int64(h.SnapshotsOffset),
		r: bufio.NewReaderSize(io.NewSectionReader(q.file, int64(h.SnapshotsOffset), maxSnapshotTableBytes+maxSnapshotEntryBytes+8), 64<<10),
	}
	snaps := make([]Snapshot, 0, min(h.NbSnapshots, 1024))
	var length int64 // as QEMU counts it: entries rounded up to 8 bytes
	leftOut := 0
	for i := 0; i < int(h.NbSnapshots); i++ {
		length = (length + 7) &^ 7
		if err := r.align(8); err != nil {
			return nil, err
		}
		entryOff := r.start + r.pos
		b, err := r.next(snapshotHeaderLen)
		if err != nil {
			return nil, err
		}
		be := binary.BigEndian
		s := Snapshot{
			Index:         i,
			L1TableOffset: be.Uint64(b[0:]),
			L1Size:        be.Uint32(b[8:]),
			DateSec:       be.Uint32(b[16:]),
			DateNsec:      be.Uint32(b[20:]),
			VMClockNsec:   be.Uint64(b[24:]),
			VMStateSize:   uint64(be.Uint32(b[32:])),
			DiskSize:      uint64(size),
			ICount:        -1,
		}
		idLen, nameLen := int(be.Uint16(b[12:])), int(be.Uint16(b[14:]))
		extraLen := be.Uint32(b[36:])
		if extraLen > maxSnapshotExtraData {
			return nil, corrupt(q.name, "snapshot table entry %d at %#x: too much extra metadata (%d bytes; QEMU's limit is %d)",
				i, entryOff, extraLen, maxSnapshotExtraData)
		}
		// Extra data (QCowSnapshotExtraData): the 64-bit VM state size,
		// the disk size, the instruction count; anything further is
		// skipped.
		extra, err := r.next(int(extraLen))
		if err != nil {
			return nil, err
		}
		if len(extra) >= 8 {
			s.VMStateSize = be.Uint64(extra[0:])
		}
		if len(extra) >= 16 {
			s.DiskSize, s.HasDiskSize = be.Uint64(extra[8:]), true
		}
		if len(extra) >= 24 {
			s.ICount = int64(be.Uint64(extra[16:]))
		}
		id, err := r.next(idLen)
		if err != nil {
			return nil, err
		}
		s.ID = string(id)
		name, err := r.next(nameLen)
		if err != nil {
			return nil, err
		}
		s.Name = string(name)
		length += snapshotHeaderLen + int64(extraLen) + int64(idLen) + int64(nameLen)
		if length > maxSnapshotTableBytes {
			return nil, corrupt(q.name, "snapshot table at %#x is too big: %d entries reach %d bytes, past QEMU's limit of %d",
				h.SnapshotsOffset, i+1, length, maxSnapshotTableBytes)
		}
		s.Err = q.checkSnapshot(&s)
		if s.Err != nil {
			leftOut++
			if leftOut <= maxSnapshotWarnings {
				log.Warn(s.Err.Error()+"; the snapshot is left out", "file", q.name,
					"snapshot_id", quoteCut(s.ID), "snapshot_name", quoteCut(s.Name))
			}
		}
		snaps = append(snaps, s)
	}
	if leftOut > maxSnapshotWarnings {
		log.Warn(fmt.Sprintf("%s: %d more snapshots are left out for the same kinds of reasons", q.name, leftOut-maxSnapshotWarnings), "file", q.name)
	}
	return snaps, nil
}

// maxSnapshotWarnings bounds the snapshots left out that are logged one
// by one (a hostile table holds 65536).
const maxSnapshotWarnings = 8

// checkSnapshot makes the checks QEMU makes before it reads a snapshot's
// L1 table to load or apply it (qcow2_snapshot_load_tmp,
// qcow2_snapshot_goto: qcow2_validate_table with QCOW_MAX_L1_SIZE), and
// those of applying its disk size (qcow2_co_truncate grows the L1 table
// to cover it, up to the same limit).
func (q *qcow2Image) checkSnapshot(s *Snapshot) error {
	what := s // printed with %v: labelled only when there is an error
	switch {
	case uint64(s.L1Size)*8 > maxL1Bytes:
		return corrupt(q.name, "%s: snapshot L1 table too large: %d entries exceed QEMU's limit of %d bytes", what, s.L1Size, maxL1Bytes)
	case s.L1TableOffset%uint64(q.csize) != 0 || s.L1TableOffset > math.MaxInt64-uint64(s.L1Size)*8:
		return corrupt(q.name, "%s: snapshot L1 table offset invalid: %#x is not a cluster-aligned file offset", what, s.L1TableOffset)
	case s.DiskSize > 1<<62 || (s.DiskSize+(uint64(1)<<q.spanBits)-1)>>q.spanBits > maxL1Bytes/8:
		return corrupt(q.name, "%s: disk size %d needs an L1 table larger than QEMU's limit of %d bytes", what, s.DiskSize, maxL1Bytes)
	case q.data != q.file:
		return unsupported(q.name, "%s: QEMU does not load internal snapshots of an image with an external data file", what)
	}
	return nil
}

// String names a snapshot in messages: its ID and name, quoted (cut at
// 64 bytes: a hostile table holds names of up to 64 KiB), and its table
// entry.
func (s *Snapshot) String() string {
	return fmt.Sprintf("snapshot ID %s name %s (table entry %d)", quoteCut(s.ID), quoteCut(s.Name), s.Index)
}

// quoteCut quotes s for a message, cut to its first 64 bytes.
func quoteCut(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}

// cString is s up to its first NUL byte: the string QEMU's tools compare
// and print.
func cString(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}

// snapshotTable is what a qcow2 layer knows of its internal snapshots: the
// decoded table, and each snapshot's view once asked for.
type snapshotTable struct {
	list  []Snapshot
	mu    sync.Mutex
	views map[int]*Layer
}

// Snapshots returns the internal snapshots of a qcow2 layer in table order,
// those QEMU could not load included (with Err set). Nil for raw layers
// and for snapshot views themselves.
func (l *Layer) Snapshots() []Snapshot {
	if l.snaps == nil {
		return nil
	}
	return l.snaps.list
}

// FindSnapshot returns the index in Snapshots of the snapshot idOrName
// names, looked up as `qemu-img convert -l` does: by ID first, then by
// name; the first match in table order wins.
func (l *Layer) FindSnapshot(idOrName string) (int, bool) {
	snaps := l.Snapshots()
	for i := range snaps {
		if cString(snaps[i].ID) == idOrName {
			return i, true
		}
	}
	for i := range snaps {
		if cString(snaps[i].Name) == idOrName {
			return i, true
		}
	}
	return 0, false
}

// SnapshotLayer returns the disk as internal snapshot i recorded it: a
// Layer of the snapshot's disk size that reads the snapshot's clusters of
// l's file and, where the snapshot has none, l's backing chain, as QEMU
// reads an applied snapshot. It has l's Index, Path, files and backing;
// Snapshot says which snapshot it shows. The view costs no I/O until it
// is read (its L1 table is read through the chain's cache as needed), and
// asking again returns the same Layer.
func (l *Layer) SnapshotLayer(i int) (*Layer, error) {
	t := l.snaps
	if t == nil || i < 0 || i >= len(t.list) {
		return nil, fmt.Errorf("%s: no snapshot %d", l.Path, i)
	}
	s := &t.list[i]
	if s.Err != nil {
		return nil, s.Err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.views[i]; ok {
		return v, nil
	}
	img := l.q.qcow2Image
	// Loading a snapshot, QEMU reads its L1 table whole
	// (qcow2_snapshot_load_tmp, qcow2_snapshot_goto), as zero past the end
	// of the file: damage noted like the active table's, and an error when
	// strict.
	what := fmt.Sprintf("L1 table of snapshot ID %q", s.ID)
	if err := img.tablePastEOF(DamageL1Table, what, s.L1TableOffset, int64(s.L1Size)*8, fmt.Sprintf("%d entries", s.L1Size)); err != nil {
		return nil, err
	}
	q := &qcow2View{qcow2Image: img, size: int64(s.DiskSize) &^ 511, l1Offset: s.L1TableOffset, l1Size: int64(s.L1Size)}
	v := &Layer{
		Index: l.Index, Path: l.Path, Format: l.Format, Size: q.size, ClusterSize: l.ClusterSize,
		BackingFile: l.BackingFile, BackingFormat: l.BackingFormat, ProbedBacking: l.ProbedBacking,
		Header: l.Header, File: l.File, DataFile: l.DataFile, Backing: l.Backing,
		Snapshot: s, q: q, res: l.res,
	}
	if t.views == nil {
		t.views = make(map[int]*Layer)
	}
	t.views[i] = v
	return v, nil
}

// snapshotL1Entry reads entry i of a snapshot's L1 table from the cluster
// of the file holding it, through the chain's cache (keyed, as L2 tables
// are, by file and cluster offset: the same bytes whichever table they
// are read for).
func (q *qcow2View) snapshotL1Entry(i int64) (l1Entry, error) {
	if i >= q.l1Size {
		return 0, nil
	}
	at := q.l1Offset + uint64(i)*8
	cluster := int64(at &^ uint64(q.csize-1))
	b := q.cache.get(q.file, cluster)
	if b == nil {
		b = make([]byte, q.csize)
		if _, err := q.file.ReadAt(b, cluster); err != nil {
			return 0, &FormatError{File: q.name, Msg: fmt.Sprintf("read L1 table at %#x", q.l1Offset), Err: err}
		}
		q.cache.put(q.file, cluster, b)
	}
	return l1Entry(binary.BigEndian.Uint64(b[at-uint64(cluster):])), nil
}

// tableReader reads a variable-length on-disk table (the snapshot table,
// the bitmap directory) front to back.
type tableReader struct {
	name, what string
	start, pos int64
	r          *bufio.Reader
	buf        []byte
}

// next returns the next n bytes, valid until the next call.
func (t *tableReader) next(n int) ([]byte, error) {
	if cap(t.buf) < n {
		t.buf = make([]byte, n)
	}
	b := t.buf[:n]
	if _, err := io.ReadFull(t.r, b); err != nil {
		return nil, &FormatError{File: t.name, Msg: fmt.Sprintf("read %s at %#x", t.what, t.start+t.pos), Err: err}
	}
	t.pos += int64(n)
	return b, nil
}

// align skips to the next multiple of n bytes from the table's start.
func (t *tableReader) align(n int64) error {
	if pad := (n - t.pos%n) % n; pad > 0 {
		_, err := t.next(int(pad))
		return err
	}
	return nil
}

// readSnapshotsAndBitmaps reads what QEMU reads of an image at open after
// its header and L1 table, in QEMU's order (qcow2_do_open): the snapshot
// table, then the persistent bitmaps.
func readSnapshotsAndBitmaps(q *qcow2Image, size int64, log *slog.Logger) (*snapshotTable, *bitmapDirectory, error) {
	snaps, err := readSnapshots(q, size, log)
	if err != nil {
		return nil, nil, err
	}
	bms, err := readBitmaps(q, size, log)
	if err != nil {
		return nil, nil, err
	}
	var t *snapshotTable
	if snaps != nil {
		t = &snapshotTable{list: snaps}
	}
	return t, bms, nil
}

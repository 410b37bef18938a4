package layers

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
)

// Persistent dirty bitmap limits and bit fields (qcow2.txt "Bitmaps";
// block/qcow2.h and block/qcow2-bitmap.c).
const (
	// maxBitmaps is QCOW2_MAX_BITMAPS; maxBitmapDirLen
	// QCOW2_MAX_BITMAP_DIRECTORY_SIZE.
	maxBitmaps      = 65535
	maxBitmapDirLen = 1024 * maxBitmaps
	// bitmapEntryLen is the fixed part of a directory entry
	// (Qcow2BitmapDirEntry).
	bitmapEntryLen = 24
	// maxBitmapTableSize (entries) and maxBitmapBytes (bitmap data) are
	// BME_MAX_TABLE_SIZE and BME_MAX_PHYS_SIZE.
	maxBitmapTableSize = 0x8000000
	maxBitmapBytes     = 0x20000000
	// Granularity is 2^9 to 2^31 bytes (BME_MIN/MAX_GRANULARITY_BITS).
	minGranularityBits = 9
	maxGranularityBits = 31
	maxBitmapNameLen   = 1023
	// bitmapTypeDirtyTracking is the only bitmap type.
	bitmapTypeDirtyTracking = 1

	// Directory entry flags.
	BitmapInUse         = 1 << 0 // being written, or not saved: unusable
	BitmapAuto          = 1 << 1 // enabled: QEMU records writes in it
	bitmapReservedFlags = 0xfffffffc

	// Bitmap table entries.
	bitmapEntryReserved   = 0xff000000000001fe
	bitmapEntryOffsetMask = 0x00fffffffffffe00
	bitmapEntryAllOnes    = 1

	// maxBitmapTablesAtOpen bounds the bitmap table bytes checked when an
	// image opens. QEMU reads every table (and all bitmap data) at open;
	// real tables are a few hundred bytes, the largest QEMU can make 8 MiB.
	maxBitmapTablesAtOpen = 64 << 20
)

// ErrInconsistent: a persistent bitmap QEMU would not use, because its
// in-use flag is set (the image of a running VM, or of one that died
// without saving the bitmap).
var ErrInconsistent = errors.New("inconsistent bitmap")

// Bitmap is one persistent dirty bitmap of a qcow2 image, as the bitmap
// directory records it.
type Bitmap struct {
	// Index is the bitmap's position in the directory, from 0.
	Index int
	// Name is as recorded; QEMU sees it up to a NUL byte.
	Name string
	// Granularity is the guest bytes one bit covers.
	Granularity int64
	// Flags holds BitmapInUse and BitmapAuto.
	Flags       uint32
	TableOffset uint64
	TableSize   uint32 // entries
	// Err is why QEMU would not use the bitmap's contents (ErrInconsistent
	// when in use); nil when Runs can read it.
	Err error

	q    *qcow2Image
	size int64 // the guest disk size the bitmap covers
}

// InUse reports the in-use flag: QEMU considers the bitmap inconsistent.
func (b *Bitmap) InUse() bool { return b.Flags&BitmapInUse != 0 }

// Auto reports the auto flag: the bitmap is enabled (records writes);
// without it the bitmap is disabled.
func (b *Bitmap) Auto() bool { return b.Flags&BitmapAuto != 0 }

// bitmapDirectory is what a qcow2 layer knows of its persistent bitmaps.
type bitmapDirectory struct {
	list []Bitmap
}

// Bitmaps returns the persistent dirty bitmaps of a qcow2 layer in
// directory order, those in use included (with Err set). Nil for raw
// layers, snapshot views, and images whose bitmaps QEMU ignores.
func (l *Layer) Bitmaps() []Bitmap {
	if l.bitmaps == nil {
		return nil
	}
	return l.bitmaps.list
}

// FindBitmap returns the index in Bitmaps of the bitmap named name (as
// QEMU compares names: up to a NUL byte).
func (l *Layer) FindBitmap(name string) (int, bool) {
	for i, b := range l.Bitmaps() {
		if cString(b.Name) == name {
			return i, true
		}
	}
	return 0, false
}

// checkBitmapsExt makes the checks QEMU makes of the bitmaps extension
// when it opens an image (qcow2_read_extensions): a malformed one fails
// the open. Without the bitmaps autoclear bit QEMU considers every bitmap
// inconsistent and ignores the extension unread.
func (h *Header) checkBitmapsExt(name string, off uint64, p []byte) error {
	if len(p) != 24 {
		return corrupt(name, "bitmaps extension at %#x: length %d, not 24", off, len(p))
	}
	if h.AutoclearFeatures&AutoclearBitmaps == 0 {
		return nil
	}
	be := binary.BigEndian
	n, reserved := be.Uint32(p), be.Uint32(p[4:])
	dirLen, dirOff := be.Uint64(p[8:]), be.Uint64(p[16:])
	switch {
	case reserved != 0:
		return corrupt(name, "bitmaps extension at %#x: reserved field is %#x, not zero", off, reserved)
	case n > maxBitmaps:
		return corrupt(name, "bitmaps extension at %#x: %d bitmaps exceed QEMU's limit of %d", off, n, maxBitmaps)
	case n == 0:
		return corrupt(name, "bitmaps extension at %#x: no bitmaps", off)
	case dirOff&(uint64(1)<<h.ClusterBits-1) != 0:
		return corrupt(name, "bitmaps extension at %#x: bitmap directory offset %#x is not cluster aligned", off, dirOff)
	case dirLen > maxBitmapDirLen:
		return corrupt(name, "bitmaps extension at %#x: bitmap directory of %d bytes exceeds QEMU's limit of %d", off, dirLen, maxBitmapDirLen)
	}
	h.NbBitmaps, h.BitmapDirectorySize, h.BitmapDirectoryOffset = n, dirLen, dirOff
	return nil
}

// readBitmaps reads and checks the bitmap directory of q and the table of
// every bitmap not in use, as QEMU does when it opens an image
// (qcow2_load_dirty_bitmaps: bitmap_list_load, check_dir_entry,
// bitmap_table_load, check_table_entry, load_bitmap_data): anything wrong
// refuses the image, as it does in QEMU. size is the disk size the bitmaps
// cover.
func readBitmaps(q *qcow2Image, size int64, log *slog.Logger) (*bitmapDirectory, error) {
	h := q.hdr
	if !h.HasBitmaps {
		return nil, nil
	}
	if h.AutoclearFeatures&AutoclearBitmaps == 0 {
		// qcow2_read_extensions: the bit is cleared by any program that
		// writes the image without knowing bitmaps, so none can be
		// trusted; QEMU does not even read the directory.
		log.Warn(q.name+": a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent; they are left out",
			"file", q.name)
		return nil, nil
	}
	if h.BitmapDirectorySize == 0 {
		return nil, corrupt(q.name, "bitmap directory at %#x: size is zero", h.BitmapDirectoryOffset)
	}
	if h.BitmapDirectoryOffset > math.MaxInt64-h.BitmapDirectorySize {
		// QEMU's read of it fails.
		return nil, corrupt(q.name, "bitmap directory offset %#x is past what a file offset can reach", h.BitmapDirectoryOffset)
	}
	r := &tableReader{
		name: q.name, what: "bitmap directory", start: int64(h.BitmapDirectoryOffset),
		r: bufio.NewReaderSize(io.NewSectionReader(q.file, int64(h.BitmapDirectoryOffset), int64(h.BitmapDirectorySize)), 64<<10),
	}
	dirLen := int64(h.BitmapDirectorySize)
	broken := func(at int64) error {
		return corrupt(q.name, "bitmap directory at %#x: broken: entry at +%#x does not fit in its %d bytes", h.BitmapDirectoryOffset, at, dirLen)
	}
	d := &bitmapDirectory{list: make([]Bitmap, 0, min(h.NbBitmaps, 1024))}
	names := make(map[string]bool)
	be := binary.BigEndian
	for r.pos < dirLen {
		at := r.pos
		if at+bitmapEntryLen > dirLen {
			return nil, broken(at)
		}
		if len(d.list) == int(h.NbBitmaps) {
			return nil, corrupt(q.name, "bitmap directory at %#x: more bitmaps found than the %d the bitmaps extension gives", h.BitmapDirectoryOffset, h.NbBitmaps)
		}
		e, err := r.next(bitmapEntryLen)
		if err != nil {
			return nil, err
		}
		b := Bitmap{
			Index:       len(d.list),
			TableOffset: be.Uint64(e[0:]),
			TableSize:   be.Uint32(e[8:]),
			Flags:       be.Uint32(e[12:]),
			q:           q,
			size:        size,
		}
		typ, gbits := e[16], uint(e[17])
		nameLen, extraLen := int64(be.Uint16(e[18:])), int64(be.Uint32(e[20:]))
		entryLen := (bitmapEntryLen + nameLen + extraLen + 7) &^ 7
		if at+entryLen > dirLen {
			return nil, broken(at)
		}
		if extraLen != 0 {
			return nil, corrupt(q.name, "bitmap directory entry %d at %#x: bitmap extra data is not supported (%d bytes)", b.Index, r.start+at, extraLen)
		}
		name, err := r.next(int(nameLen))
		if err != nil {
			return nil, err
		}
		b.Name = string(name)
		if err := r.align(8); err != nil {
			return nil, err
		}
		if why := b.checkEntry(typ, gbits, nameLen); why != "" {
			return nil, corrupt(q.name, "bitmap directory entry %d at %#x: bitmap %q does not satisfy the constraints: %s", b.Index, r.start+at, b.Name, why)
		}
		b.Granularity = 1 << gbits
		// QEMU creates an in-memory bitmap per entry, refusing a name it
		// already has (bdrv_create_dirty_bitmap).
		if n := cString(b.Name); names[n] {
			return nil, corrupt(q.name, "bitmap directory entry %d at %#x: bitmap %q already exists", b.Index, r.start+at, n)
		} else {
			names[n] = true
		}
		d.list = append(d.list, b)
	}
	if len(d.list) != int(h.NbBitmaps) {
		return nil, corrupt(q.name, "bitmap directory at %#x: less bitmaps found (%d) than the %d the bitmaps extension gives", h.BitmapDirectoryOffset, len(d.list), h.NbBitmaps)
	}
	budget := int64(maxBitmapTablesAtOpen)
	for i := range d.list {
		b := &d.list[i]
		if b.InUse() {
			// load_bitmap: the data is unusable, QEMU does not read it.
			b.Err = &FormatError{File: q.name, Msg: fmt.Sprintf("bitmap %q is inconsistent and cannot be used (its in-use flag is set: a VM has it open, or died without saving it)", b.Name), Err: ErrInconsistent}
			continue
		}
		if budget -= int64(b.TableSize) * 8; budget < 0 {
			return nil, unsupported(q.name, "bitmap tables of more than %d bytes in all: chainfs does not check more at open", maxBitmapTablesAtOpen)
		}
		if _, err := b.table(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// checkEntry makes check_dir_entry's checks of a directory entry, and
// returns what is wrong, or "".
func (b *Bitmap) checkEntry(typ uint8, gbits uint, nameLen int64) string {
	cs := uint64(b.q.csize)
	switch {
	case b.TableSize == 0:
		return "empty bitmap table"
	case b.TableOffset == 0 || b.TableOffset%cs != 0 || b.TableOffset > math.MaxInt64-uint64(b.TableSize)*8:
		return fmt.Sprintf("bitmap table offset %#x is not a cluster-aligned offset", b.TableOffset)
	case b.TableSize > maxBitmapTableSize:
		return fmt.Sprintf("bitmap table of %d entries exceeds QEMU's limit of %d", b.TableSize, maxBitmapTableSize)
	case gbits < minGranularityBits || gbits > maxGranularityBits:
		return fmt.Sprintf("granularity 2^%d outside 2^%d..2^%d", gbits, minGranularityBits, maxGranularityBits)
	case b.Flags&bitmapReservedFlags != 0:
		return fmt.Sprintf("reserved flags %#x set", b.Flags&bitmapReservedFlags)
	case nameLen > maxBitmapNameLen:
		return fmt.Sprintf("name of %d bytes exceeds QEMU's limit of %d", nameLen, maxBitmapNameLen)
	case typ != bitmapTypeDirtyTracking:
		return fmt.Sprintf("type %d is not a dirty tracking bitmap (1)", typ)
	}
	data := uint64(b.TableSize) * cs
	if data > maxBitmapBytes {
		return fmt.Sprintf("%d bytes of bitmap data exceed QEMU's limit of %d", data, maxBitmapBytes)
	}
	// A bitmap in use may be too small: one not saved after a resize.
	if !b.InUse() && uint64(b.size) > (data*8)<<gbits {
		return fmt.Sprintf("a table of %d clusters of 2^%d-byte granularity cannot cover the disk size %d", b.TableSize, gbits, b.size)
	}
	return ""
}

// bits returns the number of bits of the bitmap: one per granularity
// chunk of the disk, the last maybe partial.
func (b *Bitmap) bits() int64 { return (b.size + b.Granularity - 1) / b.Granularity }

// table reads the bitmap table and checks it as QEMU does before it loads
// a bitmap's data (bitmap_table_load, check_table_entry,
// load_bitmap_data): reserved bits clear, data clusters aligned, the
// all-ones flag only without an offset, and exactly as many entries as
// the disk size needs.
func (b *Bitmap) table() ([]uint64, error) {
	q := b.q
	cs := q.csize
	if need := (b.bits() + cs*8 - 1) / (cs * 8); need != int64(b.TableSize) {
		return nil, corrupt(q.name, "bitmap %q: table of %d entries, where the disk size %d at granularity %d needs %d",
			b.Name, b.TableSize, b.size, b.Granularity, need)
	}
	raw := make([]byte, int64(b.TableSize)*8) // at most BME_MAX_PHYS_SIZE / 512 entries: 8 MiB
	if _, err := q.file.ReadAt(raw, int64(b.TableOffset)); err != nil {
		return nil, &FormatError{File: q.name, Msg: fmt.Sprintf("read table of bitmap %q at %#x", b.Name, b.TableOffset), Err: err}
	}
	t := make([]uint64, b.TableSize)
	for i := range t {
		e := binary.BigEndian.Uint64(raw[i*8:])
		off := e & bitmapEntryOffsetMask
		if e&bitmapEntryReserved != 0 || (off != 0 && (e&bitmapEntryAllOnes != 0 || off%uint64(cs) != 0)) {
			return nil, corrupt(q.name, "bitmap %q: invalid table entry %d (%#016x) in the table at %#x", b.Name, i, e, b.TableOffset)
		}
		t[i] = e
	}
	return t, nil
}

// Runs calls fn for each run of equal bits of the bitmap, in order, as
// guest byte ranges: [off, off+length) dirty or clean, neighbours merged,
// runs aligned to the granularity except the last, cut at the disk size.
// This is what qemu-nbd reports for the bitmap's qemu:dirty-bitmap
// context. It fails for a bitmap with Err set.
func (b *Bitmap) Runs(fn func(off, length int64, dirty bool) error) error {
	if b.Err != nil {
		return b.Err
	}
	t, err := b.table()
	if err != nil {
		return err
	}
	q := b.q
	rw := &runWriter{b: b, fn: fn}
	perCluster := q.csize * 8
	nbits := b.bits()
	var buf []byte
	for i, e := range t {
		first := int64(i) * perCluster
		n := min(perCluster, nbits-first)
		if n <= 0 {
			break
		}
		off := e & bitmapEntryOffsetMask
		if off == 0 {
			// No cluster: all bits clear, or all set with the all-ones flag.
			rw.add(first, n, e&bitmapEntryAllOnes != 0)
			continue
		}
		if buf == nil {
			buf = make([]byte, q.csize)
		}
		if _, err := q.file.ReadAt(buf, int64(off)); err != nil {
			return &FormatError{File: q.name, Msg: fmt.Sprintf("read data of bitmap %q at %#x", b.Name, off), Err: err}
		}
		// Bit k of the cluster is bit k%8 of byte k/8 (QEMU serializes
		// the bitmap as little-endian words): walk it a word at a time.
		for w := int64(0); w*64 < n; w++ {
			word := binary.LittleEndian.Uint64(buf[w*8:])
			start, end := first+w*64, min(first+w*64+64, first+n)
			for pos := start; pos < end; {
				v := word >> uint(pos-start)
				dirty := v&1 != 0
				if !dirty {
					v = ^v
				}
				run := int64(bits.TrailingZeros64(^v)) // equal bits from pos
				run = min(run, end-pos)
				rw.add(pos, run, dirty)
				pos += run
			}
		}
		if rw.err != nil {
			return rw.err
		}
	}
	return rw.flush()
}

// runWriter merges runs of bits and hands them on as byte ranges.
type runWriter struct {
	b          *Bitmap
	fn         func(off, length int64, dirty bool) error
	start, n   int64 // pending run, in bits
	dirty, any bool
	err        error
}

func (w *runWriter) add(first, n int64, dirty bool) {
	if w.err != nil || n <= 0 {
		return
	}
	if w.any && w.dirty == dirty && w.start+w.n == first {
		w.n += n
		return
	}
	w.err = w.flush()
	w.start, w.n, w.dirty, w.any = first, n, dirty, true
}

func (w *runWriter) flush() error {
	if w.err != nil || !w.any {
		return w.err
	}
	w.any = false
	g := w.b.Granularity
	off := w.start * g
	end := min((w.start+w.n)*g, w.b.size)
	return w.fn(off, end-off, w.dirty)
}

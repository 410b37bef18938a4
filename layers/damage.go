package layers

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Damage that QEMU reads through.
//
// QEMU's block layer reads every byte past the end of a file as zero
// (block/io.c, bdrv_aligned_preadv), and its qcow2 driver masks the bits of
// a table entry it does not use. So QEMU opens, reads and maps images whose
// tables or clusters lie partly or wholly past the end of their file (a
// table there reads as all zero: nothing allocated; a data cluster reads as
// zeroes; `qemu-img map` still prints its offset), and images whose entries
// carry reserved bits or flags that make no sense for them. `qemu-img check`
// reports each of these as an error. A host crash leaves such images too:
// L2 entries pointing just past the end of a file whose growth never
// reached the disk.
//
// By default chainfs answers exactly as QEMU does, and notes each damaged
// structure the first time it reads it: one warning naming the file, the
// structure and its guest and host offsets (the entries of one L2 table
// share a warning per kind, naming the first), and a count per kind
// (Layer.Damage). Nothing is scanned ahead of need: an L1 entry and its L2
// table are looked at when a read or a map first needs them, once per
// view (a table two views share, the current disk and a snapshot, counts
// for each); Layer.ScanDamage looks at them all. With Options.Strict every
// such structure is an error instead, for the guest range that needs it
// (EIO for that range through the mount), and a table needed at open
// refuses the image; the damage is still counted, and the failing reads
// log it.

// DamageKind is a kind of damage QEMU reads through and `qemu-img check`
// calls an error.
type DamageKind uint8

const (
	// DamageL1Table: the L1 table reaches past the end of the file; the
	// entries there read as zero (unallocated).
	DamageL1Table DamageKind = iota
	// DamageRefcountTable: the refcount table reaches past the end of the
	// file.
	DamageRefcountTable
	// DamageRefcountBlock: a refcount block lies past the end of the file
	// (its refcounts read as zero).
	DamageRefcountBlock
	// DamageL2Table: an L2 table reaches past the end of the file; its
	// entries there read as zero (unallocated: the backing file shows).
	DamageL2Table
	// DamageDataCluster: a data cluster reaches past the end of the file
	// that holds it (the image or its external data file); those bytes
	// read as zero.
	DamageDataCluster
	// DamageCompressedCluster: a compressed cluster starts past the end of
	// the file. Reading it fails, as in QEMU; the map still shows it.
	DamageCompressedCluster
	// DamageReservedBits: an L1 or L2 entry has reserved bits set, which
	// QEMU ignores.
	DamageReservedBits
	// DamageCompressedFlags: a compressed cluster's entry carries the
	// COPIED flag or a subcluster bitmap, which QEMU ignores.
	DamageCompressedFlags

	numDamageKinds
)

var damageNames = [numDamageKinds]string{
	"L1 table past end of file",
	"refcount table past end of file",
	"refcount block past end of file",
	"L2 table past end of file",
	"data cluster past end of file",
	"compressed cluster past end of file",
	"reserved bits set in a table entry",
	"flags set on a compressed cluster",
}

var damageKeys = [numDamageKinds]string{
	"l1-table-past-eof",
	"refcount-table-past-eof",
	"refcount-block-past-eof",
	"l2-table-past-eof",
	"data-cluster-past-eof",
	"compressed-cluster-past-eof",
	"reserved-bits",
	"compressed-cluster-flags",
}

// String describes the kind in words ("L2 table past end of file").
func (k DamageKind) String() string {
	if k < numDamageKinds {
		return damageNames[k]
	}
	return fmt.Sprintf("DamageKind(%d)", uint8(k))
}

// Key is the kind as a short identifier ("l2-table-past-eof"), for JSON
// and log attributes.
func (k DamageKind) Key() string {
	if k < numDamageKinds {
		return damageKeys[k]
	}
	return k.String()
}

// DamageKinds lists every kind, in a fixed order.
func DamageKinds() []DamageKind {
	ks := make([]DamageKind, numDamageKinds)
	for i := range ks {
		ks[i] = DamageKind(i)
	}
	return ks
}

// DamageCounts holds, per kind, how many damaged structures (tables,
// entries) a layer has noticed so far.
type DamageCounts [numDamageKinds]int64

// Total returns the sum over all kinds.
func (d DamageCounts) Total() int64 {
	var n int64
	for _, c := range d {
		n += c
	}
	return n
}

// maxDamageWarnings bounds the warnings one image logs: a hostile image
// can have millions of damaged entries. Past it, damage is still counted,
// and one more warning says that the rest goes unlogged.
const maxDamageWarnings = 64

// damageLog counts the damage of one image and logs it, each structure
// once: callers note a structure only the first time they meet it (an L2
// table's entries when the table is first read for a view, a table at
// open), so nothing here remembers structures and memory stays constant.
type damageLog struct {
	name string
	log  *slog.Logger
	// countOnly: strict mode, where each read the damage fails logs an
	// error of its own, so it is counted here, not logged.
	countOnly bool
	counts    [numDamageKinds]atomic.Int64
	warned    atomic.Int64
	quiet     sync.Once
}

func newDamageLog(name string, log *slog.Logger, countOnly bool) *damageLog {
	if log == nil {
		log = slog.Default()
	}
	return &damageLog{name: name, log: log, countOnly: countOnly}
}

// note counts n damaged structures of kind k and logs msg (which the
// caller words to name the structure and its offsets) with attrs, unless
// the image already logged maxDamageWarnings warnings.
func (d *damageLog) note(k DamageKind, n int64, msg string, attrs ...any) {
	if d == nil || n <= 0 {
		return
	}
	d.counts[k].Add(n)
	if d.countOnly {
		return
	}
	switch w := d.warned.Add(1); {
	case w <= maxDamageWarnings:
		d.log.Warn(d.name+": "+msg, append([]any{"file", d.name, "damage", k.Key()}, attrs...)...)
	case w == maxDamageWarnings+1:
		d.quiet.Do(func() {
			d.log.Warn(fmt.Sprintf("%s: more damage QEMU reads through; counting the rest without logging each", d.name),
				"file", d.name)
		})
	}
}

func (d *damageLog) snapshot() DamageCounts {
	var c DamageCounts
	if d == nil {
		return c
	}
	for i := range c {
		c[i] = d.counts[i].Load()
	}
	return c
}

// Damage returns, per kind, the damage this layer noticed so far that QEMU
// reads through (see DamageKind). Counts only grow as more of the layer is
// read; nothing is scanned ahead of need. Raw layers have none.
func (l *Layer) Damage() DamageCounts {
	if l.q == nil {
		return DamageCounts{}
	}
	return l.q.damage.snapshot()
}

// ScanDamage looks at every table of the layer for the damage QEMU reads
// through, as reading all of it would (each L2 table its L1 table points
// to, and the refcounts that QEMU's preallocation guess reads), and
// returns the damage noted. It reads metadata only, as much as a map of
// the whole layer; chainfs info --check uses it. Structures QEMU itself
// refuses (a misaligned table) are skipped here: reads report them.
func (l *Layer) ScanDamage() DamageCounts {
	if l.q == nil {
		return DamageCounts{}
	}
	q := l.q
	span := int64(1) << q.spanBits
	var exts []Extent
	for off := int64(0); off < q.size; off += span {
		exts, _ = q.status(exts[:0], off, span)
	}
	q.metadataPreallocated()
	return l.Damage()
}

// tableBits is a bitset over L1 indexes, set atomically: which L2 tables of
// a view were already looked at for damage.
type tableBits []atomic.Uint64

func newTableBits(n int) tableBits { return make(tableBits, (n+63)/64) }

// set sets bit i and reports whether it was clear. A plain load first:
// every read of a table asks, and once set a bit stays set.
func (b tableBits) set(i int64) bool {
	m := uint64(1) << (i & 63)
	w := &b[i>>6]
	if w.Load()&m != 0 {
		return false
	}
	return w.Or(m)&m == 0
}

// Where damage is noticed. Each function below looks at one structure the
// first time it is read (an L1 table when a view is made, an L2 table when
// a view first reads it), so that each is noted once without remembering
// anything but a bit per L2 table.

// l2ReservedBits are the bits of a standard cluster descriptor that
// qcow2.txt reserves ("Standard Cluster Descriptor"; QEMU's
// L2E_STD_RESERVED_MASK): bits 1-8 and 56-61.
const l2ReservedBits = 0x3f000000000001fe

// tablePastEOF handles a table of n bytes at off that QEMU reads whole at
// open (the L1 and refcount tables): reaching past the end of the file, it
// reads as zero there; that is damage, and an error when strict.
func (q *qcow2Image) tablePastEOF(k DamageKind, what string, off uint64, n int64, size string) error {
	fsize := q.file.Size()
	if n == 0 || off+uint64(n) <= uint64(fsize) {
		return nil
	}
	if q.strict {
		return corrupt(q.name, "%s at %#x (%s) lies beyond end of file (%#x)", what, off, size, fsize)
	}
	q.damage.note(k, 1, fmt.Sprintf("%s at %#x (%s) reaches past end of file (%#x); reading it as zero there, as QEMU does", what, off, size, fsize),
		"structure", what, "host_offset", off)
	return nil
}

// firstLook reports whether this is the first time the view looks at L1
// entry i and its L2 table: the bit is set by whoever gets there first,
// so each is noted exactly once however many reads race to it. The bits
// are made on first use (views of snapshots are made elsewhere, and most
// never read).
func (v *qcow2View) firstLook(i int64) bool {
	v.scannedOnce.Do(func() {
		v.scanned = newTableBits(int(max(v.l1Len(), i+1)))
	})
	if i>>6 >= int64(len(v.scanned)) {
		return false // past the table: unallocated, nothing to note
	}
	return v.scanned.set(i)
}

// noteL1Entry notes the damage of L1 entry i: reserved bits (QEMU masks
// them off; qemu-img check reports them), and an L2 table reaching past
// the end of the file (QEMU reads it as zero there: unallocated).
func (v *qcow2View) noteL1Entry(i int64, e l1Entry) {
	if e&l1ReservedBits != 0 {
		v.damage.note(DamageReservedBits, 1, fmt.Sprintf("L1 entry %d (guest offset %#x) has reserved bits set (%#016x); QEMU ignores them", i, i<<v.spanBits, uint64(e)),
			"structure", "L1 entry", "guest_offset", i<<v.spanBits, "host_offset", v.l1Offset+uint64(i)*8)
	}
	if off := e.l2Offset(); off != 0 && off+uint64(v.csize) > uint64(v.file.Size()) {
		v.damage.note(DamageL2Table, 1, fmt.Sprintf("L2 table at %#x (L1 index %d, guest offset %#x) reaches past end of file (%#x); reading it as zero there (unallocated), as QEMU does",
			off, i, i<<v.spanBits, v.file.Size()),
			"structure", "L2 table", "guest_offset", i<<v.spanBits, "host_offset", off)
	}
}

// strictL1 makes the damage of L1 entry i an error: reserved bits, or an
// L2 table reaching past the end of the file.
func (v *qcow2View) strictL1(i int64, e l1Entry) error {
	if e&l1ReservedBits != 0 {
		return corrupt(v.name, "L1 entry %#016x (index %d, guest offset %#x) has reserved bits set", uint64(e), i, i<<v.spanBits)
	}
	if off := e.l2Offset(); off != 0 && off+uint64(v.csize) > uint64(v.file.Size()) {
		return corrupt(v.name, "L2 table at %#x (L1 index %d) lies beyond end of file (%#x)", off, i, v.file.Size())
	}
	return nil
}

// l2Damage tallies the damage of one L2 table: per kind, how many entries
// and the first one.
type l2Damage struct {
	n           [numDamageKinds]int64
	guest, host [numDamageKinds]int64
	entry       [numDamageKinds]uint64
	index       [numDamageKinds]int64
}

func (d *l2Damage) add(k DamageKind, guest, host int64, e uint64, l2i int64) {
	if d.n[k] == 0 {
		d.guest[k], d.host[k], d.entry[k], d.index[k] = guest, host, e, l2i
	}
	d.n[k]++
}

// scanL2 looks at the L2 table t of L1 index i (at host offset off) for
// the damage QEMU reads through, and counts and logs it. Entries QEMU
// refuses (misaligned offsets, invalid bitmaps) are left to the reads that
// meet them; strict mode checks each entry as it reads it.
func (v *qcow2View) scanL2(i int64, off uint64, t []byte) {
	var d l2Damage
	entrySize := int64(8)
	if v.extL2 {
		entrySize = 16
	}
	// The entries that map guest bytes below the virtual size.
	base := i << v.spanBits
	n := min(int64(1)<<v.l2Bits, (v.size-base+v.csize-1)>>v.cbits)
	// Most entries of a healthy table need one test: no compressed or
	// reserved bit, and a host offset whose whole cluster lies in the file
	// that holds data. The others take the careful path.
	limit, step := v.data.Size()-v.csize, int(entrySize)
	t = t[:n*entrySize]
	for p := 0; p+8 <= len(t); p += step {
		e := binary.BigEndian.Uint64(t[p:])
		if e&(l2Compressed|l2ReservedBits) == 0 && int64(e&l2OffsetMask) <= limit {
			continue
		}
		var bitmap uint64
		if v.extL2 {
			bitmap = binary.BigEndian.Uint64(t[p+8:])
		}
		l2i := int64(p) / entrySize
		v.scanEntry(&d, l2Entry(e), bitmap, base+l2i<<v.cbits, l2i)
	}
	v.reportL2(off, &d)
}

// scanEntry tallies the damage of one L2 entry.
func (v *qcow2View) scanEntry(d *l2Damage, e l2Entry, bitmap uint64, guest, l2i int64) {
	if e.compressed() {
		if e.copied() || bitmap != 0 {
			d.add(DamageCompressedFlags, guest, int64(uint64(e)&v.coffsetMask), uint64(e), l2i)
		}
		if coff := uint64(e) & v.coffsetMask; coff >= uint64(v.file.Size()) {
			d.add(DamageCompressedCluster, guest, int64(coff), uint64(e), l2i)
		}
		return
	}
	if uint64(e)&l2ReservedBits != 0 {
		d.add(DamageReservedBits, guest, int64(e.hostOffset()), uint64(e), l2i)
	}
	if need := min(v.hostNeed(e, bitmap), v.size-guest); need > 0 {
		host := e.hostOffset()
		if host&uint64(v.csize-1) == 0 && host+uint64(need) > uint64(v.data.Size()) {
			d.add(DamageDataCluster, guest, int64(host), uint64(e), l2i)
		}
	}
}

// hostNeed returns how many bytes from the start of its host cluster the
// reads of entry e (with extended L2 bitmap bitmap) touch: the whole
// cluster, or with subclusters up to the end of the last one allocated
// (QEMU writes only those: a healthy image may end inside the cluster);
// 0 when no read touches it.
func (v *qcow2View) hostNeed(e l2Entry, bitmap uint64) int64 {
	if v.clusterType(e) != clusterNormal {
		return 0
	}
	if !v.extL2 {
		return v.csize
	}
	alloc := bitmap & allAllocBits
	if alloc == 0 || (bitmap>>32)&bitmap != 0 {
		// Nothing read, or an invalid bitmap, which fails the reads that
		// meet it instead.
		return 0
	}
	return int64(bits.Len64(alloc)) << (v.cbits - 5)
}

// reportL2 counts and logs what scanL2 found, one warning per kind.
func (v *qcow2View) reportL2(off uint64, d *l2Damage) {
	for k := range d.n {
		n := d.n[k]
		if n == 0 {
			continue
		}
		var msg, structure string
		switch DamageKind(k) {
		case DamageDataCluster:
			structure = "data cluster"
			msg = fmt.Sprintf("%d data clusters reach past end of file (%#x); reading as zeroes there, as QEMU does", n, v.data.Size())
			if v.data != v.file {
				msg = fmt.Sprintf("%d data clusters reach past end of external data file %s (%#x); reading as zeroes there, as QEMU does", n, v.data.Name, v.data.Size())
			}
		case DamageCompressedCluster:
			structure = "compressed cluster"
			msg = fmt.Sprintf("%d compressed clusters start past end of file (%#x); reading them fails, as in QEMU", n, v.file.Size())
		case DamageReservedBits:
			structure = "L2 entry"
			msg = fmt.Sprintf("%d L2 entries have reserved bits set; QEMU ignores them", n)
		case DamageCompressedFlags:
			structure = "L2 entry"
			msg = fmt.Sprintf("%d compressed cluster entries carry the COPIED flag or a subcluster bitmap; QEMU ignores them", n)
		}
		msg = fmt.Sprintf("L2 table at %#x: %s (first: guest offset %#x, host offset %#x, L2 index %d, entry %#016x)",
			off, msg, d.guest[k], d.host[k], d.index[k], d.entry[k])
		v.damage.note(DamageKind(k), n, msg,
			"structure", structure, "guest_offset", d.guest[k], "host_offset", d.host[k], "l2_table", off, "count", n)
	}
}

// strictL2Entry makes the damage of one L2 entry that is not about file
// ends an error, for strict reads.
func (v *qcow2View) strictL2Entry(e l2Entry, bitmap uint64, guest, l2i, l1i int64) error {
	switch {
	case e.compressed() && (e.copied() || bitmap != 0):
		return corrupt(v.name, "compressed cluster entry %#016x for guest offset %#x carries the COPIED flag or a subcluster bitmap (%#x) (L2 table at %#x, index %d)",
			uint64(e), guest, bitmap, v.l2Offset(l1i), l2i)
	case !e.compressed() && uint64(e)&l2ReservedBits != 0:
		return corrupt(v.name, "L2 entry %#016x for guest offset %#x has reserved bits set (L2 table at %#x, index %d)",
			uint64(e), guest, v.l2Offset(l1i), l2i)
	}
	return nil
}

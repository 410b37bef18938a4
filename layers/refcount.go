package layers

import (
	"encoding/binary"
	"fmt"
)

// refcounts reads cluster refcounts (qcow2.txt "Cluster refcounts"). chainfs
// needs them only for QEMU's metadata-preallocation heuristic, so it keeps
// just the table and the last block read.
type refcounts struct {
	q         *qcow2Image
	table     []uint64
	bits      uint // refcount width in bits: 1 << refcount_order
	perBlock  int64
	lastOff   uint64
	lastBlock []byte
}

// newRefcounts reads the refcount table (qcow2_refcount_init), as zero
// where it reaches past the end of the file (damage noted at open, or
// refused there when strict).
func newRefcounts(q *qcow2Image) (*refcounts, error) {
	h := q.hdr
	n := int64(h.RefcountTableClusters) * q.csize / 8 // bounded by DecodeHeader (8 MiB)
	raw := make([]byte, n*8)
	if _, err := q.file.ReadAt(raw, int64(h.RefcountTableOffset)); err != nil {
		return nil, &FormatError{File: q.name, Msg: fmt.Sprintf("read refcount table at %#x", h.RefcountTableOffset), Err: err}
	}
	r := &refcounts{q: q, table: make([]uint64, n), bits: 1 << h.RefcountOrder}
	for i := range r.table {
		r.table[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	r.perBlock = q.csize * 8 / int64(r.bits)
	return r, nil
}

// get returns the refcount of host cluster i; clusters no refcount block
// covers have refcount 0.
func (r *refcounts) get(i int64) (uint64, error) {
	ti := i / r.perBlock
	if ti >= int64(len(r.table)) {
		return 0, nil
	}
	off := r.table[ti] &^ 511
	if off == 0 {
		return 0, nil
	}
	if off != r.lastOff {
		q := r.q
		if off&uint64(q.csize-1) != 0 {
			return 0, corrupt(q.name, "refcount block at %#x (refcount table index %d) is not cluster aligned", off, ti)
		}
		if off > maxQEMURead-uint64(q.csize) {
			return 0, &FormatError{File: q.name, Msg: fmt.Sprintf("read refcount block at %#x", off), Err: errBeyondQEMURead}
		}
		// A block past the end of the file reads as zero refcounts, as in
		// QEMU (qcow2_get_refcount); off has bits up to 63, so compare
		// against size-csize rather than add.
		if size := uint64(q.file.Size()); size < uint64(q.csize) || off > size-uint64(q.csize) {
			if q.strict {
				return 0, corrupt(q.name, "refcount block at %#x (refcount table index %d) lies beyond end of file (%#x)", off, ti, q.file.Size())
			}
			q.damage.note(DamageRefcountBlock, 1, fmt.Sprintf("refcount block at %#x (refcount table index %d) reaches past end of file (%#x); reading its refcounts as zero there, as QEMU does",
				off, ti, q.file.Size()), "structure", "refcount block", "host_offset", off)
		}
		if r.lastBlock == nil {
			r.lastBlock = make([]byte, q.csize)
		}
		if _, err := q.file.ReadAt(r.lastBlock, int64(off)); err != nil {
			return 0, &FormatError{File: q.name, Msg: fmt.Sprintf("read refcount block at %#x", off), Err: err}
		}
		r.lastOff = off
	}
	idx := i % r.perBlock
	b := r.lastBlock
	switch r.bits {
	case 1, 2, 4:
		per := 8 / int64(r.bits)
		return uint64(b[idx/per]>>(uint(idx%per)*r.bits)) & (1<<r.bits - 1), nil
	case 8:
		return uint64(b[idx]), nil
	case 16:
		return uint64(binary.BigEndian.Uint16(b[idx*2:])), nil
	case 32:
		return uint64(binary.BigEndian.Uint32(b[idx*4:])), nil
	default:
		return binary.BigEndian.Uint64(b[idx*8:]), nil
	}
}

package status

import (
	"github.com/chainfs/chainfs/layers"
)

// Map streams the entries `qemu-img map` prints for l, taken as the top of
// its own sub-chain, over [off, off+length) clipped to l.Size. Entries are
// merged exactly as qemu-img merges them. It reads l's resolved runs
// (Layer.Runs), so memory stays bounded by the chain's caches whatever the
// image size, and the layers of one chain share the work.
func Map(l *layers.Layer, off, length int64, fn func(Entry) error) error {
	end := min(off+length, l.Size)
	if off < 0 || off >= end {
		return nil
	}
	m := &merger{fn: fn}
	for r, err := range l.Runs(off, end-off) {
		if err != nil {
			return err
		}
		if m.add(entryOf(l, &r)); m.err != nil {
			return m.err
		}
	}
	return m.flush()
}

// entryOf is what qemu-img map prints for a run of top: the block status
// of the layer that decides it, as block/io.c and qemu-img.c combine it
// (get_block_status asks each layer in turn; the depth is how far down it
// went).
//
//   - Data: present, data, with its host offset. A metadata-preallocated
//     image reports a host hole as data that reads zero.
//   - Compressed: present, data, no offset.
//   - Zero: present, zero; an offset when host space is allocated.
//   - Unallocated (nothing in the chain, or past a backing file's end):
//     zero, not present, at the depth where the search stopped; an offset
//     for an unallocated subcluster of an allocated cluster.
func entryOf(top *layers.Layer, r *layers.Run) Entry {
	e := Entry{Start: r.Offset, Length: r.Length, Depth: r.Layer.Index - top.Index}
	switch r.Kind {
	case layers.Data:
		e.Present, e.Data, e.Zero = true, true, r.HostHole
	case layers.Compressed:
		e.Present, e.Data, e.Compressed = true, true, true
	case layers.Zero:
		e.Present, e.Zero = true, true
	case layers.Unallocated:
		e.Zero = true
	}
	if r.HasHostOffset() {
		e.HasOffset, e.Offset, e.File = true, r.HostOffset, r.File.Name
	}
	return e
}

// merger joins entries as qemu-img map does (qemu-img.c, entry_mergeable):
// same flags, same depth, and where offsets are reported, host-contiguous
// in the same file.
type merger struct {
	cur Entry
	fn  func(Entry) error
	err error
}

func mergeable(a, b *Entry) bool {
	if a.Length == 0 || a.End() != b.Start {
		return false
	}
	if a.Zero != b.Zero || a.Data != b.Data || a.Compressed != b.Compressed ||
		a.Depth != b.Depth || a.Present != b.Present || a.HasOffset != b.HasOffset {
		return false
	}
	return !a.HasOffset || (a.File == b.File && a.Offset+a.Length == b.Offset)
}

func (m *merger) add(e Entry) {
	if m.err != nil || e.Length <= 0 {
		return
	}
	if mergeable(&m.cur, &e) {
		m.cur.Length += e.Length
		return
	}
	if m.cur.Length > 0 {
		m.err = m.fn(m.cur)
	}
	m.cur = e
}

func (m *merger) flush() error {
	if m.err == nil && m.cur.Length > 0 {
		m.err = m.fn(m.cur)
		m.cur = Entry{}
	}
	return m.err
}

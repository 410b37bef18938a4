package status

import (
	"github.com/chainfs/chainfs/layers"
)

// Block-status flags, as block/io.c combines them (BDRV_BLOCK_*).
type flags uint8

const (
	fData flags = 1 << iota
	fZero
	fCompressed
	fAllocated // the layer itself decided the range (BDRV_BLOCK_ALLOCATED)
	fOffset    // a host offset is reported (BDRV_BLOCK_OFFSET_VALID)
)

// mapper walks a layer and its backing chain as qemu-img map does: for each
// range, ask the layer; if it has neither data nor zeroes, ask its backing
// file, one level deeper (qemu-img.c, get_block_status).
type mapper struct {
	scratch [][]layers.Extent // per depth, reused across windows
	out     *merger
}

// Map streams the entries `qemu-img map` prints for l, taken as the top of
// its own sub-chain, over [off, off+length) clipped to l.Size. Entries are
// merged exactly as qemu-img merges them. Memory stays bounded by one
// window of extents whatever the image size.
func Map(l *layers.Layer, off, length int64, fn func(Entry) error) error {
	end := min(off+length, l.Size)
	if off < 0 || off >= end {
		return nil
	}
	m := &mapper{out: &merger{fn: fn}}
	step := window(l)
	for ws := off; ws < end; {
		we := min(ws+step, end)
		if err := m.walk(l, 0, ws, we); err != nil {
			return err
		}
		if m.out.err != nil {
			return m.out.err
		}
		ws = we
	}
	return m.out.flush()
}

// window is the guest range resolved at once: 4096 of the smallest
// clusters in the chain, so a window holds at most some 4096 extents per
// layer (times 32 with subclusters).
func window(l *layers.Layer) int64 {
	smallest := int64(1 << 21)
	for b := l; b != nil; b = b.Backing {
		if b.Format == layers.FormatQcow2 {
			smallest = min(smallest, b.ClusterSize)
		}
	}
	return 4096 * smallest
}

func (m *mapper) walk(l *layers.Layer, depth int, off, end int64) error {
	if depth >= len(m.scratch) {
		m.scratch = append(m.scratch, nil)
	}
	exts, err := l.Status(m.scratch[depth][:0], off, end-off)
	m.scratch[depth] = exts[:0]
	if err != nil {
		return err
	}
	prealloc, _ := l.MetadataPreallocated() // QEMU treats a failed check as "no"
	for _, e := range exts {
		switch e.Kind {
		case layers.Data:
			if prealloc {
				if err := m.preallocated(e, depth); err != nil {
					return err
				}
				continue
			}
			m.emit(e.Offset, e.Length, depth, fData|fAllocated|fOffset, e.HostOffset, e.File)
		case layers.Compressed:
			m.emit(e.Offset, e.Length, depth, fData|fAllocated|fCompressed, 0, nil)
		case layers.Zero:
			f := fZero | fAllocated
			if e.File != nil {
				f |= fOffset
			}
			m.emit(e.Offset, e.Length, depth, f, e.HostOffset, e.File)
		case layers.Unallocated:
			// Nothing here. block/io.c reports zeroes, not allocated, where
			// there is no backing file or the backing file ends before the
			// range; otherwise qemu-img asks the backing file.
			f := fZero
			if e.File != nil {
				f |= fOffset // unallocated subcluster of an allocated cluster
			}
			b := l.Backing
			split := e.Offset
			if b != nil {
				split = min(max(b.Size, e.Offset), e.End())
				if split > e.Offset {
					if err := m.walk(b, depth+1, e.Offset, split); err != nil {
						return err
					}
				}
			}
			if split < e.End() {
				m.emit(split, e.End()-split, depth, f, e.HostOffset+(split-e.Offset), e.File)
			}
		}
	}
	return nil
}

// preallocated reports a data extent of an image QEMU believes was created
// with preallocation=metadata: it asks the host file, and host holes read
// as zero (block/io.c, BDRV_BLOCK_RECURSE).
func (m *mapper) preallocated(e layers.Extent, depth int) error {
	for done := int64(0); done < e.Length; {
		data, n, err := e.File.Allocation(e.HostOffset+done, e.Length-done)
		if err != nil || n <= 0 {
			n = e.Length - done // errors only cost the extra information
			data = true
		}
		f := fData | fAllocated | fOffset
		if !data {
			f |= fZero
		}
		m.emit(e.Offset+done, n, depth, f, e.HostOffset+done, e.File)
		done += n
	}
	return nil
}

func (m *mapper) emit(start, length int64, depth int, f flags, host int64, file *layers.HostFile) {
	e := Entry{
		Start: start, Length: length, Depth: depth,
		Present:    f&fAllocated != 0,
		Zero:       f&fZero != 0,
		Data:       f&fData != 0,
		Compressed: f&fCompressed != 0,
		HasOffset:  f&fOffset != 0,
	}
	if e.HasOffset {
		e.Offset = host
		e.File = file.Name
	}
	m.out.add(e)
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

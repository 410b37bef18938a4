package qemudiff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/chainfs/chainfs/layers"
)

// Regions of a qcow2 file the fuzzer mutates, each a list of byte ranges
// of the file, found by walking the structures from the header.
const (
	regHeader         = "header"
	regL1             = "L1 table"
	regL2             = "L2 tables"
	regRefcountTable  = "refcount table"
	regRefcountBlocks = "refcount blocks"
	regSnapshots      = "snapshot table"
	regBitmaps        = "bitmap directory"
	regCompressed     = "compressed data"
)

var regionNames = []string{regHeader, regL1, regL2, regRefcountTable, regRefcountBlocks, regSnapshots, regBitmaps, regCompressed}

type span struct{ start, end int64 }

// layout is where the structures of one (healthy) qcow2 file lie.
type layout struct {
	h       *layers.Header
	cs      int64
	regions map[string][]span
}

const offMask = 0x00fffffffffffe00

func layoutOf(t testing.TB, b []byte) *layout {
	t.Helper()
	h, err := layers.DecodeHeader("image", bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("the recipe's image does not decode: %v", err)
	}
	be := binary.BigEndian
	size := int64(len(b))
	cs := h.ClusterSize()
	lay := &layout{h: h, cs: cs, regions: map[string][]span{}}
	add := func(r string, start, n int64) {
		if n > 0 && start >= 0 && start < size {
			lay.regions[r] = append(lay.regions[r], span{start, min(start+n, size)})
		}
	}

	// The header: its fields, the extensions up to and with the end
	// marker, and the backing file name.
	off := int64(h.HeaderLength)
	for off+8 <= cs && off+8 <= size {
		typ, n := be.Uint32(b[off:]), int64(be.Uint32(b[off+4:]))
		off += 8 + (n+7)&^7
		if typ == 0 {
			break
		}
	}
	add(regHeader, 0, off)
	if h.BackingFileOffset != 0 {
		add(regHeader, int64(h.BackingFileOffset), int64(h.BackingFileSize))
	}

	add(regL1, int64(h.L1TableOffset), int64(h.L1Size)*8)
	entry := int64(8)
	if h.ExtendedL2() {
		entry = 16
	}
	x := 62 - (h.ClusterBits - 8)
	for i := int64(0); i < int64(h.L1Size); i++ {
		l2 := int64(be.Uint64(b[int64(h.L1TableOffset)+8*i:]) & offMask)
		if l2 == 0 || l2+cs > size {
			continue
		}
		add(regL2, l2, cs)
		for j := int64(0); j < cs; j += entry {
			e := be.Uint64(b[l2+j:])
			if e&(1<<62) == 0 {
				continue
			}
			coff := int64(e & (1<<x - 1))
			sectors := int64((e>>x)&(1<<(h.ClusterBits-8)-1)) + 1
			add(regCompressed, coff, sectors*512-coff%512)
		}
	}

	rt := int64(h.RefcountTableOffset)
	add(regRefcountTable, rt, int64(h.RefcountTableClusters)*cs)
	for i := int64(0); i < int64(h.RefcountTableClusters)*cs/8 && rt+8*i+8 <= size; i++ {
		if rb := int64(be.Uint64(b[rt+8*i:]) &^ 511); rb != 0 {
			add(regRefcountBlocks, rb, cs)
		}
	}

	// The snapshot table: entries of 40 bytes, then their extra data, ID
	// and name, each entry padded to 8 bytes (qcow2.txt, "Snapshots").
	so := int64(h.SnapshotsOffset)
	for i := uint32(0); i < h.NbSnapshots && so+40 <= size; i++ {
		idLen, nameLen := int64(be.Uint16(b[so+12:])), int64(be.Uint16(b[so+14:]))
		extra := int64(be.Uint32(b[so+36:]))
		n := (40 + extra + idLen + nameLen + 7) &^ 7
		add(regSnapshots, so, n)
		so += n
	}

	// The bitmap directory, as DecodeHeader found it in the bitmaps
	// extension (zero without one).
	add(regBitmaps, int64(h.BitmapDirectoryOffset), int64(h.BitmapDirectorySize))
	return lay
}

// mutation is one change to a file: data written at off.
type mutation struct {
	region, op string
	off        int64
	data       []byte
}

func (m mutation) String() string {
	return fmt.Sprintf("%s: %s at %#x: % x", m.region, m.op, m.off, m.data)
}

// Header fields by offset and width (qcow2.txt, "Header").
var (
	headerFields64 = []int64{8, 24, 40, 48, 64, 72, 80, 88}
	headerFields32 = []int64{4, 16, 20, 32, 36, 56, 60, 96, 100}
)

// mutate picks a change to region r of the file b, the way the issue's
// fuzzer did: random bytes, or a 64-bit (in the header also 32-bit) value
// chosen to be interesting for an offset field (past the end of the file,
// misaligned, a flag more or less), or one flipped bit.
func mutate(rng *rand.Rand, lay *layout, b []byte, r string) mutation {
	spans := lay.regions[r]
	sp := spans[rng.IntN(len(spans))]
	n := sp.end - sp.start
	m := mutation{region: r}
	choice := rng.IntN(10)
	if r == regHeader && choice < 5 && sp.start == 0 {
		// A header field.
		if choice < 3 {
			m.op, m.off = "u64 field", headerFields64[rng.IntN(len(headerFields64))]
		} else {
			m.op, m.off = "u32 field", headerFields32[rng.IntN(len(headerFields32))]
		}
		if m.off >= n {
			m.off = 0
		}
	}
	switch {
	case m.op == "u32 field":
		old := binary.BigEndian.Uint32(b[m.off:])
		m.data = binary.BigEndian.AppendUint32(nil, interesting32(rng, old))
	case m.op == "u64 field" || choice < 6:
		if m.op == "" {
			m.op = "u64"
			m.off = sp.start + rng.Int64N(max(n/8, 1))*8
			if (r == regL1 || r == regL2) && rng.IntN(2) == 0 {
				// Most entries of a table are unused: half the time,
				// change one in use.
				if used := usedWords(b, sp); len(used) > 0 {
					m.off = used[rng.IntN(len(used))]
				}
			}
		}
		var old uint64
		if m.off+8 <= int64(len(b)) {
			old = binary.BigEndian.Uint64(b[m.off:])
		}
		m.data = binary.BigEndian.AppendUint64(nil, interesting64(rng, old, int64(len(b)), lay.cs))
	case choice < 9:
		m.op = "bytes"
		m.off = sp.start + rng.Int64N(n)
		m.data = make([]byte, 1+rng.IntN(8))
		for i := range m.data {
			m.data[i] = byte(rng.Uint32())
		}
	default:
		m.op = "bit"
		m.off = sp.start + rng.Int64N(n)
		m.data = []byte{b[m.off] ^ 1<<rng.IntN(8)}
	}
	if end := m.off + int64(len(m.data)); end > int64(len(b)) {
		m.data = m.data[:max(int64(len(b))-m.off, 0)]
	}
	return m
}

// usedWords lists the 8-byte words of sp that are not zero.
func usedWords(b []byte, sp span) []int64 {
	var used []int64
	for o := sp.start; o+8 <= sp.end; o += 8 {
		if binary.BigEndian.Uint64(b[o:]) != 0 {
			used = append(used, o)
		}
	}
	return used
}

func interesting32(rng *rand.Rand, old uint32) uint32 {
	switch rng.IntN(8) {
	case 0:
		return 0
	case 1:
		return ^uint32(0)
	case 2:
		return old + 1
	case 3:
		return old - 1
	case 4:
		return uint32(rng.IntN(24))
	case 5:
		return 1 << 31
	case 6:
		return old ^ 1<<rng.IntN(32)
	}
	return rng.Uint32()
}

// interesting64 picks a value for a 64-bit word that held old, in a file
// of size bytes with clusters of cs: mostly old's flags with another
// offset (just past the end of the file, further past it, in the last,
// partly written cluster, misaligned, another cluster of the file).
func interesting64(rng *rand.Rand, old uint64, size, cs int64) uint64 {
	flags := old &^ offMask
	up := uint64(size+cs-1) &^ uint64(cs-1)
	switch rng.IntN(14) {
	case 0:
		return 0
	case 1:
		return ^uint64(0)
	case 2:
		return 1 << 63
	case 3:
		return old ^ 1<<rng.IntN(64)
	case 4:
		return flags | up
	case 5:
		return flags | (up + uint64(cs)*uint64(1+rng.IntN(64)))
	case 6:
		return flags | uint64(size-1)&^uint64(cs-1)
	case 7:
		return old + 512
	case 8:
		return flags | uint64(rng.Int64N(size/cs+1))*uint64(cs)
	case 9:
		return flags | uint64(size)
	case 10:
		return old | 1<<63
	case 11:
		return old &^ (1 << 63)
	case 12:
		return uint64(rng.IntN(1 << 20))
	}
	return rng.Uint64()
}

package layers_test

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/chainfs/chainfs/layers"
)

// FuzzL2 decodes fuzzed L1 and L2 entries in a synthetic image and checks
// every cluster against a model of the cluster-mapping rules written from
// the specification (docs/interop/qcow2.txt, "Cluster mapping" and
// "Extended L2 Entries") and QEMU's checks on them: what Status reports for
// each cluster or subcluster (kind, host offset), which clusters are
// corrupt, and the bytes ReadAt returns. See synthImage for the layout.
// Each image is checked twice: as QEMU reads it (tables and clusters past
// the end of the file read as zero there, reserved bits are ignored), and
// in strict mode, where each of those is an error for its cluster.
func FuzzL2(f *testing.F) {
	for _, s := range handMadeL2Seeds() {
		f.Add(s.flags, s.l1[0], s.l1[1], s.tail, s.l2)
	}
	// The first L2 table of every committed seed image, in an image of
	// the same cluster size and entry width.
	paths, _ := filepath.Glob("testdata/*.qcow2")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		h, err := layers.DecodeHeader(p, bytes.NewReader(b), int64(len(b)))
		if err != nil || h.ClusterBits > 16 || h.L1Size == 0 {
			continue
		}
		l2off := binary.BigEndian.Uint64(b[h.L1TableOffset:]) & 0x00fffffffffffe00
		cs := uint64(h.ClusterSize())
		if l2off == 0 || l2off+cs > uint64(len(b)) {
			continue
		}
		flags := uint8(h.ClusterBits - 9)
		if h.ExtendedL2() {
			flags |= synthExtL2
		}
		if h.Version == 2 {
			flags |= synthV2
		}
		if h.CompressionType == layers.CompressionZstd {
			flags |= synthZstd
		}
		f.Add(flags, uint64(2*cs)|1<<63, uint64(0), uint32(6*cs), b[l2off:l2off+cs])
	}
	f.Fuzz(func(t *testing.T, flags uint8, l1a, l1b uint64, tail uint32, l2 []byte) {
		s := newSynth(flags, [2]uint64{l1a, l1b}, tail, l2)
		file := s.image()
		hf := layers.NewHostFile("fuzz.qcow2", bytes.NewReader(file), int64(len(file)))
		for _, strict := range []bool{false, true} {
			log, _ := testLog()
			l, err := layers.OpenImageWith(hf, layers.FormatQcow2, "", &layers.Options{Strict: strict, Log: log})
			if err != nil {
				t.Fatalf("the synthetic image does not open (strict %v): %v", strict, err)
			}
			m := &l2Model{s: s, file: file, strict: strict}
			checkL2(t, l, m)
		}
	})
}

// Flag bits of FuzzL2's first argument; the low three bits are
// cluster_bits-9.
const (
	synthExtL2 = 1 << 3
	synthV2    = 1 << 4
	synthZstd  = 1 << 5
)

// synth is a synthetic qcow2 image built around fuzzed tables:
//
//	cluster 0       header: no backing file, no snapshots; the refcount
//	                table is cluster 0 itself (QEMU needs one; chainfs reads
//	                it only for the preallocation guess, which this skips)
//	cluster 1       L1 table of two entries (fuzzed)
//	cluster 2       L2 table (fuzzed, zero-padded to a cluster)
//	cluster 3       a compressed stream (zlib or zstd) of compressedPlain
//	clusters 4-6    data: every byte a function of its file offset
//
// cut to fileLen bytes, which may end anywhere from cluster 3 on. The
// virtual size is two L2 tables' span.
type synth struct {
	cbits       uint
	cs          int64
	extL2, v2   bool
	zstd        bool
	l1          [2]uint64
	l2          []byte
	fileLen     int64
	stream      []byte // the compressed stream at cluster 3
	entrySize   int64
	span        int64 // guest bytes per L2 table
	scSize      int64 // subcluster size (cs without extended L2)
	subclusters int   // per cluster: 32 or 1
}

const synthClusters = 7

func newSynth(flags uint8, l1 [2]uint64, tail uint32, l2 []byte) *synth {
	s := &synth{cbits: 9 + uint(flags&7), extL2: flags&synthExtL2 != 0, v2: flags&synthV2 != 0, zstd: flags&synthZstd != 0, l1: l1}
	if s.v2 {
		s.extL2, s.zstd = false, false // version 2 has neither
	}
	if s.extL2 && s.cbits < 14 {
		s.cbits = 14 // extended L2 needs clusters of 16 KiB or more
	}
	s.cs = 1 << s.cbits
	s.entrySize, s.subclusters = 8, 1
	if s.extL2 {
		s.entrySize, s.subclusters = 16, 32
	}
	s.scSize = s.cs / int64(s.subclusters)
	s.span = s.cs * (s.cs / s.entrySize)
	s.l2 = make([]byte, s.cs)
	copy(s.l2, l2)
	s.fileLen = 3*s.cs + int64(tail)%(4*s.cs+1)
	s.stream = compressCluster(compressedPlain(s.cs), s.zstd)
	return s
}

// compressedPlain is the content of the compressed cluster.
func compressedPlain(cs int64) []byte {
	b := make([]byte, cs)
	for i := range b {
		b[i] = byte(i/7) ^ 0x5a
	}
	return b
}

// streams caches compressCluster(compressedPlain(cs), zstd) by cs and zstd:
// compressing 64 KiB on every execution would slow the fuzzer down.
var streams sync.Map // [2]int64{cs, zstd} -> []byte

func compressCluster(b []byte, useZstd bool) []byte {
	key := [2]int64{int64(len(b)), 0}
	if useZstd {
		key[1] = 1
	}
	if s, ok := streams.Load(key); ok {
		return s.([]byte)
	}
	s := compress(b, useZstd)
	streams.Store(key, s)
	return s
}

func compress(b []byte, useZstd bool) []byte {
	var buf bytes.Buffer
	if useZstd {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		defer e.Close()
		return e.EncodeAll(b, nil)
	}
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// fileByte is the byte at offset x of the data clusters.
func fileByte(x int64) byte { return byte(x*131) ^ byte(x>>9) | 1 }

func (s *synth) image() []byte {
	b := make([]byte, synthClusters*s.cs)
	be := binary.BigEndian
	be.PutUint32(b[0:], 0x514649fb)
	if s.v2 {
		be.PutUint32(b[4:], 2)
	} else {
		be.PutUint32(b[4:], 3)
	}
	be.PutUint32(b[20:], uint32(s.cbits))
	be.PutUint64(b[24:], uint64(2*s.span))
	be.PutUint32(b[36:], 2)            // l1_size
	be.PutUint64(b[40:], uint64(s.cs)) // l1_table_offset
	be.PutUint64(b[48:], 0)            // refcount_table_offset
	be.PutUint32(b[56:], 1)            // refcount_table_clusters
	if !s.v2 {
		var incompat uint64
		if s.extL2 {
			incompat |= layers.IncompatExtendedL2
		}
		if s.zstd {
			incompat |= layers.IncompatCompression
			b[104] = layers.CompressionZstd
		}
		be.PutUint64(b[72:], incompat)
		be.PutUint32(b[96:], 4)    // refcount_order
		be.PutUint32(b[100:], 112) // header_length, with the compression type
	}
	be.PutUint64(b[s.cs:], s.l1[0])
	be.PutUint64(b[s.cs+8:], s.l1[1])
	copy(b[2*s.cs:], s.l2)
	copy(b[3*s.cs:], s.stream)
	for x := 4 * s.cs; x < int64(len(b)); x++ {
		b[x] = fileByte(x)
	}
	if s.fileLen < int64(len(b)) {
		b = b[:s.fileLen]
	}
	return b
}

// l2Model is what the specification says about the synthetic image.
type l2Model struct {
	s      *synth
	file   []byte
	strict bool
}

// Reserved bits (qcow2.txt): of L1 entries, 0-8 and 56-62; of standard L2
// entries, 1-8 and 56-61. QEMU ignores them; strict mode does not.
const (
	l1Reserved = 0x7f000000000001ff
	l2Reserved = 0x3f000000000001fe
)

// scWant is the expected status of one subcluster (or cluster).
type scWant struct {
	kind layers.Kind
	host int64 // -1: no host offset
}

// clusterWant is the expected status of one cluster.
type clusterWant struct {
	corrupt string // why the cluster is corrupt; "" if it is not
	// unreadable: the status is fine but a read fails (a compressed
	// stream past the end of the file).
	unreadable string
	compressed bool
	coff, clen int64 // the compressed stream
	sc         []scWant
}

const (
	l1OffsetMask = 0x00fffffffffffe00
	l2OffsetMask = 0x00fffffffffffe00
)

// table returns the L2 table of L1 entry i: nil for an unallocated one, or
// why the entry is corrupt. A table reaching past the end of the file
// reads as zero there, as in QEMU.
func (m *l2Model) table(i int) ([]byte, string) {
	s := m.s
	off := int64(s.l1[i] & l1OffsetMask)
	switch {
	case off%s.cs != 0:
		return nil, "L2 table offset not cluster aligned"
	case m.strict && s.l1[i]&l1Reserved != 0:
		return nil, "reserved bits in the L1 entry"
	case off == 0:
		return nil, ""
	case m.strict && off+s.cs > int64(len(m.file)):
		return nil, "L2 table past the end of the file"
	}
	t := make([]byte, s.cs)
	if off < int64(len(m.file)) {
		copy(t, m.file[off:])
	}
	return t, ""
}

// cluster models L2 entry idx of table.
func (m *l2Model) cluster(table []byte, idx int64) clusterWant {
	s := m.s
	var w clusterWant
	unalloc := func() {
		for range s.subclusters {
			w.sc = append(w.sc, scWant{layers.Unallocated, -1})
		}
	}
	if table == nil {
		unalloc()
		return w
	}
	be := binary.BigEndian
	e := be.Uint64(table[idx*s.entrySize:])
	var bitmap uint64
	if s.extL2 {
		bitmap = be.Uint64(table[idx*s.entrySize+8:])
	}
	fileLen := int64(len(m.file))
	if e&(1<<62) != 0 {
		// Compressed: x = 62 - (cluster_bits - 8) bits of host offset,
		// then the number of additional 512-byte sectors.
		x := 62 - (s.cbits - 8)
		w.compressed = true
		w.coff = int64(e & (1<<x - 1))
		sectors := int64((e>>x)&(1<<(s.cbits-8)-1)) + 1
		w.clen = sectors*512 - w.coff%512
		switch {
		case m.strict && (e&(1<<63) != 0 || bitmap != 0):
			w.corrupt = "COPIED flag or subcluster bitmap on a compressed cluster"
		case m.strict && w.coff >= fileLen:
			w.corrupt = "compressed cluster past the end of the file"
		case w.coff >= fileLen:
			w.unreadable = "compressed cluster past the end of the file"
		}
		for range s.subclusters {
			w.sc = append(w.sc, scWant{layers.Compressed, -1})
		}
		return w
	}
	host := int64(e & l2OffsetMask)
	misaligned := host%s.cs != 0
	reserved := m.strict && e&l2Reserved != 0
	// strictPast: strict mode refuses data that reaches past the end of
	// the file (QEMU reads zeroes there).
	strictPast := func(h int64) bool { return m.strict && h+s.scSize > fileLen }
	if !s.extL2 {
		switch {
		case e&1 != 0 && s.v2:
			w.corrupt = "zero flag in a version 2 image"
		case e&1 != 0 && host == 0:
			w.sc = []scWant{{layers.Zero, -1}}
		case e&1 != 0:
			w.sc = []scWant{{layers.Zero, host}}
		case host == 0:
			w.sc = []scWant{{layers.Unallocated, -1}}
		default:
			w.sc = []scWant{{layers.Data, host}}
			if strictPast(host) {
				w.corrupt = "data cluster past the end of the file"
			}
		}
		if host != 0 && misaligned && w.corrupt == "" {
			w.corrupt = "host offset not cluster aligned"
		}
		if reserved && w.corrupt == "" {
			w.corrupt = "reserved bits in the L2 entry"
		}
		return w
	}
	if reserved {
		w.corrupt = "reserved bits in the L2 entry"
		return w
	}
	alloc, zero := uint32(bitmap), uint32(bitmap>>32)
	if host == 0 {
		if alloc != 0 {
			w.corrupt = "allocated subclusters in an unallocated cluster"
			return w
		}
		for i := range 32 {
			if zero&(1<<i) != 0 {
				w.sc = append(w.sc, scWant{layers.Zero, -1})
			} else {
				w.sc = append(w.sc, scWant{layers.Unallocated, -1})
			}
		}
		return w
	}
	if alloc&zero != 0 {
		w.corrupt = "subcluster both allocated and zero"
		return w
	}
	if misaligned {
		w.corrupt = "host offset not cluster aligned"
		return w
	}
	for i := range 32 {
		h := host + int64(i)*s.scSize
		switch {
		case zero&(1<<i) != 0:
			w.sc = append(w.sc, scWant{layers.Zero, h})
		case alloc&(1<<i) != 0:
			w.sc = append(w.sc, scWant{layers.Data, h})
			if strictPast(h) {
				w.corrupt = "data subcluster past the end of the file"
			}
		default:
			w.sc = append(w.sc, scWant{layers.Unallocated, h})
		}
	}
	return w
}

// expected returns the bytes a read of cluster w returns (not for
// compressed or corrupt clusters).
func (m *l2Model) expected(w clusterWant) []byte {
	s := m.s
	out := make([]byte, 0, s.cs)
	for _, sc := range w.sc {
		b := make([]byte, s.scSize)
		if sc.kind == layers.Data {
			if sc.host < int64(len(m.file)) {
				copy(b, m.file[sc.host:])
			}
		}
		out = append(out, b...)
	}
	return out
}

// maxReadClusters bounds the clusters of each table FuzzL2 reads, to keep
// executions fast with 64 KiB clusters.
const maxReadClusters = 16

func checkL2(t *testing.T, l *layers.Layer, m *l2Model) {
	s := m.s
	entries := s.cs / s.entrySize
	for ti := range 2 {
		table, why := m.table(ti)
		spanStart := int64(ti) * s.span
		whole, err := l.Status(nil, spanStart, s.span)
		if why != "" {
			if err == nil {
				t.Fatalf("L1 entry %d (%#x): %s, but Status succeeds", ti, s.l1[ti], why)
			}
			checkCorrupt(t, err)
			continue
		}
		if err != nil {
			checkCorrupt(t, err)
		} else if cerr := coversExactly(whole, spanStart, s.span); cerr != nil {
			t.Fatalf("Status of L2 table %d: %v", ti, cerr)
		}
		wholeOK := err == nil
		anyCorrupt := false
		for ci := range entries {
			w := m.cluster(table, ci)
			guest := spanStart + ci*s.cs
			if w.corrupt != "" {
				anyCorrupt = true
			}
			// The whole table's extents, where they exist; else this
			// cluster's own.
			exts := whole
			if !wholeOK {
				if ci >= 1024 {
					continue
				}
				exts, err = l.Status(nil, guest, s.cs)
				if w.corrupt != "" {
					if err == nil {
						t.Fatalf("cluster %d of table %d: %s, but Status succeeds: %+v", ci, ti, w.corrupt, exts)
					}
					checkCorrupt(t, err)
					continue
				}
				if err != nil {
					t.Fatalf("cluster %d of table %d (entry %#x): Status: %v; the model says it is fine", ci, ti, entry(table, ci, s), err)
				}
			}
			compareCluster(t, exts, w, guest, s, table, ci)
			if ci < maxReadClusters {
				checkRead(t, l, m, table, w, guest, ci, ti)
			}
		}
		if wholeOK == anyCorrupt {
			t.Fatalf("L2 table %d: Status of the whole table: %v; the model finds a corrupt cluster: %v", ti, err, anyCorrupt)
		}
	}
}

func entry(table []byte, ci int64, s *synth) string {
	if table == nil {
		return "none"
	}
	e := fmt.Sprintf("%#016x", binary.BigEndian.Uint64(table[ci*s.entrySize:]))
	if s.extL2 {
		e += fmt.Sprintf("/%#016x", binary.BigEndian.Uint64(table[ci*s.entrySize+8:]))
	}
	return e
}

// compareCluster checks the extents exts (sorted, covering at least the
// cluster) against the model for the cluster at guest.
func compareCluster(t *testing.T, exts []layers.Extent, w clusterWant, guest int64, s *synth, table []byte, ci int64) {
	t.Helper()
	i := sort.Search(len(exts), func(i int) bool { return exts[i].End() > guest })
	for n, sc := range w.sc {
		at := guest + int64(n)*s.scSize
		for i < len(exts) && exts[i].End() <= at {
			i++
		}
		if i == len(exts) || exts[i].Offset > at {
			t.Fatalf("no extent covers guest offset %#x", at)
		}
		e := exts[i]
		host := int64(-1)
		if e.File != nil && e.Kind != layers.Compressed {
			host = e.HostOffset + (at - e.Offset)
		}
		if e.Kind != sc.kind || host != sc.host {
			t.Fatalf("guest %#x (cluster %d, subcluster %d, entry %s): %v at host %d; the model says %v at host %d",
				at, ci, n, entry(table, ci, s), e.Kind, host, sc.kind, sc.host)
		}
		if w.compressed && (e.HostOffset != w.coff || e.CompressedSize != w.clen) {
			t.Fatalf("compressed cluster at guest %#x: stream at %#x, %d bytes; the model says %#x, %d bytes",
				guest, e.HostOffset, e.CompressedSize, w.coff, w.clen)
		}
	}
}

func checkRead(t *testing.T, l *layers.Layer, m *l2Model, table []byte, w clusterWant, guest, ci int64, ti int) {
	t.Helper()
	s := m.s
	buf := make([]byte, s.cs)
	_, err := l.ReadAt(buf, guest)
	switch {
	case w.corrupt != "":
		if err == nil {
			t.Fatalf("read of cluster %d of table %d succeeds; the model says: %s", ci, ti, w.corrupt)
		}
		checkCorrupt(t, err)
	case w.unreadable != "":
		if err == nil {
			t.Fatalf("read of cluster %d of table %d succeeds; the model says: %s", ci, ti, w.unreadable)
		}
		checkCorrupt(t, err)
	case w.compressed:
		whole := w.coff == 3*s.cs && w.clen >= int64(len(s.stream)) && int64(len(m.file)) >= 3*s.cs+int64(len(s.stream))
		if err != nil {
			if whole {
				t.Fatalf("read of the compressed cluster %d of table %d (the whole stream): %v", ci, ti, err)
			}
			checkCorrupt(t, err)
		} else if whole && !bytes.Equal(buf, compressedPlain(s.cs)) {
			t.Fatalf("compressed cluster %d of table %d reads wrong bytes", ci, ti)
		}
	case err != nil:
		t.Fatalf("read of cluster %d of table %d: %v; the model says it is fine", ci, ti, err)
	default:
		if want := m.expected(w); !bytes.Equal(buf, want) {
			t.Fatalf("cluster %d of table %d (entry %s) reads wrong bytes at %d", ci, ti, entry(table, ci, s), firstDiff(buf, want))
		}
	}
}

// checkCorrupt: the error is a *FormatError wrapping ErrCorrupt that names
// the file.
func checkCorrupt(t *testing.T, err error) {
	t.Helper()
	var fe *layers.FormatError
	if !errors.As(err, &fe) || !errors.Is(err, layers.ErrCorrupt) || fe.File != "fuzz.qcow2" {
		t.Fatalf("error %v (%T) is not a corruption *FormatError naming the file", err, err)
	}
}

type l2Seed struct {
	flags uint8
	l1    [2]uint64
	tail  uint32
	l2    []byte
}

// handMadeL2Seeds are L2 tables with one entry of every kind the
// specification knows, and the broken ones QEMU refuses.
func handMadeL2Seeds() []l2Seed {
	const copied = 1 << 63
	var seeds []l2Seed
	for _, flags := range []uint8{0, 3, synthV2, 7, synthZstd | 2, synthExtL2 | 5, synthExtL2 | synthZstd | 5} {
		s := newSynth(flags, [2]uint64{}, 0, nil)
		cs := uint64(s.cs)
		x := 62 - (s.cbits - 8)
		sectors := (uint64(len(s.stream)) + 511) / 512
		comp := uint64(1)<<62 | (sectors-1)<<x | 3*cs
		var entries [][2]uint64
		if s.extL2 {
			entries = [][2]uint64{
				{copied | 4*cs, 0x00000000_ffffffff},       // all subclusters allocated
				{copied | 5*cs, 0x0000ff00_000000ff},       // data, zero, unallocated
				{0, 0xffff0000_00000000},                   // zero subclusters, no host cluster
				{comp, 0},                                  // compressed
				{copied | 6*cs, 0x00000001_00000001},       // invalid: allocated and zero
				{0, 0x00000000_00000010},                   // invalid: allocated, no host cluster
				{copied | 4*cs + 512, 0x00000000_00000001}, // misaligned
				{copied | 64*cs, 0x00000000_00000001},      // past the end of the file
				{copied | 64*cs, 0xffffffff_00000000},      // zero, host past the end: fine
			}
		} else {
			entries = [][2]uint64{
				{copied | 4*cs},         // data
				{1},                     // plain zero
				{copied | 5*cs | 1},     // allocated zero
				{0},                     // unallocated
				{comp},                  // compressed
				{copied | 6*cs},         // data
				{copied | 4*cs + 512},   // misaligned (with clusters over 512 bytes)
				{copied | 64*cs},        // past the end of the file
				{comp + 1<<x},           // compressed, one more sector
				{uint64(1)<<62 | 64*cs}, // compressed past the end
			}
		}
		l2 := make([]byte, 0, len(entries)*16)
		for _, e := range entries {
			l2 = binary.BigEndian.AppendUint64(l2, e[0])
			if s.extL2 {
				l2 = binary.BigEndian.AppendUint64(l2, e[1])
			}
		}
		seeds = append(seeds,
			l2Seed{flags, [2]uint64{copied | 2*cs, 0}, uint32(4 * cs), l2},
			l2Seed{flags, [2]uint64{copied | 2*cs, copied | 2*cs}, uint32(2*cs + 100), l2},    // truncated data
			l2Seed{flags, [2]uint64{copied | 2*cs + 512, copied | 16*cs}, uint32(4 * cs), l2}, // bad L1 entries
		)
	}
	return seeds
}

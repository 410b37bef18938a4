package layers_test

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// storedStream is b as a raw deflate stream of stored blocks, padded to
// whole sectors: its length depends on len(b) only, so streams of
// different bytes can take the same place, offset and length, in two
// images.
func storedStream(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.NoCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	s := buf.Bytes()
	return append(s, make([]byte, (512-len(s)%512)%512)...)
}

// streamsAt is where sameLayout puts its compressed streams: past the end
// of every image it makes, at the same offsets in each.
const streamsAt = 4 * MiB

// sameLayout makes a 1 MiB zlib image with 64 KiB clusters (on backing,
// if not empty) whose first len(clusters) clusters are compressed, with
// their streams at the same host offsets, of the same lengths, whatever
// the bytes: two images made so differ only in those bytes.
func sameLayout(t *testing.T, dir, name, backing string, clusters [][]byte) string {
	opts := []string{"compression_type=zlib"}
	if backing != "" {
		opts = append(opts, "backing_file="+backing, "backing_fmt=qcow2")
	}
	p := imagetest.Create(t, dir, name, "qcow2", 1*MiB, opts...)
	var cmds []string
	for i := range clusters {
		cmds = append(cmds, fmt.Sprintf("write -c -P %d %d 64k", i+1, i*64*KiB))
	}
	imagetest.QemuIO(t, "qcow2", p, cmds...)
	l2off := l2(t, p, 0)
	host := int64(streamsAt)
	for i, c := range clusters {
		s := storedStream(t, c)
		imagetest.Patch(t, p, host, s)
		e := imagetest.ReadBE64(t, p, l2off+8*int64(i))
		if e&compBit == 0 {
			t.Fatalf("%s: cluster %d is not compressed: %#x", name, i, e)
		}
		imagetest.PatchBE64(t, p, l2off+8*int64(i), compBit|uint64(len(s)/512-1)<<54|uint64(host))
		host += int64(len(s))
	}
	return p
}

// clusterContent is the cluster i of the image named name: text that
// differs from image to image and cluster to cluster.
func clusterContent(name string, i int) []byte {
	line := fmt.Sprintf("%s cluster %d ", name, i)
	return []byte(strings.Repeat(line, 64*KiB/len(line)+1)[:64*KiB])
}

func contents(name string, n int) [][]byte {
	var cs [][]byte
	for i := range n {
		cs = append(cs, clusterContent(name, i))
	}
	return cs
}

// TestClusterCacheKeys: inflated clusters are kept by file, host offset
// and stream length, so that one cache serves every layer of a chain and
// several chains without ever giving one file's cluster for another's.
// The images are made so that their compressed streams lie at the same
// offsets with the same lengths (only the bytes differ): a chain top ->
// base with compressed clusters in both, and a second chain opened with
// the same cache, read in small interleaved pieces (so the clusters are
// kept and found again) and compared with what QEMU reads.
func TestClusterCacheKeys(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	sameLayout(t, dir, "base.qcow2", "", contents("base", 8))
	top := sameLayout(t, dir, "top.qcow2", "base.qcow2", contents("top", 3))
	other := sameLayout(t, dir, "other.qcow2", "", contents("other", 8))

	cache := layers.NewCacheSizes(layers.CacheSizes{Tables: 1 * MiB, Clusters: 4 * MiB, ReadAhead: 1 * MiB})
	c1, err := layers.Open(top, &layers.Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := layers.Open(other, &layers.Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	views := append(append([]*layers.Layer(nil), c1.Layers...), c2.Layers...)

	want := map[*layers.Layer][]byte{}
	for _, l := range views {
		want[l] = imagetest.ConvertRaw(t, l.Path, "qcow2")
		if newer := imagetest.Backports().ConvertRaw(t, l.Path, "qcow2"); !bytes.Equal(newer, want[l]) {
			t.Fatalf("%s: the two QEMUs read it differently", l.Path)
		}
	}
	// The streams really are where sameLayout says, and QEMU reads them.
	if !bytes.Equal(want[c1.Layers[0]][:64*KiB], clusterContent("top", 0)) ||
		!bytes.Equal(want[c1.Layers[0]][3*64*KiB:4*64*KiB], clusterContent("base", 3)) {
		t.Fatal("QEMU does not read the hand-made clusters")
	}

	readInterleaved(t, views, want, 9*64*KiB)
	if s := cache.Stats(); s.ClusterHits == 0 || s.ClusterMisses == 0 || s.ClusterBytes > 4*MiB {
		t.Errorf("cache statistics %+v: want hits and misses, at most 4 MiB kept", s)
	}
}

// readInterleaved reads the views from four goroutines at once, in pieces
// of up to 8 KiB at random in their first span bytes, so that their
// compressed clusters are inflated, kept and found again in between, and
// compares each piece with want.
func readInterleaved(t *testing.T, views []*layers.Layer, want map[*layers.Layer][]byte, span int64) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(7, uint64(g)))
			buf := make([]byte, 8*KiB)
			for range 600 {
				l := views[rng.IntN(len(views))]
				end := min(span, l.Size)
				off := rng.Int64N(end - int64(len(buf)))
				n := 1 + rng.IntN(len(buf))
				if _, err := l.ReadAt(buf[:n], off); err != nil {
					t.Errorf("%s: ReadAt(%d, %#x): %v", l.Path, n, off, err)
					return
				}
				if i := firstDiff(buf[:n], want[l][off:off+int64(n)]); i >= 0 {
					t.Errorf("%s (snapshot %v): ReadAt(%d, %#x) differs from QEMU at %#x", l.Path, l.Snapshot != nil, n, off, off+int64(i))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestClusterCacheSnapshots: the current state and the internal
// snapshots of an image are views of one file; the compressed clusters
// they share are inflated once, and those the writes after a snapshot
// replaced (copied on write, compressed again) are never served for the
// other views. Checked against copies on which QEMU applied each snapshot.
func TestClusterCacheSnapshots(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := imagetest.Create(t, dir, "snap.qcow2", "qcow2", 1*MiB, "compression_type=zlib")
	writes := func(cmds ...string) func() { return func() { imagetest.QemuIO(t, "qcow2", p, cmds...) } }
	steps := []func(){
		writes("write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -c -P 3 128k 64k", "write -c -P 4 192k 64k"),
		func() { imagetest.QemuImg(t, "snapshot", "-c", "first", p) },
		// Compressed writes go to unallocated clusters only: discard first.
		writes("discard 0 128k", "write -c -P 5 0 64k", "write -c -P 6 64k 64k", "write -P 7 128k 64k"),
		func() { imagetest.QemuImg(t, "snapshot", "-c", "second", p) },
		writes("discard 192k 64k", "write -c -P 8 192k 64k", "discard 64k 64k", "write -c -P 9 256k 64k"),
	}
	for _, s := range steps {
		s()
	}
	cache := layers.NewCacheSizes(layers.CacheSizes{Tables: 1 * MiB, Clusters: 4 * MiB, ReadAhead: 1 * MiB})
	c, err := layers.Open(p, &layers.Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := c.Top()
	views := []*layers.Layer{l}
	want := map[*layers.Layer][]byte{l: imagetest.ConvertRaw(t, p, "qcow2")}
	for i, s := range l.Snapshots() {
		v, err := l.SnapshotLayer(i)
		if err != nil {
			t.Fatal(err)
		}
		views = append(views, v)
		for _, q := range imagetest.Oracles(t) {
			b := q.ConvertRaw(t, q.Applied(t, p, s.ID), "qcow2")
			if w, ok := want[v]; ok && !bytes.Equal(w, b) {
				t.Fatalf("snapshot %s: the two QEMUs read it differently", s.Name)
			}
			want[v] = b
		}
	}
	if len(views) != 3 {
		t.Fatalf("%d views, want the current state and two snapshots", len(views))
	}
	readInterleaved(t, views, want, 5*64*KiB)
	if s := cache.Stats(); s.ClusterHits == 0 {
		t.Errorf("cache statistics %+v: no hits", s)
	}
}

// TestClusterCacheReopen: a cache shared by chains that come and go never
// serves the clusters of a closed chain for a new one, even when the image
// changed in between and its new compressed clusters lie where the old
// ones did.
func TestClusterCacheReopen(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	cache := layers.NewCacheSizes(layers.CacheSizes{Tables: 1 * MiB, Clusters: 4 * MiB, ReadAhead: 1 * MiB})
	for round, name := range []string{"before", "after", "again"} {
		p := sameLayout(t, dir, "re.qcow2", "", contents(name, 4))
		c, err := layers.Open(p, &layers.Options{Cache: cache})
		if err != nil {
			t.Fatal(err)
		}
		l := c.Top()
		want := imagetest.ConvertRaw(t, p, "qcow2")
		if !bytes.Equal(want[:64*KiB], clusterContent(name, 0)) {
			t.Fatalf("round %d: QEMU does not read the hand-made cluster", round)
		}
		readInterleaved(t, []*layers.Layer{l}, map[*layers.Layer][]byte{l: want}, 4*64*KiB)
		c.Close()
	}
}

// TestClusterCacheSharedOffset: two L2 entries name the same stream
// offset with different lengths, one of them too short to fill the
// cluster (a hostile image). QEMU reads the one and refuses the other; so
// must chainfs, whichever is read first, though the first one read leaves
// its cluster in the cache.
func TestClusterCacheSharedOffset(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	for _, first := range []int{0, 1} {
		t.Run(fmt.Sprintf("cluster %d first", first), func(t *testing.T) {
			dir := t.TempDir()
			p := sameLayout(t, dir, "shared.qcow2", "", contents("shared", 2))
			l2off := l2(t, p, 0)
			e0 := imagetest.ReadBE64(t, p, l2off)
			// Cluster 1: the stream of cluster 0, one sector short.
			sectors := (e0 >> 54) & 0xff
			imagetest.PatchBE64(t, p, l2off+8, e0&^(0xff<<54)|(sectors-1)<<54)
			for _, q := range imagetest.Oracles(t) {
				for c, ok := range []bool{true, false} {
					_, _, err := q.ImgErr(t, dir, "convert", "-O", "raw", "--image-opts",
						fmt.Sprintf("driver=raw,offset=%d,size=%d,file.driver=qcow2,file.file.filename=%s", c*64*KiB, 64*KiB, p),
						filepath.Join(dir, "out.raw"))
					if (err == nil) != ok {
						t.Fatalf("%s reads cluster %d: %v; the test expects %v", q.Name(t), c, err, ok)
					}
				}
			}
			c, err := layers.Open(p, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			l := c.Top()
			buf := make([]byte, 4*KiB)
			for _, cl := range []int{first, 1 - first, first, 1 - first} {
				_, err := l.ReadAt(buf, int64(cl)*64*KiB+8*KiB)
				if ok := cl == 0; (err == nil) != ok {
					t.Fatalf("read of cluster %d: %v; QEMU reads it: %v", cl, err, ok)
				}
				if err == nil && !bytes.Equal(buf, clusterContent("shared", 0)[8*KiB:12*KiB]) {
					t.Fatalf("read of cluster %d: wrong bytes", cl)
				}
				if err != nil {
					mustIs(t, err, layers.ErrCorrupt)
				}
			}
		})
	}
}

// TestStreamReadAhead reads every layer of a chain of compressed clusters
// sequentially through Streams, the way the kernel reads a view (two
// requests in flight), with read-ahead on, tiny and off, and compares
// with QEMU. Read-ahead crosses from the top into its backing file.
func TestStreamReadAhead(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	sameLayout(t, dir, "base.qcow2", "", contents("base", 12))
	top := sameLayout(t, dir, "top.qcow2", "base.qcow2", contents("top", 3))
	for _, sz := range []struct {
		name  string
		ahead int64
		kept  int64
	}{
		{"default", layers.DefaultReadAheadBytes, 1 * MiB},
		{"one cluster", 64 * KiB, 1 * MiB},
		{"off", 0, 1 * MiB},
		{"no cluster cache", layers.DefaultReadAheadBytes, 0},
		{"no caches", 0, 0},
	} {
		t.Run(sz.name, func(t *testing.T) {
			cache := layers.NewCacheSizes(layers.CacheSizes{Tables: 1 * MiB, Clusters: sz.kept, ReadAhead: sz.ahead})
			c, err := layers.Open(top, &layers.Options{Cache: cache})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, l := range c.Layers {
				want := imagetest.ConvertRaw(t, l.Path, "qcow2")
				for _, req := range []int64{4 * KiB, 128 * KiB, 1 * MiB} {
					s := l.NewStream()
					got := make([]byte, l.Size)
					var wg sync.WaitGroup
					errs := make(chan error, 2)
					for half := range int64(2) {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for off := half * req; off < l.Size; off += 2 * req {
								end := min(off+req, l.Size)
								if _, err := s.ReadAt(got[off:end], off); err != nil && err != io.EOF {
									errs <- err
									return
								}
							}
						}()
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						t.Fatalf("%s, %d-byte reads: %v", l.Path, req, err)
					}
					if i := firstDiff(got, want); i >= 0 {
						t.Fatalf("%s, %d-byte reads: differs from QEMU at %#x", l.Path, req, i)
					}
				}
			}
			st := cache.Stats()
			// Whether read-ahead wins the race to a cluster depends on the
			// scheduler (a reader takes a queued cluster over), so only
			// that it was queued is certain.
			t.Logf("read-ahead budget %d: statistics %+v", sz.ahead, st)
			if sz.ahead == 0 && st.ReadAheadClusters != 0 || sz.ahead > 0 && st.ReadAheadClusters == 0 {
				t.Errorf("read-ahead budget %d: statistics %+v", sz.ahead, st)
			}
			if st.ReadAheadBytes > sz.ahead {
				t.Errorf("read-ahead holds %d bytes, budget %d", st.ReadAheadBytes, sz.ahead)
			}
		})
	}
}

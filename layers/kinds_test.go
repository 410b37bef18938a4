package layers_test

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// want is an expected extent; host -1 means no File, host -2 means File set
// with any HostOffset, else File set and HostOffset == host.
type want struct {
	off, length int64
	kind        layers.Kind
	host        int64
}

func checkStatus(t *testing.T, l *layers.Layer, off, length int64, wants ...want) {
	t.Helper()
	got, err := l.Status(nil, off, length)
	if err != nil {
		t.Fatalf("Status(%#x, %#x): %v", off, length, err)
	}
	if len(got) != len(wants) {
		t.Fatalf("Status(%#x, %#x) = %+v, want %d extents %+v", off, length, got, len(wants), wants)
	}
	for i, w := range wants {
		g := got[i]
		ok := g.Offset == w.off && g.Length == w.length && g.Kind == w.kind
		switch {
		case w.host == -1:
			ok = ok && g.File == nil
		case w.host == -2:
			ok = ok && g.File != nil
		default:
			ok = ok && g.File != nil && g.HostOffset == w.host
		}
		if !ok {
			t.Errorf("Status(%#x, %#x) extent %d = %+v (file %v), want %+v", off, length, i, g, g.File != nil, w)
		}
	}
}

func openTop(t *testing.T, path string) *layers.Chain {
	t.Helper()
	log, _ := testLog()
	c, err := layers.Open(path, &layers.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// hostOf returns the host offset QEMU's map gives for guest offset off of
// a qcow2 image (the layer itself must hold it).
func hostOf(t *testing.T, path string, off int64) int64 {
	t.Helper()
	for _, e := range imagetest.QemuMap(t, path, "qcow2") {
		if e.Start <= off && off < e.Start+e.Length {
			if e.Offset == nil || e.Depth != 0 {
				t.Fatalf("qemu-img map gives no host offset in the image for %#x: %+v", off, e)
			}
			return *e.Offset + off - e.Start
		}
	}
	t.Fatalf("qemu-img map does not cover %#x", off)
	return 0
}

func TestStatusKinds(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	t.Parallel()

	t.Run("extended L2 subclusters", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 1*MiB)
		imagetest.QemuIO(t, "qcow2", base, "write -P 1 0 1M")
		p := imagetest.Create(t, dir, "ext.qcow2", "qcow2", 0, "extended_l2=on", "backing_file=base.qcow2", "backing_fmt=qcow2")
		imagetest.QemuIO(t, "qcow2", p, "write -P 2 0 2k", "write -z 64k 2k", "write -P 3 128k 64k", "write -z 130k 2k")
		l := openTop(t, p).Top()
		h0, h2 := hostOf(t, p, 0), hostOf(t, p, 128*KiB)
		// An unallocated subcluster of an allocated cluster keeps a host
		// offset (QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC).
		checkStatus(t, l, 0, 64*KiB,
			want{0, 2 * KiB, layers.Data, h0},
			want{2 * KiB, 62 * KiB, layers.Unallocated, h0 + 2*KiB})
		// A zero subcluster of an unallocated cluster has none.
		checkStatus(t, l, 64*KiB, 64*KiB,
			want{64 * KiB, 2 * KiB, layers.Zero, -1},
			want{66 * KiB, 62 * KiB, layers.Unallocated, -1})
		// A zero subcluster of an allocated cluster keeps its host offset.
		checkStatus(t, l, 128*KiB, 64*KiB,
			want{128 * KiB, 2 * KiB, layers.Data, h2},
			want{130 * KiB, 2 * KiB, layers.Zero, h2 + 2*KiB},
			want{132 * KiB, 60 * KiB, layers.Data, h2 + 4*KiB})
		// An unaligned query clips the first and last subclusters.
		checkStatus(t, l, 1000, 1100,
			want{1000, 1048, layers.Data, h0 + 1000},
			want{2048, 52, layers.Unallocated, h0 + 2048})
	})

	t.Run("zero, allocated zero and compressed clusters", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB)
		imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 128k", "write -z 0 64k", "write -z 128k 64k", "write -c -P 2 256k 128k")
		h0 := hostOf(t, p, 0)
		l := openTop(t, p).Top()
		checkStatus(t, l, 0, 256*KiB,
			want{0, 64 * KiB, layers.Zero, h0}, // QCOW2_SUBCLUSTER_ZERO_ALLOC
			want{64 * KiB, 64 * KiB, layers.Data, h0 + 64*KiB},
			want{128 * KiB, 64 * KiB, layers.Zero, -1}, // plain zero
			want{192 * KiB, 64 * KiB, layers.Unallocated, -1})
		got, err := l.Status(nil, 256*KiB+100, 128*KiB)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 {
			t.Fatalf("compressed clusters: %+v, want one extent per cluster and an unallocated tail", got)
		}
		for i, e := range got[:2] {
			if e.Kind != layers.Compressed || e.File == nil || e.HasHostOffset() || e.CompressedSize <= 0 || e.CompressedSize > 64*KiB+512 {
				t.Errorf("compressed extent %d: %+v", i, e)
			}
		}
		if got[0].Offset != 256*KiB+100 || got[0].End() != 320*KiB || got[1].Offset != 320*KiB || got[1].End() != 384*KiB {
			t.Errorf("compressed extents not one per cluster: %+v", got)
		}
		if got[0].HostOffset == got[1].HostOffset {
			t.Errorf("two compressed clusters share a stream: %+v", got)
		}
		if got[2].Kind != layers.Unallocated || got[2].End() != 384*KiB+100 {
			t.Errorf("tail: %+v", got[2])
		}
	})

	// QEMU guesses preallocation=metadata when more clusters have a
	// refcount than the file occupies; it then reports data clusters on
	// host holes as zero. Punch a hole under the data cluster at guest 0
	// and see whether qemu-img map calls it zero.
	for _, c := range []struct {
		name string
		opts []string
		cmds []string
	}{
		{"small sparse image", nil, []string{"write -P 1 0 64k"}},
		{"image full of data", []string{"cluster_size=4096"}, []string{"write -P 1 0 4M"}},
		{"preallocation=metadata", []string{"preallocation=metadata"}, []string{"write -P 1 0 64k"}},
	} {
		t.Run("metadata preallocation guess: "+c.name, func(t *testing.T) {
			t.Parallel()
			p := imagetest.Create(t, t.TempDir(), "pm.qcow2", "qcow2", 4*MiB, c.opts...)
			imagetest.QemuIO(t, "qcow2", p, c.cmds...)
			h0 := hostOf(t, p, 0)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			cs := openTop(t, p).Top().ClusterSize
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, h0, cs); err != nil {
				t.Fatal(err)
			}
			f.Close()
			m := imagetest.QemuMap(t, p, "qcow2")
			qemuSays := m[0].Start == 0 && m[0].Zero
			pre, err := openTop(t, p).Top().MetadataPreallocated()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("MetadataPreallocated = %v, QEMU zero = %v", pre, qemuSays)
			if pre != qemuSays {
				t.Errorf("MetadataPreallocated = %v; QEMU's map of a data cluster on a host hole: %+v", pre, m[0])
			}
		})
	}

	t.Run("raw holes are zero with a host offset", func(t *testing.T) {
		t.Parallel()
		p := filepath.Join(t.TempDir(), "sparse.raw")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(pattern(4096, 1), 0)
		f.WriteAt(pattern(4096, 2), 512*KiB)
		f.Truncate(1*MiB + 100)
		f.Close()
		c := openTop(t, p)
		l := c.Top()
		if l.Format != layers.FormatRaw || l.Size != 1*MiB+512 {
			t.Fatalf("raw layer %s size %d", l.Format, l.Size)
		}
		checkStatus(t, l, 0, l.Size,
			want{0, 4 * KiB, layers.Data, 0},
			want{4 * KiB, 508 * KiB, layers.Zero, 4 * KiB},
			want{512 * KiB, 4 * KiB, layers.Data, 512 * KiB},
			want{516 * KiB, 508*KiB + 512, layers.Zero, 516 * KiB})
	})
}

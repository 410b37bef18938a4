package status_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

const (
	K = 1 << 10
	M = 1 << 20
)

// chainCase builds a chain in dir and returns the path of its top image.
// compressed lists, for the top image, the guest ranges written compressed:
// QEMU 7.2 does not print the "compressed" key, so it is checked on its own.
type chainCase struct {
	name       string
	build      func(t *testing.T, dir string) string
	compressed [][2]int64
}

func qcow2(t *testing.T, dir, name string, size int64, opts ...string) string {
	return imagetest.Create(t, dir, name, "qcow2", size, opts...)
}

func raw(t *testing.T, dir, name string, size int64) string {
	return imagetest.Create(t, dir, name, "raw", size)
}

func qio(t *testing.T, path, format string, cmds ...string) {
	imagetest.QemuIO(t, format, path, cmds...)
}

// seedChain builds the chain of the zeroed-cluster thread: base "ABC-",
// top "-D0-" with 64 KiB clusters.
func seedChain(t *testing.T, dir, baseFmt string) string {
	var base string
	if baseFmt == "raw" {
		base = raw(t, dir, "base.raw", 256*K)
	} else {
		base = qcow2(t, dir, "base.qcow2", 256*K)
	}
	qio(t, base, baseFmt, "write -P 0x41 0 64k", "write -P 0x42 64k 64k", "write -P 0x43 128k 64k")
	top := qcow2(t, dir, "top.qcow2", 256*K, "backing_file="+filepath.Base(base), "backing_fmt="+baseFmt)
	qio(t, top, "qcow2", "write -P 0x44 64k 64k", "write -z 128k 64k")
	return top
}

var cases = []chainCase{
	{name: "seed chain top -D0- over raw base ABC-", build: func(t *testing.T, dir string) string {
		return seedChain(t, dir, "raw")
	}},
	{name: "seed chain top -D0- over qcow2 base ABC-", build: func(t *testing.T, dir string) string {
		return seedChain(t, dir, "qcow2")
	}},
	{name: "seed top opened alone", build: func(t *testing.T, dir string) string {
		top := seedChain(t, dir, "qcow2")
		imagetest.QemuImg(t, "rebase", "-u", "-f", "qcow2", "-b", "", top)
		return top
	}},
	{name: "iotest 154: sub-cluster writes and write-zeroes over a backing file", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 4*M, "cluster_size=4096")
		qio(t, base, "qcow2", "write -P 0x11 32k 1k", "write -P 0x22 40k 4k", "write -P 0x33 1M 8k")
		top := qcow2(t, dir, "top.qcow2", 4*M, "cluster_size=4096", "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2",
			"write -z 0 4k", "write -z 8k 1k", "write -z 17k 2k",
			"write -P 0x55 34k 1k", "write -z 33k 1k", "write -z 41k 1k",
			"write -z 1M 2k", "write -P 0x66 1030k 1k", "write -z 2M 12k")
		return top
	}},
	{name: "compressed zlib and zstd layers over data", build: func(t *testing.T, dir string) string {
		base := raw(t, dir, "base.raw", 4*M)
		qio(t, base, "raw", "write -P 0x10 0 4M")
		mid := qcow2(t, dir, "mid.qcow2", 4*M, "compression_type=zstd", "backing_file=base.raw", "backing_fmt=raw")
		qio(t, mid, "qcow2", "write -c -P 0x21 0 64k", "write -c -P 0x22 1M 128k", "write -z 2M 64k")
		top := qcow2(t, dir, "top.qcow2", 4*M, "backing_file=mid.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -c -P 0x31 64k 64k", "write -c -P 0x32 128k 64k", "write -P 0x33 3M 64k")
		return top
	}, compressed: [][2]int64{{64 * K, 128 * K}}},
	{name: "qemu-img convert -c with zstd", build: func(t *testing.T, dir string) string {
		src := raw(t, dir, "src.raw", 2*M)
		qio(t, src, "raw", "write -P 0x5a 0 512k", "write -P 0x5b 1M 64k")
		out := filepath.Join(dir, "conv.qcow2")
		imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", src, out)
		return out
	}, compressed: [][2]int64{{0, 512 * K}, {1 * M, 64 * K}}},
	{name: "extended L2 over a backing file", build: func(t *testing.T, dir string) string {
		base := raw(t, dir, "base.raw", 2*M)
		qio(t, base, "raw", "write -P 0x77 0 2M")
		top := qcow2(t, dir, "top.qcow2", 2*M, "extended_l2=on", "cluster_size=64k", "backing_file=base.raw", "backing_fmt=raw")
		qio(t, top, "qcow2", "write -P 1 0 2k", "write -P 2 6k 4k", "write -z 64k 4k", "write -z 128k 64k",
			"write -P 3 256k 64k", "discard 256k 2k", "write -z -u 512k 64k", "write -P 4 1054k 10k")
		return top
	}},
	{name: "extended L2 without a backing file", build: func(t *testing.T, dir string) string {
		top := qcow2(t, dir, "top.qcow2", 1*M, "extended_l2=on", "cluster_size=32k")
		qio(t, top, "qcow2", "write -P 1 0 1k", "write -P 2 5k 1k", "write -z 40k 2k", "write -z 96k 32k")
		return top
	}},
	{name: "external data file", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 2*M)
		qio(t, base, "qcow2", "write -P 0x61 0 1M")
		top := qcow2(t, dir, "top.qcow2", 2*M, "data_file="+filepath.Join(dir, "top.data"), "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -P 0x62 64k 64k", "write -z 256k 64k", "write -P 0x63 1M 128k")
		return top
	}},
	{name: "external data file with data_file_raw", build: func(t *testing.T, dir string) string {
		top := qcow2(t, dir, "top.qcow2", 2*M, "data_file="+filepath.Join(dir, "top.data"), "data_file_raw=on")
		qio(t, top, "qcow2", "write -P 0x62 64k 64k", "write -z 256k 64k", "write -P 0x63 1M 128k")
		return top
	}},
	{name: "preallocation=metadata", build: func(t *testing.T, dir string) string {
		top := qcow2(t, dir, "top.qcow2", 8*M, "preallocation=metadata")
		qio(t, top, "qcow2", "write -P 0x1 0 64k", "write -P 0x2 3M 192k", "write -z 5M 64k")
		return top
	}},
	{name: "preallocation=metadata over a backing file", build: func(t *testing.T, dir string) string {
		base := raw(t, dir, "base.raw", 4*M)
		qio(t, base, "raw", "write -P 0x9 0 4M")
		top := qcow2(t, dir, "top.qcow2", 4*M, "preallocation=metadata", "extended_l2=on", "backing_file=base.raw", "backing_fmt=raw")
		qio(t, top, "qcow2", "write -P 0x1 1M 64k")
		return top
	}},
	{name: "preallocation=falloc", build: func(t *testing.T, dir string) string {
		top := qcow2(t, dir, "top.qcow2", 4*M, "preallocation=falloc")
		qio(t, top, "qcow2", "write -P 0x1 64k 64k")
		return top
	}},
	{name: "preallocation=full", build: func(t *testing.T, dir string) string {
		top := qcow2(t, dir, "top.qcow2", 4*M, "preallocation=full")
		qio(t, top, "qcow2", "write -P 0x1 64k 64k", "write -z 1M 64k")
		return top
	}},
	{name: "backing shorter than the top", build: func(t *testing.T, dir string) string {
		base := raw(t, dir, "base.raw", 1*M)
		qio(t, base, "raw", "write -P 0x1 0 1M")
		top := qcow2(t, dir, "top.qcow2", 3*M, "backing_file=base.raw", "backing_fmt=raw")
		qio(t, top, "qcow2", "write -P 0x2 512k 64k", "write -P 0x3 2M 64k")
		return top
	}},
	{name: "short middle layer hides the base past its end", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 4*M)
		qio(t, base, "qcow2", "write -P 0x1 0 4M")
		qcow2(t, dir, "mid.qcow2", 1*M, "backing_file=base.qcow2", "backing_fmt=qcow2")
		top := qcow2(t, dir, "top.qcow2", 4*M, "backing_file=mid.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -P 0x3 3M 64k")
		return top
	}},
	{name: "backing longer than the top", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 4*M)
		qio(t, base, "qcow2", "write -P 0x1 0 4M")
		top := qcow2(t, dir, "top.qcow2", 1*M+512, "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -P 0x2 64k 64k")
		return top
	}},
	{name: "sparse raw base of unaligned length", build: func(t *testing.T, dir string) string {
		base := filepath.Join(dir, "base.raw")
		if err := os.WriteFile(base, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(base, 3*M+1000); err != nil {
			t.Fatal(err)
		}
		qio(t, base, "raw", "write -P 0x1 1M 128k", "write -P 0x2 3M 1000")
		top := qcow2(t, dir, "top.qcow2", 4*M, "backing_file=base.raw", "backing_fmt=raw", "cluster_size=512")
		qio(t, top, "qcow2", "write -P 0x3 1048576 1k", "write -z 3M 512")
		return top
	}},
	{name: "version 2 image with 2 MiB clusters", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 8*M, "compat=0.10", "cluster_size=2M")
		qio(t, base, "qcow2", "write -P 0x1 0 3M")
		top := qcow2(t, dir, "top.qcow2", 8*M, "compat=0.10", "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -z 64k 64k", "write -P 2 5M 64k")
		return top
	}},
	{name: "L1 table read through the cache: 4 KiB clusters, 64 GiB", build: func(t *testing.T, dir string) string {
		base := qcow2(t, dir, "base.qcow2", 64<<30, "cluster_size=4096")
		qio(t, base, "qcow2", "write -P 1 0 64k", "write -P 2 40G 8k", "write -z 63G 4k")
		top := qcow2(t, dir, "top.qcow2", 64<<30, "cluster_size=4096", "backing_file=base.qcow2", "backing_fmt=qcow2")
		qio(t, top, "qcow2", "write -P 3 4k 4k", "write -z 40G 4k", "write -c -P 4 2G 4k", "write -P 5 68719472640 4k")
		return top
	}, compressed: [][2]int64{{2 << 30, 4 * K}}},
	{name: "22-layer chain", build: func(t *testing.T, dir string) string {
		prev := raw(t, dir, "l00.raw", 2*M)
		qio(t, prev, "raw", "write -P 0x1 0 64k")
		fmt0 := "raw"
		for i := 1; i < 22; i++ {
			name := fmt.Sprintf("l%02d.qcow2", i)
			p := qcow2(t, dir, name, 2*M, "backing_file="+filepath.Base(prev), "backing_fmt="+fmt0)
			cmd := fmt.Sprintf("write -P %d %dk 64k", i, 64*i)
			if i%5 == 0 {
				cmd = fmt.Sprintf("write -z %dk 64k", 64*(i-3))
			}
			qio(t, p, "qcow2", cmd)
			prev, fmt0 = p, "qcow2"
		}
		return prev
	}},
}

// TestAgainstQEMU checks every layer of every chain against both QEMUs:
// the map equals `qemu-img map --output=json` (with the "compressed" key
// where that QEMU prints it) and the depth equals nbdinfo's
// qemu:allocation-depth map over `qemu-nbd -A`, byte for byte.
func TestAgainstQEMU(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
	oracles := imagetest.Oracles(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			top := tc.build(t, dir)
			chain, err := layers.Open(top, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer chain.Close()
			for _, l := range chain.Layers {
				var m, d, dj bytes.Buffer
				if err := status.WriteMapJSON(&m, l); err != nil {
					t.Fatalf("layer %d (%s): map: %v", l.Index, l.Path, err)
				}
				if err := status.WriteDepth(&d, l); err != nil {
					t.Fatalf("layer %d: depth: %v", l.Index, err)
				}
				if l.Index == 0 {
					if err := status.WriteDepthJSON(&dj, l); err != nil {
						t.Fatal(err)
					}
				}
				for _, q := range oracles {
					if got, want := q.AsPrinted(t, m.String()), q.MapJSON(t, l.Path, l.Format.String()); got != want {
						t.Errorf("layer %d (%s): map differs from %s's qemu-img map\nours:\n%s\nqemu-img:\n%s", l.Index, l.Path, q.Name(t), got, want)
					}
					if want := q.NBDDepth(t, l.Path, l.Format.String(), false); d.String() != want {
						t.Errorf("layer %d (%s): depth differs from nbdinfo over %s's qemu-nbd\nours:\n%s\nnbdinfo:\n%s", l.Index, l.Path, q.Name(t), d.String(), want)
					}
					if l.Index == 0 {
						if want := q.NBDDepth(t, l.Path, l.Format.String(), true); dj.String() != want {
							t.Errorf("layer 0: depth JSON differs from nbdinfo --json over %s's qemu-nbd\nours:\n%s\nnbdinfo:\n%s", q.Name(t), dj.String(), want)
						}
					}
				}
			}
			checkCompressed(t, chain.Top(), tc.compressed)
		})
	}
}

// checkCompressed asserts that the depth-0 entries marked compressed are
// exactly the ranges the test wrote compressed.
func checkCompressed(t *testing.T, l *layers.Layer, want [][2]int64) {
	var got [][2]int64
	err := status.Map(l, 0, l.Size, func(e status.Entry) error {
		if e.Compressed && e.Depth == 0 {
			if !e.Data || e.HasOffset {
				t.Errorf("compressed entry %+v: want data and no offset", e)
			}
			if n := len(got); n > 0 && got[n-1][0]+got[n-1][1] == e.Start {
				got[n-1][1] += e.Length
			} else {
				got = append(got, [2]int64{e.Start, e.Length})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
		t.Errorf("compressed ranges at depth 0: got %v, want %v", got, want)
	}
}

// TestSeek checks SeekData/SeekHole against the data ranges of qemu-img map.
func TestSeek(t *testing.T) {
	dir := t.TempDir()
	top := cases[0].build(t, dir)
	chain, err := layers.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	for _, l := range chain.Layers {
		entries := imagetest.QemuMap(t, l.Path, l.Format.String())
		isData := func(off int64) bool {
			for _, e := range entries {
				if off >= e.Start && off < e.Start+e.Length {
					return e.Data
				}
			}
			return false
		}
		for off := int64(0); off < l.Size; off += 16 * K {
			d, ok, err := status.SeekData(l, off)
			if err != nil {
				t.Fatal(err)
			}
			if ok && (!isData(d) || (d > off && isData(d-1) && d-1 >= off)) {
				t.Errorf("layer %d: SeekData(%d) = %d: not the first data", l.Index, off, d)
			}
			h, err := status.SeekHole(l, off)
			if err != nil {
				t.Fatal(err)
			}
			if h < l.Size && isData(h) {
				t.Errorf("layer %d: SeekHole(%d) = %d is data", l.Index, off, h)
			}
			for x := off; x < h; x += 4 * K {
				if !isData(x) {
					t.Errorf("layer %d: SeekHole(%d) = %d skips the hole at %d", l.Index, off, h, x)
					break
				}
			}
		}
	}
}

func TestDepthDescription(t *testing.T) {
	for d, want := range map[int]string{0: "absent", 1: "local", 2: "backing depth 2", 21: "backing depth 21"} {
		if got := status.DepthDescription(d); got != want {
			t.Errorf("DepthDescription(%d) = %q, want %q", d, got, want)
		}
	}
}

package layers_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// qio runs qemu-io commands on a qcow2 image as a later step.
func qio(cmds ...string) func(t *testing.T, path string) {
	return func(t *testing.T, path string) { imagetest.QemuIO(t, "qcow2", path, cmds...) }
}

// snapshot takes an internal snapshot.
func snapshot(name string) func(t *testing.T, path string) {
	return func(t *testing.T, path string) { imagetest.QemuImg(t, "snapshot", "-c", name, path) }
}

// bitmap runs `qemu-img bitmap ARGS path name`.
func bitmap(name string, args ...string) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		imagetest.QemuImg(t, append(append([]string{"bitmap", "-f", "qcow2"}, args...), path, name)...)
	}
}

// mixed is 1 MiB of content that compresses in places and not in others:
// text-like runs, random runs, zero runs.
func mixed() []byte {
	b := make([]byte, 1*MiB)
	for off := 0; off < len(b); off += 24 * KiB {
		switch (off / (24 * KiB)) % 3 {
		case 0:
			copy(b[off:], bytes.Repeat([]byte(fmt.Sprintf("chainfs %08x ", off)), 24*KiB/17+1)[:min(24*KiB, len(b)-off)])
		case 1:
			copy(b[off:], pattern(min(24*KiB, len(b)-off), byte(off>>10)))
		}
	}
	return b
}

// qcow2Bytes returns the bytes of a small qcow2 image with data in it.
func qcow2Bytes(t *testing.T) []byte {
	dir := t.TempDir()
	p := imagetest.Create(t, dir, "inner.qcow2", "qcow2", 1*MiB)
	imagetest.QemuIO(t, "qcow2", p, "write -P 0x5a 0 64k")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type chainRow struct {
	name  string
	chain []img    // bottom first; the last image is opened
	warn  []string // each must appear in a logged warning; nil: no warnings
}

func chainRows() []chainRow {
	full := func(name string, size int64, p byte, opts ...string) img {
		return qcow2(name, size, opts...).io(fmt.Sprintf("write -P %#x 0 %d", p, size))
	}
	var deep []img
	deep = append(deep, full("l00.qcow2", 256*KiB, 0xd0, "cluster_size=4096"))
	for k := 1; k < 22; k++ {
		i := qcow2(fmt.Sprintf("l%02d.qcow2", k), 0, "cluster_size=4096").on(fmt.Sprintf("l%02d.qcow2", k-1), "qcow2").
			io(fmt.Sprintf("write -P %#x %d 5000", k, k*11*KiB+k))
		switch k % 4 {
		case 1:
			i = i.io(fmt.Sprintf("write -z %d 4k", (k*37%60)*4*KiB))
		case 2:
			i = i.io(fmt.Sprintf("discard %d 8k", (k*53%60)*4*KiB))
		case 3:
			i = i.io(fmt.Sprintf("write -c -P %#x %d 4k", 0x80+k, (k*29%60)*4*KiB))
		}
		deep = append(deep, i)
	}

	return []chainRow{
		{name: "v2 compat=0.10, 64 KiB clusters, data, zero writes and discards", chain: []img{
			qcow2("v2.qcow2", 1*MiB, "compat=0.10").io(
				"write -P 0x11 0 100k", "write -P 0x12 300k 1k", "write -z 512k 64k", "write -P 0x13 900k 124k", "discard 960k 64k"),
		}},
		{name: "v3, 512 B clusters, writes across eight L2 tables", chain: []img{
			qcow2("c512.qcow2", 256*KiB, "cluster_size=512").io(
				"write -P 1 0 1k", "write -P 2 31k 3k", "write -P 3 100000 5000", "write -z 200k 2k", "write -P 4 255k 1k"),
		}},
		{name: "v2, 512 B clusters on a v2 64 KiB backing", chain: []img{
			full("base.qcow2", 300*KiB, 0x21, "compat=0.10"),
			qcow2("top.qcow2", 0, "compat=0.10", "cluster_size=512").on("base.qcow2", "qcow2").io(
				"write -P 0x22 1000 3000", "write -P 0x23 32767 2", "write -z 64k 1k", "discard 100k 4k"),
		}},
		{name: "v3, 4 KiB clusters, unaligned writes across a 2 MiB L2 span", chain: []img{
			qcow2("c4k.qcow2", 5*MiB, "cluster_size=4096").io(
				"write -P 5 1000 10000", "write -P 6 2093056 8192", "write -P 7 4194303 3", "write -z 3M 8k"),
		}},
		{name: "v3, 2 MiB clusters, small virtual size", chain: []img{
			full("base.qcow2", 6*MiB, 0x31, "cluster_size=2097152"),
			qcow2("c2m.qcow2", 0, "cluster_size=2097152").on("base.qcow2", "qcow2").io(
				"write -P 8 1M 2M", "write -z 4M 2M", "write -P 9 5M 4k"),
		}},
		{name: "v3 zero clusters, plain and allocated, over a backing", chain: []img{
			full("base.qcow2", 1*MiB, 0x41),
			qcow2("top.qcow2", 0).on("base.qcow2", "qcow2").io(
				"write -P 1 0 192k", "write -z 0 64k", "write -z -u 64k 64k", "write -z 512k 64k",
				"write -c -P 3 768k 64k", "discard 128k 64k", "write -z 700k 1k"),
		}},
		{name: "v2 and v3 discards over a backing", chain: []img{
			full("base.qcow2", 1*MiB, 0x42, "compat=0.10"),
			qcow2("mid.qcow2", 0, "compat=0.10").on("base.qcow2", "qcow2").io("write -P 2 0 512k", "discard 64k 128k"),
			qcow2("top.qcow2", 0).on("mid.qcow2", "qcow2").io("write -P 3 256k 512k", "discard 320k 64k", "discard 0 64k"),
		}},
		{name: "extended L2, 64 KiB clusters: subcluster data, zero and discard", chain: []img{
			full("base.qcow2", 1*MiB, 0xaa),
			qcow2("ext.qcow2", 0, "extended_l2=on").on("base.qcow2", "qcow2").io(
				"write -P 1 0 2k", "write -P 2 70k 1k", "write -z 128k 2k", "write -P 3 192k 64k",
				"write -z 194k 4k", "write -z -u 200k 2k", "discard 204k 2k", "write -P 4 1000000 48576"),
		}},
		{name: "extended L2, 16 KiB clusters (512 B subclusters) on a raw backing", chain: []img{
			rawBytes("base.raw", func() []byte { return pattern(512*KiB, 7) }),
			qcow2("ext.qcow2", 0, "extended_l2=on", "cluster_size=16384").on("base.raw", "raw").io(
				"write -P 1 513 100", "write -z 16k 512", "write -P 2 33k 17k", "write -z 40k 1k", "discard 100k 32k"),
		}},
		{name: "extended L2, 2 MiB clusters (64 KiB subclusters)", chain: []img{
			full("base.qcow2", 4*MiB, 0x51),
			qcow2("ext.qcow2", 0, "extended_l2=on", "cluster_size=2097152").on("base.qcow2", "qcow2").io(
				"write -P 1 0 64k", "write -P 2 100k 10k", "write -z 2M 128k", "write -P 3 3M 1M", "write -z -u 3200k 64k"),
		}},
		{name: "compressed zlib clusters written by qemu-io, then partly overwritten", chain: []img{
			full("base.qcow2", 1*MiB, 0x61),
			qcow2("z.qcow2", 0).on("base.qcow2", "qcow2").io(
				"write -c -P 4 0 64k", "write -c -P 5 128k 128k", "write -P 6 130k 1k", "write -c -P 7 960k 64k"),
		}},
		{name: "compressed zlib by qemu-img convert -c, 64 KiB clusters", chain: []img{
			converted("z.qcow2", rawBytes("src.raw", mixed), "-c"),
		}},
		{name: "compressed zlib by qemu-img convert -c, 512 B clusters", chain: []img{
			converted("z.qcow2", rawBytes("src.raw", mixed), "-c", "-o", "cluster_size=512"),
		}},
		{name: "compressed zlib by qemu-img convert -c, 2 MiB clusters", chain: []img{
			converted("z.qcow2", rawBytes("src.raw", func() []byte { return slices.Concat(mixed(), mixed(), mixed()[:100*KiB]) }),
				"-c", "-o", "cluster_size=2097152"),
		}},
		{name: "compressed zstd clusters written by qemu-io", chain: []img{
			full("base.qcow2", 1*MiB, 0x71),
			qcow2("zs.qcow2", 0, "compression_type=zstd", "cluster_size=4096").on("base.qcow2", "qcow2").io(
				"write -c -P 4 0 4k", "write -c -P 5 8k 16k", "write -P 6 9k 1k", "write -c -P 7 1020k 4k"),
		}},
		{name: "compressed zstd by qemu-img convert -c", chain: []img{
			converted("zs.qcow2", rawBytes("src.raw", mixed), "-c", "-o", "compression_type=zstd"),
		}},
		{name: "compressed zstd by qemu-img convert -c, extended L2, 32 KiB clusters", chain: []img{
			converted("zs.qcow2", rawBytes("src.raw", mixed), "-c", "-o", "compression_type=zstd,extended_l2=on,cluster_size=32768"),
		}},
		{name: "external data file", chain: []img{
			full("base.qcow2", 1*MiB, 0x81),
			qcow2("d.qcow2", 0, "data_file=d.data").on("base.qcow2", "qcow2").io(
				"write -P 1 0 100k", "write -z 192k 64k", "write -P 2 300k 64k", "write -z 300k 4k", "discard 320k 64k"),
		}},
		{name: "external data file, data_file_raw=on", chain: []img{
			qcow2("d.qcow2", 1*MiB, "data_file=d.data", "data_file_raw=on").io(
				"write -P 1 0 100k", "write -z 192k 64k", "write -P 2 300k 64k", "write -z 300k 4k"),
		}},
		{name: "external data file with extended L2", chain: []img{
			full("base.qcow2", 1*MiB, 0x82),
			qcow2("d.qcow2", 0, "data_file=d.data", "extended_l2=on").on("base.qcow2", "qcow2").io(
				"write -P 1 0 2k", "write -z 64k 4k", "write -P 2 130k 3k"),
		}},
		{name: "raw backing of 1000000 bytes (-F raw), qcow2 reaching past it", chain: []img{
			rawBytes("base.raw", func() []byte { return pattern(1000000, 9) }),
			qcow2("top.qcow2", 0, "cluster_size=4096").on("base.raw", "raw").io(
				"write -P 1 990000 10448", "write -P 2 0 1"),
		}},
		{name: "raw backing holding a qcow2 image's bytes, read as raw", chain: []img{
			{name: "base.raw", format: "raw", build: func(t *testing.T, dir, path string) {
				if err := os.WriteFile(path, qcow2Bytes(t), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
			qcow2("top.qcow2", 1*MiB).on("base.raw", "raw").io("write -P 3 256k 64k"),
		}},
		{name: "backing shorter than the top reads zero past its end", chain: []img{
			full("base.qcow2", 256*KiB, 0x91, "cluster_size=4096"),
			qcow2("top.qcow2", 1*MiB, "cluster_size=65536").on("base.qcow2", "qcow2").io("write -P 1 200k 100k", "write -P 2 1000k 1k"),
		}},
		{name: "short middle layer hides the deeper layers past its end", chain: []img{
			full("base.qcow2", 1*MiB, 0xbb),
			qcow2("mid.qcow2", 256*KiB).on("base.qcow2", "qcow2").io("write -P 1 0 4k"),
			qcow2("top.qcow2", 1*MiB).on("mid.qcow2", "qcow2").io("write -P 2 600k 4k"),
		}},
		{name: "top shorter than its backing", chain: []img{
			full("base.qcow2", 1*MiB, 0xbc),
			qcow2("top.qcow2", 307200).on("base.qcow2", "qcow2").io("write -P 1 299k 1k"),
		}},
		{name: "qcow2 size not a multiple of the cluster size", chain: []img{
			qcow2("odd.qcow2", 1000448, "cluster_size=65536").io("write -P 1 983040 17408", "write -P 2 0 1"),
		}},
		{name: "qcow2 header size not a multiple of 512 rounds down", chain: []img{
			qcow2("odd.qcow2", 1000448).io("write -P 1 990000 10448").then(func(t *testing.T, path string) {
				imagetest.PatchBE64(t, path, 24, 1000300)
			}),
		}},
		{name: "header_length 105, not a multiple of 8", chain: []img{
			qcow2("hl.qcow2", 1*MiB, "cluster_size=4096").io("write -P 1 0 8k").then(func(t *testing.T, path string) {
				imagetest.PatchBE32(t, path, 100, 105)
			}),
		}},
		{name: "raw image with holes, size not a multiple of 512", chain: []img{
			{name: "sparse.raw", format: "raw", build: func(t *testing.T, dir, path string) {
				f, err := os.Create(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				f.WriteAt(pattern(5000, 1), 0)
				f.WriteAt(pattern(70000, 2), 700000)
				f.Truncate(1000001)
			}},
		}},
		{name: "internal snapshots with later writes", chain: []img{
			qcow2("snap.qcow2", 1*MiB, "cluster_size=4096").io("write -P 1 0 512k").then(
				snapshot("s1"), qio("write -P 2 4k 8k", "write -z 64k 64k", "discard 256k 16k"),
				snapshot("s2"), qio("write -P 3 6k 100k", "write -c -P 4 512k 8k")),
		}},
		{name: "persistent bitmaps, enabled and disabled", chain: []img{
			full("base.qcow2", 1*MiB, 0xc1),
			qcow2("bm.qcow2", 0).on("base.qcow2", "qcow2").then(
				bitmap("b0", "--add", "-g", "64k"), bitmap("b1", "--add", "--disable"),
				qio("write -P 1 100k 200k", "write -z 512k 64k")),
		}},
		{name: "bitmaps extension ignored without the bitmaps autoclear bit", warn: []string{"all bitmaps are now considered inconsistent"}, chain: []img{
			qcow2("bm.qcow2", 1*MiB).then(bitmap("b0", "--add"), qio("write -P 1 0 64k"), func(t *testing.T, path string) {
				imagetest.PatchBE32(t, path, findExtension(t, path, 0x23852875)+8, 0) // no bitmaps: broken, but ignored
				imagetest.PatchBE64(t, path, 88, 0)
			}),
		}},
		{name: "four layers: raw, v2 512 B, v3 extended L2, zstd compressed", chain: []img{
			rawBytes("base.raw", func() []byte { return pattern(768*KiB, 3) }),
			qcow2("v2.qcow2", 1*MiB, "compat=0.10", "cluster_size=512").on("base.raw", "raw").io("write -P 1 1000 2000", "write -P 2 700k 200k"),
			qcow2("ext.qcow2", 0, "extended_l2=on", "cluster_size=32768").on("v2.qcow2", "qcow2").io("write -P 3 1k 1k", "write -z 32k 2k", "discard 720k 32k"),
			qcow2("top.qcow2", 0, "compression_type=zstd", "cluster_size=4096").on("ext.qcow2", "qcow2").io("write -c -P 4 0 4k", "write -P 5 1023k 1k"),
		}},
		{name: "22-layer chain", chain: deep},
		{name: "backing names relative to each image's own directory", chain: []img{
			full("sub/base.qcow2", 512*KiB, 0xe1),
			qcow2("sub/mid.qcow2", 0).on("base.qcow2", "qcow2").io("write -P 1 0 64k"),
			qcow2("top.qcow2", 0).on("sub/mid.qcow2", "qcow2").io("write -P 2 128k 64k"),
		}},
		{name: "absolute backing name", chain: []img{
			full("base.qcow2", 512*KiB, 0xe2),
			qcow2("top.qcow2", 512*KiB).io("write -P 1 0 64k").then(func(t *testing.T, path string) {
				imagetest.QemuImg(t, "rebase", "-u", "-f", "qcow2", "-b", filepath.Join(filepath.Dir(path), "base.qcow2"), "-F", "qcow2", path)
			}),
		}},
		{name: "empty raw file", chain: []img{rawBytes("empty.raw", func() []byte { return nil })}},
		{name: "qcow2 of size 0 on a backing", chain: []img{
			full("base.qcow2", 64*KiB, 0xe3),
			qcow2("zero.qcow2", 1).on("base.qcow2", "qcow2").then(func(t *testing.T, path string) {
				imagetest.PatchBE64(t, path, 24, 0)
			}),
		}},
		{name: "qcow2 header size 511 reads as size 0", chain: []img{
			qcow2("tiny.qcow2", 512).io("write -P 1 0 512").then(func(t *testing.T, path string) {
				imagetest.PatchBE64(t, path, 24, 511)
			}),
		}},
		{name: "missing backing format: qcow2 backing is probed", warn: []string{`backing file "base.qcow2" has no recorded format; probed it as qcow2`}, chain: []img{
			full("base.qcow2", 512*KiB, 0xd1),
			qcow2("top.qcow2", 0).on("base.qcow2", "qcow2").io("write -P 1 64k 64k").then(dropBackingFormat),
		}},
		{name: "missing backing format: raw backing is probed", warn: []string{"probed it as raw"}, chain: []img{
			rawBytes("base.img", func() []byte { return pattern(300*KiB, 4) }),
			qcow2("top.qcow2", 0, "compat=0.10").on("base.img", "raw").io("write -P 1 64k 64k").then(dropBackingFormat),
		}},
		{name: "dirty image opens with a warning", warn: []string{"not closed cleanly"}, chain: []img{
			qcow2("dirty.qcow2", 1*MiB, "lazy_refcounts=on").io("write -P 1 0 64k").then(setIncompat(layers.IncompatDirty)),
		}},
		{name: "image marked corrupt opens with a warning", warn: []string{"marked corrupt"}, chain: []img{
			qcow2("corrupt.qcow2", 1*MiB).io("write -P 1 0 64k").then(setIncompat(layers.IncompatCorrupt)),
		}},
		{name: "preallocation=metadata", chain: []img{
			qcow2("pm.qcow2", 1*MiB, "preallocation=metadata").io("write -P 1 100k 10k"),
		}},
		{name: "preallocation=metadata, refcount_bits=1", chain: []img{
			qcow2("pm.qcow2", 1*MiB, "preallocation=metadata", "refcount_bits=1", "cluster_size=4096").io("write -P 1 100k 10k"),
		}},
		{name: "preallocation=falloc, refcount_bits=64", chain: []img{
			qcow2("pf.qcow2", 1*MiB, "preallocation=falloc", "refcount_bits=64").io("write -P 1 100k 10k"),
		}},
	}
}

// TestChainMatchesQEMU opens each row's top image and checks every layer
// of the chain against QEMU: the whole image and random reads against
// qemu-img convert, and Status against qemu-img map.
func TestChainMatchesQEMU(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	for _, r := range chainRows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			top := build(t, dir, r.chain)
			log, hook := testLog()
			c, err := layers.Open(top, &layers.Options{Log: log})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer c.Close()
			if len(c.Layers) != len(r.chain) {
				t.Fatalf("%d layers, want %d", len(c.Layers), len(r.chain))
			}
			for i, l := range c.Layers {
				want := filepath.Join(dir, r.chain[len(r.chain)-1-i].name)
				if l.Path != want || l.Index != i || l.Format.String() != r.chain[len(r.chain)-1-i].format {
					t.Fatalf("layer %d: %s %s (index %d), want %s %s", i, l.Path, l.Format, l.Index, want, r.chain[len(r.chain)-1-i].format)
				}
				if (i+1 < len(c.Layers)) != (l.Backing != nil) || (l.Backing != nil && l.Backing != c.Layers[i+1]) {
					t.Fatalf("layer %d: wrong Backing", i)
				}
			}
			w := warnings(hook)
			for _, want := range r.warn {
				if !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, want) }) {
					t.Errorf("no warning containing %q; warnings: %q", want, w)
				}
			}
			if r.warn == nil && len(w) > 0 {
				t.Errorf("unexpected warnings: %q", w)
			}
			for _, l := range c.Layers {
				checkLayer(t, l)
				checkStatusAgainstMap(t, l)
			}
		})
	}
}

package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

// Hand-broken images through the real mount. Each is made by qemu-img and
// qemu-io, then broken by overwriting a header field, a table entry or
// compressed data, or by truncating the file. Three outcomes are allowed:
//
//   - refused at mount: exit 3, one line naming the file and what is
//     wrong, nothing mounted and no server left (TestHostileRefused);
//   - served: EIO for exactly the broken range and a log line naming the
//     file, the cluster and the offsets, everything else read as QEMU
//     reads the image before it was broken (TestHostileServed);
//   - read as QEMU reads it, where QEMU reads through the damage (tables
//     and clusters past the end of the file, NUL bytes in names, formats
//     it probes): every view, map and depth as QEMU's tools give them,
//     and a warning in the log (TestHostileServed, TestHostileAsQEMU);
//     with --strict, refused or EIO instead.

// qcowLayout finds the structures of a qcow2 image that a test breaks,
// from its header as layers.DecodeHeader reads it.
type qcowLayout struct {
	path string
	h    *layers.Header
}

func layoutOf(t *testing.T, path string) qcowLayout {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := layers.DecodeHeader(path, bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return qcowLayout{path, h}
}

// L1 and L2 entries (qcow2.txt, "Cluster mapping"): bits 9-55 hold the
// offset, bit 63 is COPIED, bit 62 marks a compressed cluster.
const (
	offsetMask    = 0x00fffffffffffe00
	copiedFlag    = uint64(1) << 63
	compressedBit = uint64(1) << 62
)

// l2Entry returns the file offset of the L2 entry that maps guest offset g.
func (q qcowLayout) l2Entry(t *testing.T, g int64) int64 {
	t.Helper()
	entry := int64(8)
	if q.h.ExtendedL2() {
		entry = 16
	}
	cbits := int64(q.h.ClusterBits)
	perTable := q.h.ClusterSize() / entry
	l1i := g / (q.h.ClusterSize() * perTable)
	l2i := (g >> cbits) % perTable
	l2 := int64(imagetest.ReadBE64(t, q.path, int64(q.h.L1TableOffset)+8*l1i) & offsetMask)
	if l2 == 0 {
		t.Fatalf("%s: no L2 table for guest offset %#x", q.path, g)
	}
	return l2 + l2i*entry
}

// host returns the host cluster of guest offset g (0: none).
func (q qcowLayout) host(t *testing.T, g int64) int64 {
	return int64(imagetest.ReadBE64(t, q.path, q.l2Entry(t, g)) & offsetMask)
}

// compressed returns the L2 entry of the compressed cluster at guest
// offset g and where its stream starts: the descriptor holds the host
// offset in its low 62-(cluster_bits-8) bits ("Compressed Clusters
// Descriptor").
func (q qcowLayout) compressed(t *testing.T, g int64) (entry uint64, stream int64) {
	t.Helper()
	e := imagetest.ReadBE64(t, q.path, q.l2Entry(t, g))
	if e&compressedBit == 0 {
		t.Fatalf("%s: guest cluster %#x is not compressed (%#x)", q.path, g, e)
	}
	x := 62 - (q.h.ClusterBits - 8)
	return e, int64(e & (1<<x - 1))
}

// withStream returns compressed descriptor e pointing at a stream of n
// bytes at host offset off instead.
func (q qcowLayout) withStream(e uint64, off, n int64) uint64 {
	x := 62 - (q.h.ClusterBits - 8)
	sectors := uint64((off%512+n+511)/512) - 1
	return e&(copiedFlag|compressedBit) | sectors<<x | uint64(off)
}

func sizeOf(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// refusedRow is an image that must not mount.
type refusedRow struct {
	name string
	// make builds the image in dir and returns its path and extra mount
	// arguments.
	make func(t *testing.T, dir string) (image string, args []string)
	// want are substrings of the one line chainfs prints.
	want []string
}

// oneMiB makes a 1 MiB qcow2 image with some data, the usual victim.
func oneMiB(t *testing.T, dir, name string, opts ...string) string {
	t.Helper()
	p := imagetest.Create(t, dir, name, "qcow2", 1<<20, opts...)
	imagetest.QemuIO(t, "qcow2", p, "write -P 0x5a 0 64k")
	return p
}

// chainOf makes names[0] <- names[1] <- ... in dir, each backed by the one
// before, and returns the path of the last.
func chainOf(t *testing.T, dir string, names ...string) string {
	t.Helper()
	p := oneMiB(t, dir, names[0])
	for i := 1; i < len(names); i++ {
		p = imagetest.Create(t, dir, names[i], "qcow2", 0, "backing_file="+names[i-1], "backing_fmt=qcow2")
	}
	return p
}

// rebase points image's backing file at name, unsafely (no checks).
func rebase(t *testing.T, image, name string) {
	t.Helper()
	imagetest.QemuImg(t, "rebase", "-u", "-f", "qcow2", "-b", name, "-F", "qcow2", image)
}

func refusedRows() []refusedRow {
	patch32 := func(off int64, v uint32) func(t *testing.T, dir string) (string, []string) {
		return func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			imagetest.PatchBE32(t, p, off, v)
			return p, nil
		}
	}
	return []refusedRow{
		{"nonexistent path", func(t *testing.T, dir string) (string, []string) {
			return filepath.Join(dir, "nope.qcow2"), nil
		}, []string{"nope.qcow2", "no such file or directory"}},
		{"a directory", func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "dir.qcow2")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p, nil
		}, []string{"dir.qcow2", "is a directory"}},
		{"missing backing file", func(t *testing.T, dir string) (string, []string) {
			top := chainOf(t, dir, "base.qcow2", "top.qcow2")
			os.Remove(filepath.Join(dir, "base.qcow2"))
			return top, nil
		}, []string{`top.qcow2: backing file "base.qcow2"`, "no such file or directory"}},
		{"backing loop a -> b -> a", func(t *testing.T, dir string) (string, []string) {
			chainOf(t, dir, "a.qcow2", "b.qcow2")
			rebase(t, filepath.Join(dir, "a.qcow2"), "b.qcow2")
			return filepath.Join(dir, "a.qcow2"), nil
		}, []string{`b.qcow2: backing file "a.qcow2" is`, "a.qcow2 again: backing chain loop"}},
		{"backing loop a -> b -> c -> a", func(t *testing.T, dir string) (string, []string) {
			chainOf(t, dir, "c.qcow2", "b.qcow2", "a.qcow2")
			rebase(t, filepath.Join(dir, "c.qcow2"), "a.qcow2")
			return filepath.Join(dir, "a.qcow2"), nil
		}, []string{`c.qcow2: backing file "a.qcow2" is`, "backing chain loop"}},
		{"chain deeper than --max-depth", func(t *testing.T, dir string) (string, []string) {
			return chainOf(t, dir, "l4.qcow2", "l3.qcow2", "l2.qcow2", "l1.qcow2", "l0.qcow2"), []string{"--max-depth", "4"}
		}, []string{"l0.qcow2: backing chain is deeper than 4 layers"}},
		{"chain deeper than -o max_depth", func(t *testing.T, dir string) (string, []string) {
			return chainOf(t, dir, "l2.qcow2", "l1.qcow2", "l0.qcow2"), []string{"-o", "max_depth=2"}
		}, []string{"l0.qcow2: backing chain is deeper than 2 layers"}},
		{"unknown incompatible feature bit", func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			imagetest.PatchBE64(t, p, 72, 1<<9)
			return p, nil
		}, []string{"bad.qcow2: unsupported incompatible feature bit 9"}},
		{"LUKS encryption", func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "luks.qcow2")
			imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=x",
				"-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", p, "1M")
			return p, nil
		}, []string{"luks.qcow2: LUKS-encrypted qcow2", "encrypted images are not supported"}},
		{"cluster_bits 22", patch32(20, 22), []string{"bad.qcow2: header: cluster_bits 22 outside 9..21"}},
		{"cluster_bits 8", patch32(20, 8), []string{"bad.qcow2: header: cluster_bits 8 outside 9..21"}},
		{"l1_size over QEMU's 32 MiB", patch32(36, 32<<20/8+1), []string{"bad.qcow2: header: L1 table of 4194305 entries is larger than QEMU's limit"}},
		{"l1_size too small for the virtual size", patch32(36, 0), []string{"bad.qcow2: header: L1 table of 0 entries is too small"}},
		{"header_length under 104", patch32(100, 100), []string{"bad.qcow2: header: header_length 100 is less than 104"}},
		{"header_length over the cluster size", patch32(100, 128<<10), []string{"bad.qcow2: header: header_length 131072 exceeds the cluster size 65536"}},
		{"backing name longer than 1023 bytes", func(t *testing.T, dir string) (string, []string) {
			top := chainOf(t, dir, "base.qcow2", "top.qcow2")
			imagetest.PatchBE32(t, top, 16, 1024)
			return top, nil
		}, []string{"top.qcow2: header: backing file name of 1024 bytes", "is too long"}},
		{"backing name offset past the first cluster", func(t *testing.T, dir string) (string, []string) {
			top := chainOf(t, dir, "base.qcow2", "top.qcow2")
			imagetest.PatchBE64(t, top, 8, 64<<10+8)
			return top, nil
		}, []string{"top.qcow2: header: backing file name offset 0x10008 lies beyond the first cluster"}},
		{"header extension longer than the header area", func(t *testing.T, dir string) (string, []string) {
			top := chainOf(t, dir, "base.qcow2", "top.qcow2")
			q := layoutOf(t, top)
			// The first extension starts at header_length: the backing
			// format, then its length.
			imagetest.PatchBE32(t, top, int64(q.h.HeaderLength)+4, 0x10000)
			return top, nil
		}, []string{"top.qcow2: header extension 0xe2792aca at 0x70: length 65536 reaches past the end of the header area"}},
		// Tables QEMU reads as zero past the end of the file: refused in
		// strict mode only (TestHostileAsQEMU mounts them by default).
		{"--strict: L1 table past the end of the file", func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			imagetest.PatchBE64(t, p, 40, uint64(sizeOf(t, p)+0xffff)&^0xffff)
			return p, []string{"--strict"}
		}, []string{"bad.qcow2: L1 table at", "lies beyond end of file"}},
		{"-o strict: refcount table past the end of the file", func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			imagetest.PatchBE64(t, p, 48, uint64(sizeOf(t, p)+0xffff)&^0xffff)
			return p, []string{"-o", "strict"}
		}, []string{"bad.qcow2: refcount table at", "lies beyond end of file"}},
		// Open-time checks QEMU makes.
		{"no refcount table", patch32(56, 0), []string{"bad.qcow2: header: no reference count table (refcount_table_clusters is 0)"}},
		{"snapshot table offset not cluster aligned, no snapshots", func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			imagetest.PatchBE64(t, p, 64, 0x200)
			return p, nil
		}, []string{"bad.qcow2: header: snapshot table offset invalid: 0x200 is not a cluster-aligned file offset"}},
		{"end of the header extensions with a length past the header area", func(t *testing.T, dir string) (string, []string) {
			p := oneMiB(t, dir, "bad.qcow2")
			q := layoutOf(t, p)
			// The feature name table, then the end marker.
			ft := int64(q.h.HeaderLength)
			end := ft + 8 + int64(imagetest.ReadBE32(t, p, ft+4)+7)&^7
			imagetest.PatchBE32(t, p, end+4, 0x10000)
			return p, nil
		}, []string{"bad.qcow2: header extension 0x0 at", "length 65536 reaches past the end of the header area"}},
		{"--confine: backing file outside by absolute name", func(t *testing.T, dir string) (string, []string) {
			jail, outside := jailDirs(t, dir)
			oneMiB(t, outside, "secret.qcow2")
			top := imagetest.Create(t, jail, "top.qcow2", "qcow2", 0, "backing_file="+filepath.Join(outside, "secret.qcow2"), "backing_fmt=qcow2")
			return top, []string{"--confine", jail}
		}, []string{`top.qcow2: backing file "`, "secret.qcow2: real path", "lies outside", "outside the confining directory"}},
		{"--confine: backing file outside through a symlink", func(t *testing.T, dir string) (string, []string) {
			jail, outside := jailDirs(t, dir)
			oneMiB(t, outside, "secret.qcow2")
			if err := os.Symlink(filepath.Join(outside, "secret.qcow2"), filepath.Join(jail, "base.qcow2")); err != nil {
				t.Fatal(err)
			}
			top := imagetest.Create(t, jail, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
			return top, []string{"--confine", jail}
		}, []string{`top.qcow2: backing file "base.qcow2"`, "outside/secret.qcow2 lies outside"}},
		{"--confine: data file outside through a symlink", func(t *testing.T, dir string) (string, []string) {
			jail, outside := jailDirs(t, dir)
			top := imagetest.Create(t, jail, "top.qcow2", "qcow2", 1<<20, "data_file=top.data")
			if err := os.Rename(filepath.Join(jail, "top.data"), filepath.Join(outside, "top.data")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "top.data"), filepath.Join(jail, "top.data")); err != nil {
				t.Fatal(err)
			}
			return top, []string{"-o", "confine=" + jail}
		}, []string{`top.qcow2: external data file "top.data"`, "outside/top.data lies outside"}},
	}
}

// jailDirs makes dir/jail and dir/outside.
func jailDirs(t *testing.T, dir string) (jail, outside string) {
	jail, outside = filepath.Join(dir, "jail"), filepath.Join(dir, "outside")
	for _, d := range []string{jail, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return jail, outside
}

// TestHostileRefused: each image is refused at mount with exit 3 and one
// line that names the file and the problem (the same line is in the log),
// and nothing is left mounted or running.
func TestHostileRefused(t *testing.T) {
	for _, r := range refusedRows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			image, args := r.make(t, dir)
			mnt := newMountpoint(t)
			logFile := filepath.Join(t.TempDir(), "log")
			full := append(append([]string{"mount", "--log-file", logFile}, args...), image, mnt)
			out, code := chainfs(t, full...)
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if code != 3 || len(lines) != 1 || !strings.HasPrefix(out, "chainfs: ") {
				t.Errorf("chainfs %q: exit %d, output %q; want exit 3 and one line", full[3:], code, out)
			}
			for _, w := range r.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
			if _, ok := mountOf(mnt); ok {
				t.Errorf("%s is mounted", mnt)
				unmount(t, mnt)
			}
			if pid := serverPID(t, mnt); pid != 0 {
				t.Errorf("server %d left running", pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
			log, _ := os.ReadFile(logFile)
			if msg := strings.TrimPrefix(strings.TrimSpace(out), "chainfs: "); !strings.Contains(string(log), "level=error msg=\"mount failed\"") ||
				!strings.Contains(strings.ReplaceAll(string(log), `\"`, `"`), msg) {
				t.Errorf("the log lacks the error:\n%s", log)
			}
		})
	}
}

// TestLimitsAllowMounting: --max-depth and --confine let through what
// they do not forbid, and the mount logs the chain it opened.
func TestLimitsAllowMounting(t *testing.T) {
	dir := t.TempDir()
	jail, _ := jailDirs(t, dir)
	top := chainOf(t, jail, "l2.qcow2", "l1.qcow2", "l0.qcow2")
	if err := os.Symlink("l2.qcow2", filepath.Join(jail, "link.qcow2")); err != nil {
		t.Fatal(err)
	}
	rebase(t, filepath.Join(jail, "l1.qcow2"), "link.qcow2")
	mnt := mount(t, top, "--max-depth", "3", "--confine", jail)
	log := mountLog(t, mnt)
	for _, want := range []string{
		`msg="chain layer" backing_file=l1.qcow2 backing_format=qcow2 backing_path=` + filepath.Join(jail, "l1.qcow2") + ` format=qcow2 layer=0 path=` + top,
		`msg="chain layer" backing_file=link.qcow2 backing_format=qcow2 backing_path=` + filepath.Join(jail, "link.qcow2") + ` format=qcow2 layer=1`,
		`msg="chain layer" format=qcow2 layer=2 path=` + filepath.Join(jail, "link.qcow2") + ` real_path=` + filepath.Join(jail, "l2.qcow2"),
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "2-link.qcow2.raw")); err != nil {
		t.Error(err)
	}
	mount(t, top, "-o", "max_depth=3,confine="+jail)
}

// servedRow is an image broken so that QEMU's rules still serve all but
// a range of it, or all of it.
type servedRow struct {
	name string
	// opts and write make mid.qcow2, whose guest range [0, 512k) holds
	// data (written by write, one qemu-io command).
	opts  []string
	write string
	// brk breaks mid.qcow2 and returns the guest ranges that break.
	brk func(t *testing.T, mid string) [][2]int64
	// strict mounts with --strict.
	strict bool
	// qemuReads: QEMU reads the broken image whole (damage it reads
	// through): every view must then read as qemu-img convert reads the
	// broken image, its maps match qemu-img map of it, and nothing
	// fails; warn is in the mount's log. Otherwise the broken ranges
	// fail with EIO and log says why.
	qemuReads bool
	warn      string
	// mapBroken: the breakage shows in the map (the L2 entries), not only
	// in the data, so the map files of mid and top fail too.
	mapBroken bool
	// log is in the error of every failed request: it names the file, the
	// guest cluster and the host offsets.
	log string
}

// unmountDamage is the warning that sums up, at unmount, the damage the
// reads of a layer met.
const unmountDamage = "damage the layer's reads met"

// cluster2 is the guest cluster broken in most rows: [128k, 192k).
var cluster2 = [][2]int64{{128 << 10, 192 << 10}}

// pastEOF points mid's L2 entry of guest 128 KiB at 64 MiB, past the end.
func pastEOF(t *testing.T, mid string) [][2]int64 {
	q := layoutOf(t, mid)
	imagetest.PatchBE64(t, mid, q.l2Entry(t, 128<<10), copiedFlag|64<<20)
	return cluster2
}

// compressedPastEOF points mid's compressed cluster of guest 128 KiB past
// the end of the file.
func compressedPastEOF(t *testing.T, mid string) [][2]int64 {
	q := layoutOf(t, mid)
	e, _ := q.compressed(t, 128<<10)
	imagetest.PatchBE64(t, mid, q.l2Entry(t, 128<<10), q.withStream(e, sizeOf(t, mid)+12345, 512))
	return cluster2
}

// truncated cuts mid in the middle of its data clusters and returns the
// guest clusters whose data is cut.
func truncated(t *testing.T, mid string) [][2]int64 {
	q := layoutOf(t, mid)
	cut := q.host(t, 384<<10) + 1000
	var broken [][2]int64
	for g := int64(0); g < 512<<10; g += 64 << 10 {
		if q.host(t, g)+64<<10 > cut {
			broken = append(broken, [2]int64{g, g + 64<<10})
		}
	}
	if err := os.Truncate(mid, cut); err != nil {
		t.Fatal(err)
	}
	if len(broken) == 0 {
		t.Fatal("truncating cut no data cluster")
	}
	return broken
}

func servedRows() []servedRow {
	return []servedRow{
		{name: "L2 entry pointing past the end of the file", write: "write -P 0x22 0 512k", brk: pastEOF, qemuReads: true,
			warn: "mid.qcow2: L2 table at 0x40000: 1 data clusters reach past end of file"},
		{name: "--strict: L2 entry pointing past the end of the file", write: "write -P 0x22 0 512k", brk: pastEOF, strict: true, mapBroken: true,
			log: "mid.qcow2: data cluster for guest offset 0x20000 at 0x4000000 lies beyond end of file"},
		{name: "L2 entry not cluster aligned", write: "write -P 0x22 0 512k", mapBroken: true,
			log: "is not cluster aligned (guest offset 0x20000",
			brk: func(t *testing.T, mid string) [][2]int64 {
				q := layoutOf(t, mid)
				e := q.l2Entry(t, 128<<10)
				imagetest.PatchBE64(t, mid, e, imagetest.ReadBE64(t, mid, e)+512)
				return cluster2
			}},
		{name: "compressed descriptor pointing past the end of the file", write: "write -c -P 0x22 0 512k", brk: compressedPastEOF,
			log: "mid.qcow2: compressed cluster for guest offset 0x20000 at", warn: "1 compressed clusters start past end of file"},
		{name: "--strict: compressed descriptor pointing past the end of the file", write: "write -c -P 0x22 0 512k", brk: compressedPastEOF,
			strict: true, mapBroken: true, log: "mid.qcow2: compressed cluster for guest offset 0x20000 at"},
		{name: "corrupt zlib stream", write: "write -c -P 0x22 0 512k",
			log: "for guest offset 0x20000 does not inflate to one cluster",
			brk: func(t *testing.T, mid string) [][2]int64 {
				_, stream := layoutOf(t, mid).compressed(t, 128<<10)
				// A first block of type 3, which deflate reserves. Only the
				// stream's first byte: the next cluster's stream may follow
				// in the same sector.
				imagetest.Patch(t, mid, stream, []byte{0xff})
				return cluster2
			}},
		{name: "corrupt zstd stream", opts: []string{"compression_type=zstd"}, write: "write -c -P 0x22 0 512k",
			log: "for guest offset 0x20000 does not inflate to one cluster",
			brk: func(t *testing.T, mid string) [][2]int64 {
				_, stream := layoutOf(t, mid).compressed(t, 128<<10)
				// The frame header descriptor after the magic, with its
				// reserved bit set.
				imagetest.Patch(t, mid, stream+4, []byte{0xff})
				return cluster2
			}},
		{name: "zlib stream inflating to less than a cluster", write: "write -c -P 0x22 0 512k",
			log: "for guest offset 0x20000 does not inflate to one cluster: stream ends before one cluster",
			brk: func(t *testing.T, mid string) [][2]int64 {
				q := layoutOf(t, mid)
				e, _ := q.compressed(t, 128<<10)
				short := imagetest.DeflateRaw(t, bytes.Repeat([]byte{0x22}, 60<<10))
				at := (sizeOf(t, mid) + 511) &^ 511 // a new stream at the end
				imagetest.Patch(t, mid, at, short)
				imagetest.PatchBE64(t, mid, q.l2Entry(t, 128<<10), q.withStream(e, at, int64(len(short))))
				return cluster2
			}},
		{name: "truncated image", write: "write -P 0x22 0 512k", brk: truncated, qemuReads: true,
			warn: "data clusters reach past end of file"},
		{name: "--strict: truncated image", write: "write -P 0x22 0 512k", brk: truncated, strict: true, mapBroken: true,
			log: "lies beyond end of file"},
		{name: "extended L2 bitmap with a subcluster both allocated and zero", opts: []string{"extended_l2=on"}, write: "write -P 0x22 0 512k", mapBroken: true,
			log: "mid.qcow2: invalid extended L2 bitmap 0x00000001ffffffff for guest cluster 0x20000",
			brk: func(t *testing.T, mid string) [][2]int64 {
				q := layoutOf(t, mid)
				imagetest.PatchBE64(t, mid, q.l2Entry(t, 128<<10)+8, 0x00000001_ffffffff)
				return cluster2
			}},
	}
}

// TestHostileServed builds top.qcow2 -> mid.qcow2 -> base.raw (1 MiB each;
// base all data, mid data at [0, 512k), top data at [768k, 832k)), reads
// every view with qemu-img convert, breaks mid, and mounts top.
//
// Where QEMU reads through the damage (by default), every view reads as
// qemu-img convert reads the broken image and maps as qemu-img map maps it,
// and the mount logs a warning naming the damage.
//
// Otherwise every 4 KiB page of every view must read as before, except the
// pages of the broken range in mid's and top's views, which fail with EIO;
// a 4 KiB read next to the broken range, in the same readahead window,
// must work on a cold cache; a whole-file read stops with EIO at the broken
// range having returned exactly the bytes before it; stat works on every
// view; the map files fail with EIO where the map needs the broken entries
// (as qemu-img map and qemu-nbd fail) and match qemu-img map elsewhere;
// and each failure is logged with the file, cluster and offsets.
func TestHostileServed(t *testing.T) {
	for _, r := range servedRows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			base := imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
			imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
			mid := imagetest.Create(t, dir, "mid.qcow2", "qcow2", 0, append([]string{"backing_file=base.raw", "backing_fmt=raw"}, r.opts...)...)
			imagetest.QemuIO(t, "qcow2", mid, r.write)
			top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=mid.qcow2", "backing_fmt=qcow2")
			imagetest.QemuIO(t, "qcow2", top, "write -P 0x33 768k 64k")
			views := []struct {
				name, path, format string
				ref                []byte
				broken             [][2]int64
			}{
				{name: "0-top.qcow2", path: top, format: "qcow2"},
				{name: "1-mid.qcow2", path: mid, format: "qcow2"},
				{name: "2-base.raw", path: base, format: "raw"},
			}
			for i := range views {
				views[i].ref = imagetest.ConvertRaw(t, views[i].path, views[i].format)
			}
			broken := r.brk(t, mid)
			if r.qemuReads {
				// QEMU's answer is the reference: what it reads of the
				// broken image, which is whole.
				for i := range views {
					views[i].ref = imagetest.ConvertRaw(t, views[i].path, views[i].format)
				}
				broken = nil
			}
			views[0].broken, views[1].broken = broken, broken // top holds nothing over it

			var args []string
			if r.strict {
				args = []string{"--strict"}
			}
			mnt := mount(t, top, args...)
			expectLog(t, mnt, unmountDamage)
			for _, p := range []string{r.log, r.warn} {
				if p != "" {
					expectLog(t, mnt, p)
				}
			}

			if len(broken) > 0 {
				// Cold cache: the first read of each broken view is 4 KiB
				// just before the broken range, whose readahead window
				// covers it.
				for _, v := range views[:2] {
					f, err := os.Open(filepath.Join(mnt, v.name+".raw"))
					if err != nil {
						t.Fatal(err)
					}
					off := broken[0][0] - 8<<10
					buf := make([]byte, 4096)
					if _, err := f.ReadAt(buf, off); err != nil || !bytes.Equal(buf, v.ref[off:off+4096]) {
						t.Errorf("%s: 4 KiB read at %#x, next to the broken range: %v, or wrong bytes", v.name, off, err)
					}
					f.Close()
				}
			}
			for _, v := range views {
				checkBrokenView(t, filepath.Join(mnt, v.name+".raw"), v.ref, v.broken)
			}

			// The map files.
			for i, v := range views {
				mapBroken := r.mapBroken && i < 2
				for _, suffix := range []string{".map.json", ".depth"} {
					p := filepath.Join(mnt, v.name+suffix)
					if mapBroken {
						if _, err := os.Stat(p); !errors.Is(err, syscall.EIO) {
							t.Errorf("stat %s: %v, want EIO", v.name+suffix, err)
						}
						if _, err := os.ReadFile(p); !errors.Is(err, syscall.EIO) {
							t.Errorf("read %s: %v, want EIO", v.name+suffix, err)
						}
						continue
					}
					got := readGenerated(t, p)
					if suffix == ".map.json" {
						got = regexp.MustCompile(`, "compressed": (true|false)`).ReplaceAllString(got, "")
						if want := imagetest.QemuMapJSON(t, v.path, v.format); got != want {
							t.Errorf("%s differs from qemu-img map of the broken image:\n%s", v.name+suffix, imagetest.LineDiff(got, want))
						}
					} else if want := imagetest.NBDDepth(t, v.path, v.format, false); got != want {
						t.Errorf("%s differs from nbdinfo over qemu-nbd -A of the broken image:\n%s", v.name+suffix, imagetest.LineDiff(got, want))
					}
				}
			}

			log := mountLog(t, mnt)
			if r.qemuReads {
				if !regexp.MustCompile(`level=warning msg=".*` + regexp.QuoteMeta(r.warn) + `.*damage=data-cluster-past-eof file=.*mid.qcow2 guest_offset=\d+ host_offset=\d+ l2_table=\d+ structure="data cluster"`).MatchString(log) {
					t.Errorf("no warning naming the damage, file, structure and offsets in the log:\n%s", log)
				}
				return
			}
			// The log names the file, the cluster and the offsets, with
			// the view and the request.
			for _, v := range views[:2] {
				if !regexp.MustCompile(`level=error msg="read failed: EIO" error=".*` + regexp.QuoteMeta(r.log) + `.*file=` + regexp.QuoteMeta(v.name) + `.raw layer=\d len=\d+ off=\d+ op=read`).MatchString(log) {
					t.Errorf("no read error for %s.raw in the log:\n%s", v.name, log)
				}
			}
			if r.mapBroken && !strings.Contains(log, `msg="the layer's map cannot be computed; st_blocks counts every byte as data"`) {
				t.Errorf("no st_blocks fallback in the log:\n%s", log)
			}
			for _, f := range []string{"0-top.qcow2.map.json", "1-mid.qcow2.depth"} {
				if r.mapBroken && !regexp.MustCompile(`level=error msg="rendering the file failed: EIO" error=".*`+regexp.QuoteMeta(r.log)+`.*file=`+regexp.QuoteMeta(f)).MatchString(log) {
					t.Errorf("no error for %s in the log:\n%s", f, log)
				}
			}
		})
	}
}

// checkBrokenView reads the view at p page by page and whole, and stats
// it: every page outside broken reads as ref, every page touching it
// fails with EIO.
func checkBrokenView(t *testing.T, p string, ref []byte, broken [][2]int64) {
	t.Helper()
	name := filepath.Base(p)
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil || st.Size != int64(len(ref)) {
		t.Errorf("stat %s: size %d, %v; want %d", name, st.Size, err, len(ref))
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	isBroken := func(off, end int64) bool {
		for _, b := range broken {
			if off < b[1] && b[0] < end {
				return true
			}
		}
		return false
	}
	buf := make([]byte, 4096)
	bad := 0
	for off := int64(0); off < int64(len(ref)) && bad < 5; off += 4096 {
		_, err := f.ReadAt(buf, off)
		switch {
		case isBroken(off, off+4096) && !errors.Is(err, syscall.EIO):
			t.Errorf("%s: read at %#x in the broken range: %v, want EIO", name, off, err)
			bad++
		case !isBroken(off, off+4096) && (err != nil || !bytes.Equal(buf, ref[off:off+4096])):
			t.Errorf("%s: read at %#x: %v, or not what qemu-img read before the break", name, off, err)
			bad++
		}
	}
	// A whole read returns the bytes before the broken range, then EIO;
	// the size stays (a short read would have made the kernel think the
	// file ends there).
	got, err := os.ReadFile(p)
	if len(broken) == 0 {
		if err != nil || !bytes.Equal(got, ref) {
			t.Errorf("%s: whole read: %v, or bytes differ", name, err)
		}
		return
	}
	if !errors.Is(err, syscall.EIO) || int64(len(got)) > broken[0][0] || !bytes.Equal(got, ref[:len(got)]) {
		t.Errorf("%s: whole read: %d bytes, %v; want at most the %d before the broken range, then EIO", name, len(got), err, broken[0][0])
	}
	if err := syscall.Stat(p, &st); err != nil || st.Size != int64(len(ref)) {
		t.Errorf("stat %s after the failed reads: size %d, %v; want %d", name, st.Size, err, len(ref))
	}
}

// TestConfineCommands: info, map and depth take --confine as mount does.
func TestConfineCommands(t *testing.T) {
	dir := t.TempDir()
	jail, outside := jailDirs(t, dir)
	oneMiB(t, outside, "secret.qcow2")
	if err := os.Symlink(filepath.Join(outside, "secret.qcow2"), filepath.Join(jail, "base.qcow2")); err != nil {
		t.Fatal(err)
	}
	top := imagetest.Create(t, jail, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
	for _, cmd := range []string{"info", "map", "depth"} {
		out, code := chainfs(t, cmd, "--confine", jail, top)
		if code != 3 || !strings.Contains(out, `top.qcow2: backing file "base.qcow2"`) || !strings.Contains(out, "lies outside") {
			t.Errorf("chainfs %s --confine: exit %d, %q", cmd, code, out)
		}
		if out, code := chainfs(t, cmd, "--confine", dir, top); code != 0 {
			t.Errorf("chainfs %s --confine with the whole chain inside: exit %d, %q", cmd, code, out)
		}
	}
}

// asQEMURow is a chain whose top image is damaged in a way QEMU reads
// through, or names things the way only QEMU's rules read.
type asQEMURow struct {
	name string
	// make builds the chain in dir and returns its layers as QEMU opens
	// them, top first.
	make func(t *testing.T, dir string) []layer
	// warn are the warnings the mount must log.
	warn []string
	// damage is the kind (its key) chainfs info --check counts in the
	// top layer, if any.
	damage string
}

// overRaw makes top.qcow2 (1 MiB, data at [0, 256k)) over base.raw (all
// 0x11).
func overRaw(t *testing.T, dir string, opts ...string) (top, base string) {
	base = imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
	top = imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, append(opts, "backing_file=base.raw", "backing_fmt=raw")...)
	imagetest.QemuIO(t, "qcow2", top, "write -P 0x22 0 256k")
	return top, base
}

func asQEMURows() []asQEMURow {
	return []asQEMURow{
		{name: "L1 table past the end of the file: all unallocated", damage: "l1-table-past-eof",
			warn: []string{"L1 table at", "reaches past end of file"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir)
				imagetest.PatchBE64(t, top, 40, uint64(sizeOf(t, top)+0xffff)&^0xffff)
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
		{name: "refcount table past the end of the file", damage: "refcount-table-past-eof",
			warn: []string{"refcount table at", "reaches past end of file"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir)
				imagetest.PatchBE64(t, top, 48, uint64(sizeOf(t, top)+0xffff)&^0xffff)
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
		{name: "L2 table past the end of the file: the backing file shows", damage: "l2-table-past-eof",
			warn: []string{"L2 table at", "reaches past end of file"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir, "cluster_size=4096")
				q := layoutOf(t, top)
				l1 := int64(q.h.L1TableOffset)
				imagetest.PatchBE64(t, top, l1, copiedFlag|uint64(sizeOf(t, top)+0x10000)&^0xfff)
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
		{name: "data clusters just past the end of the file: zeroes", damage: "data-cluster-past-eof",
			warn: []string{"data clusters reach past end of file"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir)
				q := layoutOf(t, top)
				end := uint64(sizeOf(t, top))
				imagetest.PatchBE64(t, top, q.l2Entry(t, 64<<10), copiedFlag|end)
				imagetest.PatchBE64(t, top, q.l2Entry(t, 512<<10), copiedFlag|end+64<<10)
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
		{name: "qcow2 magic with version 0 is raw",
			make: func(t *testing.T, dir string) []layer {
				p := oneMiB(t, dir, "v0.img")
				imagetest.PatchBE32(t, p, 4, 0)
				return []layer{{p, "raw"}}
			}},
		{name: "backing file with qcow2 magic and version 0, format not recorded: probed raw",
			warn: []string{"has no recorded format; probed it as raw"},
			make: func(t *testing.T, dir string) []layer {
				b := oneMiB(t, dir, "v0.img")
				top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=v0.img", "backing_fmt=qcow2")
				imagetest.QemuIO(t, "qcow2", top, "write -P 0x33 128k 64k")
				imagetest.PatchBE32(t, b, 4, 0)
				imagetest.DropBackingFormat(t, top)
				return []layer{{top, "qcow2"}, {b, "raw"}}
			}},
		{name: "NUL inside the backing file name",
			warn: []string{"the recorded backing file name (12 bytes) ends at a NUL after 8"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir)
				off := int64(imagetest.ReadBE64(t, top, 8))
				imagetest.PatchBE32(t, top, 16, 12)
				imagetest.Patch(t, top, off+8, []byte("\x00.gz"))
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
		{name: "NUL inside the backing format",
			warn: []string{"the recorded backing format ends at a NUL"},
			make: func(t *testing.T, dir string) []layer {
				top, base := overRaw(t, dir)
				ext := imagetest.FindExt(t, top, 0xe2792aca)
				imagetest.PatchBE32(t, top, ext+4, 5)
				imagetest.Patch(t, top, ext+8, []byte("raw\x00q"))
				return []layer{{top, "qcow2"}, {base, "raw"}}
			}},
	}
}

// TestHostileAsQEMU mounts chains that QEMU reads through damage or names
// by rules of its own (items 1, 2, 4 and 5 of issue 12) and holds every
// layer's view, map and depth against QEMU's tools (checkLayer, as for the
// healthy chains), `chainfs map` and `chainfs depth` against the mounted
// files, and the mount's log against the warnings that must name the
// damage.
func TestHostileAsQEMU(t *testing.T) {
	for _, r := range asQEMURows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			chain := r.make(t, dir)
			mnt := mount(t, chain[0].path)
			expectLog(t, mnt, append(r.warn, unmountDamage)...)
			checkNames(t, mnt, chain)
			for i, l := range chain {
				t.Run(fmt.Sprintf("layer %d %s", i, filepath.Base(l.path)), func(t *testing.T) {
					checkLayer(t, mnt, i, l)
					for _, cmd := range []string{"map", "depth"} {
						suffix := map[string]string{"map": ".map.json", "depth": ".depth"}[cmd]
						out, stderr, code := chainfsSplit(t, cmd, "-U", "--layer", fmt.Sprint(i), chain[0].path)
						if want := readGenerated(t, filepath.Join(mnt, viewName(i, l)+suffix)); code != 0 || out != want {
							t.Errorf("chainfs %s --layer %d: exit %d, and its output is not the mounted file's:\n%s%s", cmd, i, code, out, stderr)
						}
					}
				})
			}
			log := mountLog(t, mnt)
			for _, w := range r.warn {
				if !regexp.MustCompile(`level=warning msg=".*` + regexp.QuoteMeta(w)).MatchString(strings.ReplaceAll(log, `\"`, `"`)) {
					t.Errorf("no warning %q in the log:\n%s", w, log)
				}
			}
			checkInfoDamage(t, chain[0].path, r.damage)
		})
	}
}

// checkInfoDamage: chainfs info --check --json counts damage of kind key
// in the top layer (none anywhere when key is empty), and chainfs info
// without --check counts at most that.
func checkInfoDamage(t *testing.T, image, key string) {
	t.Helper()
	for _, check := range []bool{true, false} {
		args := []string{"info", "--json", "-U", image}
		if check {
			args = append([]string{"info", "--check"}, args[1:]...)
		}
		out, stderr, code := chainfsSplit(t, args...)
		if code != 0 {
			t.Fatalf("chainfs %q: exit %d: %s", args, code, stderr)
		}
		var infos []struct {
			Chainfs struct {
				Damage map[string]int64 `json:"damage"`
			} `json:"chainfs"`
		}
		if err := json.Unmarshal([]byte(out), &infos); err != nil {
			t.Fatalf("chainfs %q: %v\n%s", args, err, out)
		}
		for i, info := range infos {
			for k, n := range info.Chainfs.Damage {
				if i != 0 || k != key || n <= 0 {
					t.Errorf("chainfs %q: layer %d counts %d of damage %q", args, i, n, k)
				}
			}
		}
		if check && key != "" && infos[0].Chainfs.Damage[key] == 0 {
			t.Errorf("chainfs %q: no %q damage in the top layer:\n%s", args, key, out)
		}
	}
}

package layers_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
)

const (
	l1Mask   = 0x00fffffffffffe00
	copied   = uint64(1) << 63
	compBit  = uint64(1) << 62
	hdrL1Off = 40
)

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// l1 returns the file offset of L1 entry i.
func l1(t *testing.T, path string, i int64) int64 {
	return int64(imagetest.ReadBE64(t, path, hdrL1Off)) + 8*i
}

// l2 returns the file offset of the L2 table of L1 entry i.
func l2(t *testing.T, path string, i int64) int64 {
	return int64(imagetest.ReadBE64(t, path, l1(t, path, i)) & l1Mask)
}

type brokenRow struct {
	name string
	// make builds the image in dir and returns its path and the
	// substrings the error must contain.
	make func(t *testing.T, dir string) (path string, msg []string)
	is   error
	// atRead: Open succeeds and the first whole read fails.
	atRead bool
	// qemu is what QEMU 7.2 does with the image: "refuses" (qemu-img
	// convert fails) or "reads" (it reads it, where chainfs refuses a
	// structure that points outside the file: QEMU's file driver reads
	// zeroes past the end of the file, so it reads an L1 or L2 table
	// there as all unallocated and a data cluster there as zeroes);
	// "" when not compared.
	qemu string
}

func brokenRows() []brokenRow {
	small := func(t *testing.T, dir, name string, opts ...string) string {
		p := imagetest.Create(t, dir, name, "qcow2", 1*MiB, opts...)
		imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 4k", "write -P 2 100k 4k")
		return p
	}
	return []brokenRow{
		{name: "L2 table past the end of the file", is: layers.ErrCorrupt, atRead: true, qemu: "reads",
			make: func(t *testing.T, dir string) (string, []string) {
				// 512 B clusters: an L2 table maps 32 KiB, so 100k is in L1 entry 3.
				p := small(t, dir, "top.qcow2", "cluster_size=512")
				bad := (fileSize(t, p) + 0x10000) &^ 511
				imagetest.PatchBE64(t, p, l1(t, p, 3), copied|uint64(bad))
				return p, []string{fmt.Sprintf("top.qcow2: L2 table at %#x (L1 index 3) lies beyond end of file (%#x)", bad, fileSize(t, p))}
			}},
		{name: "L2 table offset not cluster aligned", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				bad := l2(t, p, 0) + 512
				imagetest.PatchBE64(t, p, l1(t, p, 0), copied|uint64(bad))
				return p, []string{fmt.Sprintf("top.qcow2: L2 table offset %#x (L1 index 0) is not cluster aligned", bad)}
			}},
		{name: "data cluster past the end of the file", is: layers.ErrCorrupt, atRead: true, qemu: "reads",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				bad := uint64(4 * MiB)
				l2off := l2(t, p, 0)
				imagetest.PatchBE64(t, p, l2off+8*25, copied|bad) // guest 100 KiB
				return p, []string{fmt.Sprintf("top.qcow2: data cluster for guest offset 0x19000 at %#x lies beyond end of file (%#x) (L2 table at %#x, index 25)",
					bad, fileSize(t, p), l2off)}
			}},
		{name: "data cluster offset not cluster aligned", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				l2off := l2(t, p, 0)
				e := imagetest.ReadBE64(t, p, l2off)
				imagetest.PatchBE64(t, p, l2off, e+512)
				return p, []string{fmt.Sprintf("top.qcow2: cluster allocation offset %#x is not cluster aligned (guest offset 0x0, L2 table at %#x, index 0)",
					(e+512)&l1Mask, l2off)}
			}},
		{name: "zero flag in a version 2 image", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "v2.qcow2", "compat=0.10", "cluster_size=4096")
				l2off := l2(t, p, 0)
				imagetest.PatchBE64(t, p, l2off+8, 1) // guest 4 KiB: plain zero
				return p, []string{fmt.Sprintf("v2.qcow2: zero cluster entry in a version 2 image for guest offset 0x1000 (L2 table at %#x, index 1)", l2off)}
			}},
		{name: "compressed cluster past the end of the file", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB)
				imagetest.QemuIO(t, "qcow2", p, "write -c -P 1 64k 64k")
				l2off := l2(t, p, 0)
				e := imagetest.ReadBE64(t, p, l2off+8)
				// 64 KiB clusters: the host offset is bits 0-53.
				bad := uint64(fileSize(t, p) + 12345)
				imagetest.PatchBE64(t, p, l2off+8, e&^(1<<54-1)|bad)
				return p, []string{fmt.Sprintf("z.qcow2: compressed cluster for guest offset 0x10000 at %#x lies beyond end of file", bad)}
			}},
		{name: "compressed zlib stream that does not inflate", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB)
				imagetest.QemuIO(t, "qcow2", p, "write -c -P 1 64k 64k")
				e := imagetest.ReadBE64(t, p, l2(t, p, 0)+8)
				host := int64(e & (1<<54 - 1))
				imagetest.Patch(t, p, host, []byte(strings.Repeat("\xff", 32)))
				return p, []string{fmt.Sprintf("z.qcow2: compressed cluster at %#x", host), "for guest offset 0x10000 does not inflate to one cluster"}
			}},
		{name: "compressed zstd stream cut short", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "z.qcow2", "qcow2", 1*MiB, "compression_type=zstd")
				src := pattern(64*KiB, 5)
				copy(src[32*KiB:], make([]byte, 32*KiB)) // compressible, several sectors long
				rawSrc := filepath.Join(dir, "src.raw")
				os.WriteFile(rawSrc, src, 0o644)
				imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", rawSrc, p)
				l2off := l2(t, p, 0)
				e := imagetest.ReadBE64(t, p, l2off)
				if e&compBit == 0 {
					t.Fatalf("cluster 0 is not compressed: %#x", e)
				}
				// Keep one 512-byte sector of the stream: sectors field (bits 54-61) = 0.
				imagetest.PatchBE64(t, p, l2off, e&^(uint64(0xff)<<54))
				return p, []string{"z.qcow2: compressed cluster at", "does not inflate to one cluster"}
			}},
		{name: "extended L2 bitmap with a subcluster both allocated and zero", is: layers.ErrCorrupt, atRead: true, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := imagetest.Create(t, dir, "ext.qcow2", "qcow2", 1*MiB, "extended_l2=on")
				imagetest.QemuIO(t, "qcow2", p, "write -P 1 0 64k")
				l2off := l2(t, p, 0)
				imagetest.PatchBE64(t, p, l2off+8, 0x00000001_ffffffff)
				return p, []string{fmt.Sprintf("ext.qcow2: invalid extended L2 bitmap 0x00000001ffffffff for guest cluster 0x0 (L2 table at %#x, index 0)", l2off)}
			}},
		{name: "L1 table past the end of the file", is: layers.ErrCorrupt, qemu: "reads",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bad := uint64(fileSize(t, p)+0xffff) &^ 0xffff
				imagetest.PatchBE64(t, p, hdrL1Off, bad)
				return p, []string{fmt.Sprintf("top.qcow2: L1 table at %#x (%d entries) lies beyond end of file (%#x)",
					bad, imagetest.ReadBE32(t, p, 36), fileSize(t, p))}
			}},
		{name: "empty L1 table at an offset past 2^63", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "empty.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", p, "0")
				imagetest.PatchBE64(t, p, hdrL1Off, 0x8000000000000000) // l1_size is 0
				return p, []string{"empty.qcow2: header: L1 table offset 0x8000000000000000 is invalid"}
			}},
		{name: "refcount table past the end of the file", is: layers.ErrCorrupt, qemu: "reads",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bad := uint64(fileSize(t, p)+0xffff) &^ 0xffff
				imagetest.PatchBE64(t, p, 48, bad)
				return p, []string{fmt.Sprintf("top.qcow2: refcount table at %#x (1 clusters) lies beyond end of file (%#x)", bad, fileSize(t, p))}
			}},
		{name: "cluster_bits 22", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE32(t, p, 20, 22)
				return p, []string{"top.qcow2: header: cluster_bits 22 outside 9..21"}
			}},
		{name: "data_file_raw without a data file", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE64(t, p, 88, imagetest.ReadBE64(t, p, 88)|layers.AutoclearDataFileRaw)
				return p, []string{"top.qcow2: header: data_file_raw set without an external data file"}
			}},
		{name: "backing file name offset beyond the first cluster", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				imagetest.PatchBE64(t, p, 8, 8192)
				return p, []string{"top.qcow2: header: backing file name offset 0x2000 lies beyond the first cluster"}
			}},
		{name: "extended L2 with 4 KiB clusters", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2", "cluster_size=4096")
				setIncompat(layers.IncompatExtendedL2)(t, p)
				return p, []string{"top.qcow2: header: extended L2 entries need clusters of at least 16 KiB"}
			}},
		{name: "bitmaps extension with no bitmaps", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE32(t, p, off+8, 0)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: no bitmaps", off)}
			}},
		{name: "bitmaps extension with a huge directory", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE64(t, p, off+16, 1<<40)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: bitmap directory of 1099511627776 bytes exceeds", off)}
			}},
		{name: "bitmaps extension with an unaligned directory", is: layers.ErrCorrupt, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				bitmap("b0", "--add")(t, p)
				off := findExtension(t, p, 0x23852875)
				imagetest.PatchBE64(t, p, off+24, imagetest.ReadBE64(t, p, off+24)+8)
				return p, []string{fmt.Sprintf("top.qcow2: bitmaps extension at %#x: bitmap directory offset", off), "is not cluster aligned"}
			}},
		{name: "qcow2 version 4", is: layers.ErrUnsupported, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				imagetest.PatchBE32(t, p, 4, 4)
				return p, []string{"top.qcow2: qcow2 version 4 is not supported"}
			}},
		{name: "unknown incompatible feature bit without a name", is: layers.ErrUnsupported, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				setIncompat(1<<9)(t, p)
				return p, []string{"top.qcow2: unsupported incompatible feature bit 9"}
			}},
		{name: "unknown incompatible feature bit named in the feature table", is: layers.ErrUnsupported, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := small(t, dir, "top.qcow2")
				renameFeature(4, 9, "test feature")(t, p)
				setIncompat(1<<9)(t, p)
				return p, []string{`top.qcow2: unsupported incompatible feature bit 9 ("test feature")`}
			}},
		{name: "LUKS-encrypted", is: layers.ErrEncrypted, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "luks.qcow2")
				args := []string{"create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=abc",
					"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100", p, "1M"}
				// QEMU's PBKDF benchmark now and then fails with "Unable
				// to get accurate CPU usage" on a busy machine: retry.
				for try := 0; ; try++ {
					_, stderr, err := imagetest.RunErr(t, dir, "qemu-img", args...)
					if err == nil {
						break
					}
					if try == 9 || !strings.Contains(stderr, "accurate CPU usage") {
						t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, stderr)
					}
				}
				return p, []string{"luks.qcow2: LUKS-encrypted qcow2"}
			}},
		{name: "AES-encrypted", is: layers.ErrEncrypted, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "aes.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=abc",
					"-o", "encryption=on,encrypt.key-secret=sec0", p, "1M")
				return p, []string{"aes.qcow2: AES-encrypted qcow2"}
			}},
		{name: "missing backing file", is: layers.ErrChain, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				b := small(t, dir, "base.qcow2")
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.qcow2", "backing_fmt=qcow2")
				os.Remove(b)
				return p, []string{`top.qcow2: backing file "base.qcow2"`, "no such file"}
			}},
		// QEMU 7.2's qemu-img convert hangs on this one.
		{name: "backing chain loop", is: layers.ErrChain, qemu: "",
			make: func(t *testing.T, dir string) (string, []string) {
				a := small(t, dir, "a.qcow2")
				imagetest.Create(t, dir, "b.qcow2", "qcow2", 0, "backing_file=a.qcow2", "backing_fmt=qcow2")
				imagetest.QemuImg(t, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
				return a, []string{"backing chain loop"}
			}},
		{name: "backing named by a protocol", is: layers.ErrUnsupported, qemu: "refuses",
			make: func(t *testing.T, dir string) (string, []string) {
				p := filepath.Join(dir, "top.qcow2")
				imagetest.QemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", "nbd+unix:///?socket=/nonexistent", "-F", "raw", p, "1M")
				return p, []string{"names a protocol"}
			}},
		{name: "backing format vmdk", is: layers.ErrUnsupported, qemu: "",
			make: func(t *testing.T, dir string) (string, []string) {
				imagetest.Create(t, dir, "base.vmdk", "vmdk", 1*MiB)
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.vmdk", "backing_fmt=vmdk")
				return p, []string{`backing format "vmdk" of "base.vmdk" is not supported`}
			}},
		{name: "probed backing in a foreign format", is: layers.ErrUnsupported, qemu: "",
			make: func(t *testing.T, dir string) (string, []string) {
				imagetest.Create(t, dir, "base.img", "qed", 1*MiB)
				p := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.img", "backing_fmt=qed")
				dropBackingFormat(t, p)
				return p, []string{"base.img: qed images are not supported"}
			}},
	}
}

// TestBrokenImages opens hand-broken and unsupported images: each must fail
// with an error that errors.Is the right sentinel and whose message names
// the file, the structure and its offset.
func TestBrokenImages(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	for _, r := range brokenRows() {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p, msg := r.make(t, dir)
			log, _ := testLog()
			c, err := layers.Open(p, &layers.Options{Log: log})
			if err == nil {
				defer c.Close()
				if !r.atRead {
					t.Fatalf("Open succeeded, want an error containing %q", msg)
				}
				buf := make([]byte, c.Top().Size)
				_, err = c.Top().ReadAt(buf, 0)
				if err == nil {
					t.Fatalf("ReadAt succeeded, want an error containing %q", msg)
				}
				// A bounded Status over the image fails the same way,
				// except for broken compressed streams that only a read
				// inflates.
				if _, serr := c.Top().Status(nil, 0, c.Top().Size); serr != nil && serr.Error() != err.Error() {
					t.Errorf("Status error %q differs from ReadAt error %q", serr, err)
				}
			} else if r.atRead {
				t.Fatalf("Open: %v; want it to succeed and reads to fail", err)
			}
			mustIs(t, err, r.is)
			contains(t, err, msg...)
			var fe *layers.FormatError
			if errors.Is(err, layers.ErrCorrupt) && !errors.As(err, &fe) {
				t.Errorf("corruption error %v is not a *FormatError", err)
			}
			switch r.qemu {
			case "refuses":
				if _, stderr, err := imagetest.RunErr(t, dir, "qemu-img", "convert", "-O", "raw", p, filepath.Join(dir, "out.raw")); err == nil {
					t.Errorf("qemu-img convert reads the image; the row says QEMU refuses it")
				} else {
					t.Logf("QEMU: %s", strings.TrimSpace(stderr))
				}
			case "reads":
				if _, stderr, err := imagetest.RunErr(t, dir, "qemu-img", "convert", "-O", "raw", p, filepath.Join(dir, "out.raw")); err != nil {
					t.Errorf("qemu-img convert refuses the image (%s); the row says QEMU reads it", stderr)
				}
			}
		})
	}
}

// TestChainLimits: MaxDepth bounds the chain.
func TestChainLimits(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	dir := t.TempDir()
	imagetest.Create(t, dir, "l0.qcow2", "qcow2", 1*MiB)
	for i := 1; i < 5; i++ {
		imagetest.Create(t, dir, fmt.Sprintf("l%d.qcow2", i), "qcow2", 0,
			fmt.Sprintf("backing_file=l%d.qcow2", i-1), "backing_fmt=qcow2")
	}
	top := filepath.Join(dir, "l4.qcow2")
	log, _ := testLog()
	if _, err := layers.Open(top, &layers.Options{MaxDepth: 4, Log: log}); !errors.Is(err, layers.ErrChain) {
		t.Fatalf("Open with MaxDepth 4 of a 5-layer chain: %v, want ErrChain", err)
	}
	c, err := layers.Open(top, &layers.Options{MaxDepth: 5, Log: log})
	if err != nil {
		t.Fatalf("Open with MaxDepth 5 of a 5-layer chain: %v", err)
	}
	c.Close()
}

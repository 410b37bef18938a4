package layers

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// TestZstdReservedModeBits: a zstd cluster whose Symbol_Compression_Modes
// byte has its reserved bits set reads as QEMU reads it (with the libzstd
// of the oracle machines, which ignores them), in every cluster of an
// image qemu-img compressed, against both QEMUs.
func TestZstdReservedModeBits(t *testing.T) {
	oracles := imagetest.Oracles(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = "the quick brown fox jumps over the lazy dog "[i%44] + byte(i/4096)
	}
	if err := os.WriteFile(plain, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "z.qcow2")
	imagetest.QemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd", plain, img)

	c, err := Open(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	exts, err := c.Top().Status(nil, 0, c.Top().Size)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	patched := 0
	for _, e := range exts {
		if e.Kind != Compressed {
			continue
		}
		for off := e.Offset; off < e.Offset+e.Length; off += 64 << 10 {
			c, err := Open(img, nil)
			if err != nil {
				t.Fatal(err)
			}
			one, err := c.Top().Status(nil, off, 1)
			c.Close()
			if err != nil || len(one) != 1 {
				t.Fatalf("status at %#x: %v %v", off, one, err)
			}
			stream := make([]byte, one[0].CompressedSize)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.ReadAt(stream, one[0].HostOffset)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			var modes []int
			if _, _, err := walkZstdFrame(stream, func(b zstdBlock) {
				if b.typ != zstdCompressed {
					return
				}
				if i, ok := seqModesByte(stream[b.at : b.at+b.size]); ok {
					modes = append(modes, b.at+i)
				}
			}); err != nil {
				t.Fatalf("cluster at %#x: %v", off, err)
			}
			for _, i := range modes {
				imagetest.Patch(t, img, one[0].HostOffset+int64(i), []byte{stream[i] | 3})
				patched++
			}
		}
	}
	if patched == 0 {
		t.Fatal("no modes byte found to patch: the test data compresses without sequences")
	}
	c, err = Open(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, c.Top().Size)
	if _, err := c.Top().ReadAt(got, 0); err != nil {
		t.Fatalf("reading %d patched modes bytes: %v", patched, err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("the patched image reads other bytes than were compressed")
	}
	for _, q := range oracles {
		if want := q.ConvertRaw(t, img, "qcow2"); !bytes.Equal(got, want) {
			t.Errorf("differs from %s's qemu-img convert", q.Name(t))
		}
	}
}

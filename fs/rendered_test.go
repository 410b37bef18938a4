package fs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/internal/lru"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// TestRenderedTextBounded mounts a layer whose map and depth span several
// chunks with a chunk cache that holds one chunk: every read renders its
// chunks again from their marks, and must give the text status renders,
// at every offset and across chunk boundaries.
func TestRenderedTextBounded(t *testing.T) {
	dir := t.TempDir()
	img := imagetest.Create(t, dir, "frag.qcow2", "qcow2", 32<<20, "cluster_size=4096")
	var cmds []string
	for i := range 3000 {
		if i%3 == 2 {
			cmds = append(cmds, fmt.Sprintf("write -z %d 4k", i*8192))
		} else {
			cmds = append(cmds, fmt.Sprintf("write -P %d %d 4k", 1+i%200, i*8192))
		}
	}
	imagetest.QemuIO(t, "qcow2", img, cmds...)
	chain, err := layers.Open(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()

	opts := &Options{Log: strictLog(t), Debug: testing.Verbose()}
	root := NewRoot(chain, opts).(*rootNode)
	root.texts = lru.New[chunkKey, []byte](1)
	mnt := t.TempDir()
	srv, err := gofs.Mount(mnt, root, GoFuseOptions(chain, opts))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()

	for _, tc := range []struct {
		suffix string
		text   status.Text
	}{{".map.json", status.MapJSON}, {".depth", status.DepthText}} {
		var want bytes.Buffer
		if err := tc.text.Render(&want, chain.Top(), status.Mark{}, nil); err != nil {
			t.Fatal(err)
		}
		if want.Len() < 3*renderChunk {
			t.Fatalf("%s: %d bytes, want several chunks", tc.suffix, want.Len())
		}
		p := filepath.Join(mnt, "0-frag.qcow2"+tc.suffix)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(want.Len()) {
			t.Fatalf("%s: st_size %d, want %d", tc.suffix, fi.Size(), want.Len())
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%s: read %d bytes differing from the rendering", tc.suffix, len(got))
		}
		// Reads that start and end anywhere, around chunk boundaries too,
		// straight through the node (the kernel now caches the file).
		n := root.GetChild("0-frag.qcow2" + tc.suffix).Operations().(*renderedNode)
		rng := rand.New(rand.NewPCG(1, 2))
		for range 50 {
			off := rng.Int64N(int64(want.Len()))
			if rng.IntN(2) == 0 {
				off = renderChunk*(1+rng.Int64N(2)) - rng.Int64N(300)
			}
			buf := make([]byte, 1+rng.IntN(3*renderChunk))
			res, errno := n.Read(t.Context(), nil, buf, off)
			if errno != 0 {
				t.Fatalf("%s: read at %d: %v", tc.suffix, off, errno)
			}
			b, _ := res.Bytes(nil)
			if end := min(int64(want.Len()), off+int64(len(buf))); !bytes.Equal(b, want.Bytes()[off:end]) {
				t.Fatalf("%s: read of %d at %d differs from the rendering", tc.suffix, len(buf), off)
			}
		}
	}
}

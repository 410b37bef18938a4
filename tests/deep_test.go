package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// TestDeepChainMounted mounts a chain of 24 layers, each holding a random
// mix of data, zeroes, discards and compressed clusters over a raw base,
// lists and sizes it as ls -l and du do, then holds layers from the top,
// the middle and the bottom to QEMU through the mount (bytes, st_blocks,
// map and depth files, SEEK_DATA/SEEK_HOLE, cp --sparse).
func TestDeepChainMounted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	built := imagetest.DeepChain{Layers: 24, Size: 2 << 20, Seed: 3, Mixed: true}.Build(t, dir)
	var chain []layer
	for _, b := range built {
		chain = append(chain, layer{b.Path, b.Format})
	}
	mnt := mount(t, chain[0].path)
	checkNames(t, mnt, chain)
	out, err := exec.Command("ls", "-l", mnt).CombinedOutput()
	if err != nil || strings.Count(string(out), "\n") != 3*len(chain)+1 {
		t.Fatalf("ls -l: %v\n%s", err, out)
	}
	if out, err := exec.Command("du", "-s", mnt).CombinedOutput(); err != nil {
		t.Fatalf("du -s: %v\n%s", err, out)
	}
	// Every map and depth file reads to its size.
	for i, l := range chain {
		for _, suffix := range []string{".map.json", ".depth"} {
			p := filepath.Join(mnt, viewName(i, l)+suffix)
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(p); err != nil || int64(len(b)) != fi.Size() || len(b) == 0 {
				t.Errorf("%s: read %d bytes, %v; st_size %d", p, len(b), err, fi.Size())
			}
		}
	}
	for _, i := range []int{0, len(chain) / 2, len(chain) - 1} {
		t.Run(fmt.Sprintf("layer %d %s", i, filepath.Base(chain[i].path)), func(t *testing.T) {
			checkLayer(t, mnt, i, chain[i])
		})
	}
}

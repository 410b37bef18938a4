package layers

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// TestResolvePathsAgree resolves every window of every layer of deep
// random chains in every way the resolver can: swept from a column built
// from the top, from the middle, or extended upwards; overlaid for a view
// outside the column (as an internal snapshot is); and walked directly,
// as first reads and broken windows are. All must give the same runs. A
// small budget makes answers fall out of the cache between layers.
func TestResolvePathsAgree(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	for _, row := range []struct {
		name       string
		chain      imagetest.DeepChain
		budget     int64
		windowBits uint // 0: the chain's own
		sparse     bool // some stretch of some layer maps nothing down to the decider
	}{
		{"20 layers, default budget", imagetest.DeepChain{Layers: 20, Size: 2 << 20, Seed: 7, Ops: 10}, 0, 0, false},
		{"20 layers, 128 KiB windows", imagetest.DeepChain{Layers: 20, Size: 2 << 20, Seed: 9, Ops: 10}, 0, 17, false},
		{"16 mixed layers, 64 KiB windows, 64 KiB budget", imagetest.DeepChain{Layers: 16, Size: 1 << 20, Seed: 8, Ops: 12, Mixed: true}, 64 << 10, 16, false},
		{"12 sparse mixed layers of 2 GiB over a qcow2 base", imagetest.DeepChain{Layers: 12, Size: 2 << 30, Seed: 12, Ops: 5, Mixed: true, QcowBase: true}, 0, 0, true},
	} {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			built := row.chain.Build(t, t.TempDir())
			c, err := Open(built[0].Path, &Options{ResolvedBytes: row.budget})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := c.Top().res
			if row.windowBits != 0 {
				r.windowBits = row.windowBits
			}
			win := int64(1) << r.windowBits
			rng := rand.New(rand.NewPCG(row.chain.Seed, 1))
			order := rng.Perm(len(c.Layers))
			empty := 0
			for _, i := range order {
				l := c.Layers[i]
				view := *l // a layer outside the column, over the same chain
				var whole []Run
				for ws := int64(0); ws < l.Size; ws += win {
					we := min(ws+win, l.Size)
					want, err := l.direct(nil, ws, we, true)
					if err != nil {
						t.Fatalf("layer %d: direct walk of [%#x, %#x): %v", i, ws, we, err)
					}
					whole = append(whole, want...)
					want = normalize(want)
					got, err := l.Resolve(nil, ws, we-ws)
					if err != nil {
						t.Fatalf("layer %d: Resolve [%#x, %#x): %v", i, ws, we, err)
					}
					if d := diffRuns(normalize(got), want); d != "" {
						t.Fatalf("layer %d: column sweep of [%#x, %#x) differs from the walk: %s", i, ws, we, d)
					}
					got, err = view.Resolve(nil, ws, we-ws)
					if err != nil {
						t.Fatalf("view of layer %d: Resolve: %v", i, err)
					}
					for j := range got {
						if got[j].Layer == &view {
							got[j].Layer = l
						}
					}
					if d := diffRuns(normalize(got), want); d != "" {
						t.Fatalf("view of layer %d: overlay of [%#x, %#x) differs from the walk: %s", i, ws, we, d)
					}
					// A read-sized piece, resolved as reads are.
					off := ws + rng.Int64N(we-ws)
					end := min(we, off+1+rng.Int64N(256<<10))
					clipped, _ := appendRange(nil, want, 0, off, end)
					for range 2 { // first touch walks, the second resolves the window
						got, err = l.resolveRead(nil, off, end)
						if err != nil {
							t.Fatalf("layer %d: resolveRead: %v", i, err)
						}
						if d := diffRuns(normalize(got), normalize(clipped)); d != "" {
							t.Fatalf("layer %d: read runs of [%#x, %#x) differ from the walk: %s", i, off, end, d)
						}
					}
				}
				got, err := l.Resolve(nil, 0, l.Size)
				if err != nil {
					t.Fatalf("layer %d: Resolve whole: %v", i, err)
				}
				es := newEmptyScan(l)
				for off := int64(0); off < l.Size; off += win {
					if _, ok := es.next(off, min(off+win, l.Size)); ok {
						empty++
					}
				}
				if d := diffRuns(normalize(got), normalize(whole)); d != "" {
					t.Fatalf("layer %d: whole layer differs from the walks: %s", i, d)
				}
			}
			if row.sparse && empty == 0 {
				t.Error("no layer has an empty stretch: the row does not test them")
			}
		})
	}
}

// normalize merges neighbouring runs that are one piece of the same
// decision: the same layer, kind and file, host-contiguous (or the same
// compressed cluster). Walks and sweeps may cut a decision at different
// points (where layers above change between two kinds of nothing).
func normalize(runs []Run) []Run {
	var out []Run
	for _, r := range runs {
		if n := len(out); n > 0 {
			p := &out[n-1]
			same := p.Layer == r.Layer && p.Kind == r.Kind && p.HostHole == r.HostHole && p.File == r.File && p.End() == r.Offset
			if same && r.Kind == Compressed {
				same = p.HostOffset == r.HostOffset && p.CompressedSize == r.CompressedSize
			} else if same && r.File != nil {
				same = p.HostOffset+p.Length == r.HostOffset
			}
			if same {
				p.Length += r.Length
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func diffRuns(got, want []Run) string {
	str := func(r Run) string {
		s := fmt.Sprintf("[%#x+%#x %v layer %d", r.Offset, r.Length, r.Kind, r.Layer.Index)
		if r.File != nil {
			s += fmt.Sprintf(" host %#x", r.HostOffset)
		}
		if r.HostHole {
			s += " hole"
		}
		return s + "]"
	}
	if slices.Equal(got, want) {
		return ""
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("run %d: got %s, want %s", i, str(got[i]), str(want[i]))
		}
	}
	return fmt.Sprintf("%d runs, want %d", len(got), len(want))
}

// TestResolveErrorsDoNotWiden: a broken L2 entry in a lower layer, under a
// cluster the layer above holds, must not break the layer above (its walk
// never asks for that entry), whatever column the resolver tried first;
// the broken layer itself fails to map, and fails to read only there.
func TestResolveErrorsDoNotWiden(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.qcow2", "qcow2", 4<<20)
	imagetest.QemuIO(t, "qcow2", base, "write -P 1 0 1M")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 4<<20, "backing_file=base.qcow2", "backing_fmt=qcow2")
	imagetest.QemuIO(t, "qcow2", top, "write -P 2 0 64k")
	// Misalign the host offset of the base's first cluster.
	l1 := imagetest.ReadBE64(t, base, 40)
	l2 := imagetest.ReadBE64(t, base, int64(l1)) & l1OffsetMask
	imagetest.PatchBE64(t, base, int64(l2), imagetest.ReadBE64(t, base, int64(l2))+512)

	for _, first := range []int{1, 0} { // build the column from the base first, or from the top
		c, err := Open(top, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Layers[first].Resolve(nil, 0, c.Layers[first].Size); (err != nil) != (first == 1) {
			t.Fatalf("layer %d: Resolve: %v", first, err)
		}
		if _, err := c.Top().Resolve(nil, 0, c.Top().Size); err != nil {
			t.Errorf("top over a broken base cluster it covers: %v", err)
		}
		buf := make([]byte, 4<<20)
		if _, err := c.Top().ReadAt(buf, 0); err != nil {
			t.Errorf("top: read: %v", err)
		}
		b := c.Layers[1]
		if _, err := b.ReadAt(buf[:64<<10], 0); err == nil {
			t.Error("base: read of the broken cluster succeeded")
		}
		for range 2 { // a first and a second touch of the window
			if _, err := b.ReadAt(buf[:1<<20], 64<<10); err != nil {
				t.Errorf("base: read past the broken cluster: %v", err)
			}
		}
		c.Close()
	}
}

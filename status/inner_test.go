package status_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// TestSnapshotMapsAgainstQEMU checks the map and the allocation depth of
// every internal snapshot of every layer against both QEMUs, byte for
// byte: `qemu-img map --output=json` and nbdinfo's qemu:allocation-depth
// over `qemu-nbd -A` of a copy of the layer on which `qemu-img snapshot
// -a` applied the snapshot (whose host offsets are the original's).
func TestSnapshotMapsAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	for _, c := range imagetest.SnapshotCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			chain := openInner(t, c)
			for _, l := range chain.Layers {
				for i, s := range l.Snapshots() {
					v, err := l.SnapshotLayer(i)
					if err != nil {
						t.Fatal(err)
					}
					var m, d bytes.Buffer
					if err := status.WriteMapJSON(&m, v); err != nil {
						t.Fatalf("layer %d snapshot %q: map: %v", l.Index, s.Name, err)
					}
					if err := status.WriteDepth(&d, v); err != nil {
						t.Fatalf("layer %d snapshot %q: depth: %v", l.Index, s.Name, err)
					}
					for _, q := range oracles {
						applied := q.Applied(t, l.Path, s.ID)
						if got, want := q.AsPrinted(t, m.String()), q.MapJSON(t, applied, "qcow2"); got != want {
							t.Errorf("layer %d snapshot %q: map differs from %s's qemu-img map\nours:\n%s\nqemu-img:\n%s", l.Index, s.Name, q.Name(t), got, want)
						}
						if want := q.NBDDepth(t, applied, "qcow2", false); d.String() != want {
							t.Errorf("layer %d snapshot %q: depth differs from nbdinfo over %s's qemu-nbd\nours:\n%s\nnbdinfo:\n%s", l.Index, s.Name, q.Name(t), d.String(), want)
						}
					}
				}
			}
		})
	}
}

// TestBitmapsAgainstQEMU checks the rendering of every persistent bitmap
// of every layer against nbdinfo's qemu:dirty-bitmap map over both QEMUs'
// `qemu-nbd -B` of the layer's file, text and JSON, byte for byte.
func TestBitmapsAgainstQEMU(t *testing.T) {
	oracles := imagetest.Oracles(t)
	for _, c := range imagetest.BitmapCases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			chain := openInner(t, c)
			for _, l := range chain.Layers {
				for i := range l.Bitmaps() {
					b := &l.Bitmaps()[i]
					var text, js bytes.Buffer
					if err := status.WriteBitmap(&text, b); err != nil {
						t.Fatalf("layer %d bitmap %q: %v", l.Index, b.Name, err)
					}
					if err := status.WriteBitmapJSON(&js, b); err != nil {
						t.Fatalf("layer %d bitmap %q: %v", l.Index, b.Name, err)
					}
					for _, q := range oracles {
						if want := q.NBDBitmap(t, l.Path, l.Format.String(), b.Name, false); text.String() != want {
							t.Errorf("layer %d bitmap %q differs from nbdinfo over %s's qemu-nbd -B\nours:\n%s\nnbdinfo:\n%s", l.Index, b.Name, q.Name(t), text.String(), want)
						}
						if want := q.NBDBitmap(t, l.Path, l.Format.String(), b.Name, true); js.String() != want {
							t.Errorf("layer %d bitmap %q: JSON differs from nbdinfo --json over %s's qemu-nbd -B\nours:\n%s\nnbdinfo:\n%s", l.Index, b.Name, q.Name(t), js.String(), want)
						}
					}
				}
			}
		})
	}
}

// openInner builds a chain of an InnerCase and opens it for the test.
func openInner(t *testing.T, c imagetest.InnerCase) *layers.Chain {
	t.Helper()
	top := c.Build(t, t.TempDir())
	chain, err := layers.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chain.Close() })
	return chain
}

// TestBitmapDescription: nbdinfo's words for the two values.
func TestBitmapDescription(t *testing.T) {
	for _, r := range []struct {
		e    status.BitmapExtent
		want string
	}{{status.BitmapExtent{Dirty: true}, "1 dirty"}, {status.BitmapExtent{}, "0 clean"}} {
		if got := fmt.Sprintf("%d %s", r.e.Type(), status.BitmapDescription(r.e.Dirty)); got != r.want {
			t.Errorf("%+v: %q, want %q", r.e, got, r.want)
		}
	}
}

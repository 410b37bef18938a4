package status_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/layers"
	"github.com/chainfs/chainfs/status"
)

// deepRows are deep chains whose layers each hold a random mix of data,
// zeroes, discards and compressed clusters (fixed seeds). CI keeps them a
// few dozen layers deep; the benchmarks go to 256.
var deepRows = []struct {
	name  string
	chain imagetest.DeepChain
}{
	{"32 layers of 64 KiB clusters", imagetest.DeepChain{Layers: 32, Size: 4 << 20, Seed: 1}},
	{"24 layers over a raw base, mixed clusters, extended L2, short layers", imagetest.DeepChain{Layers: 24, Size: 2 << 20, Seed: 2, Mixed: true}},
}

// TestDeepChainsAgainstQEMU checks several layers of each deep chain, not
// only the top, against both QEMUs: the map against qemu-img map, the
// depth against nbdinfo over qemu-nbd -A, the bytes against qemu-img
// convert, and SEEK_DATA/SEEK_HOLE against the map. Layers are asked in an
// order that makes the resolver build columns from the middle of the
// chain and then extend them upwards.
func TestDeepChainsAgainstQEMU(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
	oracles := imagetest.Oracles(t)
	for _, row := range deepRows {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			built := row.chain.Build(t, t.TempDir())
			chain, err := layers.Open(built[0].Path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer chain.Close()
			n := len(chain.Layers)
			if n != row.chain.Layers {
				t.Fatalf("%d layers, want %d", n, row.chain.Layers)
			}
			for _, i := range []int{n / 2, n - 1, 0, 1, n - 2} {
				l := chain.Layers[i]
				var m, d bytes.Buffer
				if err := status.WriteMapJSON(&m, l); err != nil {
					t.Fatalf("layer %d: map: %v", i, err)
				}
				if err := status.WriteDepth(&d, l); err != nil {
					t.Fatalf("layer %d: depth: %v", i, err)
				}
				got := make([]byte, l.Size)
				if _, err := l.ReadAt(got, 0); err != nil {
					t.Fatalf("layer %d: read: %v", i, err)
				}
				for _, q := range oracles {
					if got, want := q.AsPrinted(t, m.String()), q.MapJSON(t, l.Path, l.Format.String()); got != want {
						t.Errorf("layer %d (%s): map differs from %s's qemu-img map\nours:\n%s\nqemu-img:\n%s", i, l.Path, q.Name(t), got, want)
					}
					if want := q.NBDDepth(t, l.Path, l.Format.String(), false); d.String() != want {
						t.Errorf("layer %d (%s): depth differs from nbdinfo over %s's qemu-nbd\nours:\n%s\nnbdinfo:\n%s", i, l.Path, q.Name(t), d.String(), want)
					}
					if want := q.ConvertRaw(t, l.Path, l.Format.String()); !bytes.Equal(got, want) {
						t.Errorf("layer %d (%s): bytes differ from %s's qemu-img convert", i, l.Path, q.Name(t))
					}
				}
				checkSeekAgainstMap(t, l)
				checkResume(t, l)
			}
		})
	}
}

// checkSeekAgainstMap walks l with SeekData/SeekHole as cp --sparse does
// and compares the data ranges with the map's.
func checkSeekAgainstMap(t *testing.T, l *layers.Layer) {
	t.Helper()
	var want [][2]int64
	err := status.Map(l, 0, l.Size, func(e status.Entry) error {
		if n := len(want); e.Data && n > 0 && want[n-1][1] == e.Start {
			want[n-1][1] = e.End()
		} else if e.Data {
			want = append(want, [2]int64{e.Start, e.End()})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got [][2]int64
	for off := int64(0); ; {
		d, ok, err := status.SeekData(l, off)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		h, err := status.SeekHole(l, d)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, [2]int64{d, h})
		off = h
	}
	if !slices.Equal(got, want) {
		t.Errorf("layer %d: SEEK_DATA/SEEK_HOLE find %v, the map's data is %v", l.Index, got, want)
	}
}

// checkResume renders l's texts whole, noting every mark, then again from
// some of the marks: each must give the whole text from the mark's byte on.
func checkResume(t *testing.T, l *layers.Layer) {
	t.Helper()
	for _, text := range []status.Text{status.MapJSON, status.DepthText} {
		var whole bytes.Buffer
		var marks []status.Mark
		if err := text.Render(&whole, l, status.Mark{}, func(m status.Mark) { marks = append(marks, m) }); err != nil {
			t.Fatal(err)
		}
		if len(marks) == 0 {
			t.Fatalf("layer %d: text %d: no marks", l.Index, text)
		}
		for _, m := range []status.Mark{marks[0], marks[len(marks)/3], marks[len(marks)/2], marks[len(marks)-1]} {
			var part bytes.Buffer
			if err := text.Render(&part, l, m, nil); err != nil {
				t.Fatal(err)
			}
			if want := whole.Bytes()[m.Byte:]; !bytes.Equal(part.Bytes(), want) {
				t.Errorf("layer %d: text %d rendered from %+v:\n%.300s\nwant:\n%.300s", l.Index, text, m, part.String(), want)
			}
		}
	}
}

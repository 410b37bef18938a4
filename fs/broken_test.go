package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"

	"github.com/chainfs/chainfs/internal/imagetest"
	"github.com/chainfs/chainfs/internal/slogrus"
	"github.com/chainfs/chainfs/layers"
)

// brokenChain builds top.qcow2 -> base.raw (1 MiB; base all 0x11, top
// 0x22 over [0, 256k)) and points top's L2 entry for guest 128 KiB past
// the end of its file, as a host crash leaves an image whose growth never
// reached the disk.
func brokenChain(t *testing.T) string {
	dir := t.TempDir()
	base := imagetest.Create(t, dir, "base.raw", "raw", 1<<20)
	imagetest.QemuIO(t, "raw", base, "write -P 0x11 0 1M")
	top := imagetest.Create(t, dir, "top.qcow2", "qcow2", 0, "backing_file=base.raw", "backing_fmt=raw")
	imagetest.QemuIO(t, "qcow2", top, "write -P 0x22 0 256k")
	l1 := int64(imagetest.ReadBE64(t, top, 40))
	l2 := int64(imagetest.ReadBE64(t, top, l1) & 0x00fffffffffffe00)
	imagetest.PatchBE64(t, top, l2+8*2, 1<<63|64<<20) // guest 128k: past EOF
	return top
}

// syncBuffer is a bytes.Buffer that goroutines may write while another
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const pastEOF = "data cluster for guest offset 0x20000 at 0x4000000 lies beyond end of file"

// readPages reads the view page by page at the offsets given and checks
// each against its byte (0: EIO).
func readPages(t *testing.T, view string, pages []struct {
	off  int64
	want byte
}) {
	t.Helper()
	f, err := os.Open(view)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for _, c := range pages {
		_, err := f.ReadAt(buf, c.off)
		switch {
		case c.want == 0 && !errors.Is(err, syscall.EIO):
			t.Errorf("read at %d: %v, want EIO", c.off, err)
		case c.want != 0 && (err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{c.want}, 4096))):
			t.Errorf("read at %d: %v, or not %#x", c.off, err, c.want)
		}
	}
}

// TestBrokenLayer mounts a chain whose top has a data cluster past the end
// of its file, as QEMU reads it (by default) and in strict mode.
//
// By default the cluster reads as zeroes (QEMU's block layer reads past
// EOF as zero), the map files render and match qemu-img map with the
// cluster's offset, and the damage is logged once as a warning naming the
// file, the structure and the offsets.
//
// Strict: stat of the view still works (st_blocks falls back to the whole
// size), the broken cluster reads EIO, the good ones around it read, the
// layer's map files fail with EIO at lookup (never a cached empty file),
// and the layer below is untouched.
func TestBrokenLayer(t *testing.T) {
	t.Run("as QEMU reads it", func(t *testing.T) {
		top := brokenChain(t)
		want := imagetest.ConvertRaw(t, top, "qcow2")
		const warning = "top.qcow2: L2 table at 0x40000: 1 data clusters reach past end of file"
		log := strictLog(t, warning)
		var logged syncBuffer // written by the server's goroutines
		log.SetOutput(&logged)
		chain, err := layers.Open(top, &layers.Options{Log: slogrus.New(log)})
		if err != nil {
			t.Fatal(err)
		}
		defer chain.Close()
		mnt := mountChain(t, chain, &Options{Log: strictLog(t)})
		got, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2.raw"))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("the view: %v, or not what qemu-img convert reads", err)
		}
		readPages(t, filepath.Join(mnt, "0-top.qcow2.raw"), []struct {
			off  int64
			want byte
		}{{100 << 10, 0x22}, {192 << 10, 0x22}, {300 << 10, 0x11}})
		m, err := os.ReadFile(filepath.Join(mnt, "0-top.qcow2.map.json"))
		if err != nil {
			t.Fatal(err)
		}
		if want := imagetest.Backports().MapJSON(t, top, "qcow2"); string(m) != want {
			t.Errorf("map differs from qemu-img map:\n%s\nwant:\n%s", m, want)
		}
		if !regexp.MustCompile(`level=warning msg=".*` + regexp.QuoteMeta(warning) + `.*damage=data-cluster-past-eof file=.*top.qcow2 guest_offset=131072 host_offset=67108864 l2_table=262144 structure="data cluster"`).MatchString(logged.String()) {
			t.Errorf("no warning naming the file, structure and offsets:\n%s", logged.String())
		}
		if d := chain.Top().Damage(); d[layers.DamageDataCluster] != 1 || d.Total() != 1 {
			t.Errorf("damage counted %v, want one data cluster", d)
		}
	})

	t.Run("strict", func(t *testing.T) {
		top := brokenChain(t)
		chain, err := layers.Open(top, &layers.Options{Strict: true, Log: slogrus.New(strictLog(t))})
		if err != nil {
			t.Fatal(err)
		}
		defer chain.Close()
		mnt := mountChain(t, chain, &Options{Log: strictLog(t, pastEOF)})

		view := filepath.Join(mnt, "0-top.qcow2.raw")
		var st syscall.Stat_t
		if err := syscall.Stat(view, &st); err != nil {
			t.Fatalf("stat of the broken layer's view: %v", err)
		}
		if st.Size != 1<<20 || st.Blocks != (1<<20)/512 {
			t.Errorf("st_size %d st_blocks %d; want 1 MiB, all of it counted as data", st.Size, st.Blocks)
		}
		readPages(t, view, []struct {
			off  int64
			want byte
		}{{100 << 10, 0x22}, {128 << 10, 0}, {190 << 10, 0}, {192 << 10, 0x22}, {300 << 10, 0x11}, {0, 0x22}})
		for _, name := range []string{"0-top.qcow2.map.json", "0-top.qcow2.depth"} {
			if _, err := os.Stat(filepath.Join(mnt, name)); !errors.Is(err, syscall.EIO) {
				t.Errorf("stat %s: %v, want EIO", name, err)
			}
			if _, err := os.ReadFile(filepath.Join(mnt, name)); !errors.Is(err, syscall.EIO) {
				t.Errorf("read %s: %v, want EIO", name, err)
			}
		}
		got, err := os.ReadFile(filepath.Join(mnt, "1-base.raw.raw"))
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x11}, 1<<20)) {
			t.Errorf("the base layer's view: %v", err)
		}
		for _, name := range []string{"1-base.raw.map.json", "1-base.raw.depth"} {
			if _, err := os.ReadFile(filepath.Join(mnt, name)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
}

package layers

import (
	"bytes"
	stdflate "compress/flate"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"

	"github.com/chainfs/chainfs/internal/imagetest"
)

// Decompression benchmarks: one 64 KiB cluster per op, over the
// compressed clusters of a cloud-image-like disk (Go's source tree, text,
// interleaved with its tool binaries, ELF), compressed by qemu-img. MB/s
// are bytes of cluster out per second on one core, for chainfs's decoders
// against compress/flate and klauspost/compress used as streams.
//
//	go test ./layers -run XXX -bench Inflate -benchtime 2s
//
// With INFLATE_BENCH_DIR set, the images are kept there and reused by the
// next run, which then starts no process (for valgrind --tool=callgrind,
// which counts instructions whatever else the machine runs), and each
// image's compressed streams are written beside it (ctype.streams: a
// little-endian uint32 length, then the stream as the image stores it),
// for the C decoders of tests/bench/decoders.sh.

// cloudLike returns about n bytes of files from the Go installation that
// runs the benchmark, alternating source files and binaries.
func cloudLike(b *testing.B, n int) []byte {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatal(err)
	}
	root := strings.TrimSpace(string(out))
	var text, bins []string
	filepath.WalkDir(filepath.Join(root, "src"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, ".go") {
			text = append(text, p)
		}
		return nil
	})
	filepath.WalkDir(filepath.Join(root, "pkg", "tool"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			bins = append(bins, p)
		}
		return nil
	})
	sort.Strings(text)
	sort.Strings(bins)
	if len(text) == 0 || len(bins) == 0 {
		b.Fatalf("no source files or tool binaries under %s", root)
	}
	var buf []byte
	var tb, bb int // bytes taken from text and binaries
	for ti, bi := 0, 0; len(buf) < n && (ti < len(text) || bi < len(bins)); {
		var p string
		if (tb <= bb && ti < len(text)) || bi >= len(bins) {
			p, ti = text[ti], ti+1
		} else {
			p, bi = bins[bi], bi+1
		}
		c, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		c = c[:min(len(c), 4<<20)]
		if strings.Contains(p, "/pkg/tool/") {
			bb += len(c)
		} else {
			tb += len(c)
		}
		buf = append(buf, c...)
	}
	return buf[:min(len(buf), n)]
}

type benchClusters struct {
	size    int
	streams [][]byte
}

var benchStreams sync.Map // compression type -> *benchClusters

// compressedClusters returns the compressed clusters of a 64 KiB-cluster
// image of cloudLike data compressed with ctype ("zlib", "zstd").
func compressedClusters(b *testing.B, ctype string) *benchClusters {
	if v, ok := benchStreams.Load(ctype); ok {
		return v.(*benchClusters)
	}
	dir := os.Getenv("INFLATE_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	img := filepath.Join(dir, ctype+".qcow2")
	if _, err := os.Stat(img); err != nil {
		raw := filepath.Join(dir, "disk.raw")
		if err := os.WriteFile(raw, cloudLike(b, 32<<20), 0o644); err != nil {
			b.Fatal(err)
		}
		imagetest.QemuImg(b, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536,compression_type="+ctype, raw, img)
		os.Remove(raw)
	}
	c, err := Open(img, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	l := c.Top()
	exts, err := l.Status(nil, 0, l.Size)
	if err != nil {
		b.Fatal(err)
	}
	bc := &benchClusters{size: int(l.ClusterSize)}
	for _, e := range exts {
		if e.Kind != Compressed {
			continue
		}
		s := make([]byte, e.CompressedSize)
		if _, err := e.File.ReadAt(s, e.HostOffset); err != nil {
			b.Fatal(err)
		}
		bc.streams = append(bc.streams, s)
	}
	if len(bc.streams) == 0 {
		b.Fatal("no compressed clusters")
	}
	if os.Getenv("INFLATE_BENCH_DIR") != "" {
		var out []byte
		for _, s := range bc.streams {
			out = binary.LittleEndian.AppendUint32(out, uint32(len(s)))
			out = append(out, s...)
		}
		if err := os.WriteFile(filepath.Join(dir, ctype+".streams"), out, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	benchStreams.Store(ctype, bc)
	return bc
}

func benchInflate(b *testing.B, ctype string, inflate func(dst, src []byte) error) {
	bc := compressedClusters(b, ctype)
	dst := clusterBufs.get(int64(bc.size)) // as the cluster cache's are
	b.SetBytes(int64(bc.size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if err := inflate(dst, bc.streams[i%len(bc.streams)]); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0, int64(bc.size))
}

// cpuTime returns the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds the CPU time per op, and MB/s per CPU second: with
// GOMAXPROCS=1, what one core does whatever else the machine runs (wall
// time per op counts the time other processes hold the core).
func reportCPU(b *testing.B, cpu0 time.Duration, bytesPerOp int64) {
	cpu := cpuTime() - cpu0
	if cpu <= 0 || b.N == 0 {
		return
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(bytesPerOp)*float64(b.N)/cpu.Seconds()/1e6, "MB/cpu-s")
}

func BenchmarkInflate(b *testing.B) {
	b.Run("zlib/chainfs", func(b *testing.B) { benchInflate(b, "zlib", inflateZlib) })
	b.Run("zlib/compress-flate", func(b *testing.B) {
		r := stdflate.NewReader(nil)
		benchInflate(b, "zlib", func(dst, src []byte) error {
			r.(stdflate.Resetter).Reset(bytes.NewReader(src), nil)
			_, err := io.ReadFull(r, dst)
			return err
		})
	})
	b.Run("zlib/klauspost-flate", func(b *testing.B) {
		var br bytes.Reader
		r := kflate.NewReader(&br)
		benchInflate(b, "zlib", func(dst, src []byte) error {
			br.Reset(src)
			r.(kflate.Resetter).Reset(&br, nil)
			_, err := io.ReadFull(r, dst)
			return err
		})
	})
	b.Run("zstd/chainfs", func(b *testing.B) { benchInflate(b, "zstd", inflateZstd) })
	b.Run("zstd/klauspost-stream", func(b *testing.B) {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		defer d.Close()
		benchInflate(b, "zstd", func(dst, src []byte) error {
			if err := d.Reset(bytes.NewReader(src)); err != nil {
				return err
			}
			_, err := io.ReadFull(d, dst)
			return err
		})
	})
	b.Run("zstd/klauspost-DecodeAll", func(b *testing.B) {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		defer d.Close()
		benchInflate(b, "zstd", func(dst, src []byte) error {
			n, _, err := zstdFrameLen(src) // QEMU pads streams to sectors
			if err != nil {
				return err
			}
			_, err = d.DecodeAll(src[:n], dst[:0])
			return err
		})
	})
}

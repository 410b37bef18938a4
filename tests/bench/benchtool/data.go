package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// cmdRandom writes SIZE bytes of ChaCha8 output: incompressible, and
// without zero blocks that qemu-img convert would turn into holes.
func cmdRandom(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: random FILE SIZE [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	rng := newChaCha(seedArg(args, 2))
	buf := make([]byte, 1<<20)
	w := bufio.NewWriterSize(f, 4<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newChaCha(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// cmdStripes writes a sparse file of SIZE whose clusters i with
// i%EVERY == 0 hold random data, the rest holes: converted to qcow2, only
// those clusters are allocated.
func cmdStripes(args []string) error {
	if len(args) < 4 {
		return fmt.Errorf("usage: stripes FILE SIZE CLUSTER EVERY [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	cluster, err := parseSize(args[2])
	if err != nil || cluster == 0 {
		return fmt.Errorf("bad cluster size %q", args[2])
	}
	every, err := strconv.ParseInt(args[3], 10, 64)
	if err != nil || every < 1 {
		return fmt.Errorf("bad stride %q", args[3])
	}
	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	rng := newChaCha(seedArg(args, 4))
	buf := make([]byte, cluster)
	for i := int64(0); i*cluster < size; i += every {
		rng.Read(buf)
		n := cluster
		if off := i * cluster; off+n > size {
			n = size - off
		}
		if _, err := f.WriteAt(buf[:n], i*cluster); err != nil {
			return err
		}
	}
	return f.Close()
}

// cmdText writes compressible data that is not uniform: Zipf-distributed
// words from a random vocabulary in lines of varying length (like logs or
// source text), with zero runs and a few incompressible stretches mixed in,
// decided per 64 KiB chunk.
func cmdText(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: text FILE SIZE [SEED]")
	}
	size, err := parseSize(args[1])
	if err != nil {
		return err
	}
	seed := seedArg(args, 2)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	raw := newChaCha(seed)
	vocab := make([]string, 8192)
	for i := range vocab {
		n := 2 + rng.IntN(11)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		vocab[i] = string(b)
	}
	zipf := rand.NewZipf(rng, 1.1, 4, uint64(len(vocab)-1))
	punct := []string{" ", " ", " ", " ", " ", ", ", ". ", "; ", " = ", "(", ") ", ": "}

	f, err := os.Create(args[0])
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 4<<20)
	const chunk = 64 << 10
	var line strings.Builder
	buf := make([]byte, 0, chunk+256)
	for written := int64(0); written < size; {
		n := int64(chunk)
		if size-written < n {
			n = size - written
		}
		buf = buf[:0]
		switch r := rng.IntN(100); {
		case r < 8: // a zero run
			buf = append(buf, make([]byte, n)...)
		case r < 12: // incompressible (already compressed media, say)
			buf = buf[:n]
			raw.Read(buf)
		default:
			for int64(len(buf)) < n {
				line.Reset()
				fmt.Fprintf(&line, "%06d ", rng.IntN(1000000))
				words := 3 + rng.IntN(14)
				for k := 0; k < words; k++ {
					line.WriteString(vocab[zipf.Uint64()])
					line.WriteString(punct[rng.IntN(len(punct))])
				}
				line.WriteByte('\n')
				buf = append(buf, line.String()...)
			}
			buf = buf[:n]
		}
		if _, err := w.Write(buf); err != nil {
			f.Close()
			return err
		}
		written += n
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cmdDiffClusters prints, one a line, the offsets of the CLUSTER-sized
// blocks where files A and B differ (a block past the end of the shorter
// file differs): what an overlay of B over A must hold.
func cmdDiffClusters(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: diffclusters A B CLUSTER")
	}
	cluster, err := parseSize(args[2])
	if err != nil || cluster == 0 {
		return fmt.Errorf("bad cluster size %q", args[2])
	}
	a, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer b.Close()
	ra, rb := bufio.NewReaderSize(a, 1<<20), bufio.NewReaderSize(b, 1<<20)
	ba, bb := make([]byte, cluster), make([]byte, cluster)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for off := int64(0); ; off += cluster {
		na, ea := io.ReadFull(ra, ba)
		nb, eb := io.ReadFull(rb, bb)
		if na == 0 && nb == 0 {
			return nil
		}
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			fmt.Fprintln(w, off)
		}
		for _, e := range []error{ea, eb} {
			if e != nil && e != io.EOF && e != io.ErrUnexpectedEOF {
				return e
			}
		}
	}
}

// Command soak reads the views of a chainfs mount from several goroutines
// at random offsets and lengths for a while, checking every byte against
// reference files made with `qemu-img convert -O raw`, and prints what it
// did. tests/soak.sh builds the chain, the references and the mount.
//
//	soak -mnt /mnt/x -ref /tmp/refs -readers 8 -duration 5m
//
// For each view N-NAME.raw in -mnt it expects -ref/N-NAME.raw.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	mnt := flag.String("mnt", "", "chainfs mount point")
	ref := flag.String("ref", "", "directory of reference raw files")
	readers := flag.Int("readers", 8, "concurrent readers")
	duration := flag.Duration("duration", time.Minute, "how long to read")
	maxLen := flag.Int("max-len", 1<<20, "largest read in bytes")
	flag.Parse()

	views, _ := filepath.Glob(filepath.Join(*mnt, "*.raw"))
	if len(views) == 0 {
		fmt.Fprintf(os.Stderr, "soak: no views in %s\n", *mnt)
		os.Exit(2)
	}
	type pair struct {
		view, ref *os.File
		size      int64
	}
	var pairs []pair
	for _, v := range views {
		vf, err := os.Open(v)
		check(err)
		rf, err := os.Open(filepath.Join(*ref, filepath.Base(v)))
		check(err)
		st, err := rf.Stat()
		check(err)
		vst, err := vf.Stat()
		check(err)
		if vst.Size() != st.Size() {
			fmt.Fprintf(os.Stderr, "soak: %s: size %d, reference %d\n", v, vst.Size(), st.Size())
			os.Exit(1)
		}
		pairs = append(pairs, pair{vf, rf, st.Size()})
	}

	var reads, bytesRead, mismatches, errs atomic.Int64
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	for r := 0; r < *readers; r++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 0x50a4))
			got := make([]byte, *maxLen)
			want := make([]byte, *maxLen)
			for time.Now().Before(deadline) {
				p := pairs[rng.IntN(len(pairs))]
				n := 1 + rng.IntN(*maxLen)
				if rng.IntN(4) == 0 {
					n = 4096
				}
				off := rng.Int64N(p.size)
				if rng.IntN(2) == 0 {
					off &^= 4095
				}
				gn, gerr := p.view.ReadAt(got[:n], off)
				wn, _ := p.ref.ReadAt(want[:n], off)
				reads.Add(1)
				bytesRead.Add(int64(gn))
				if gerr != nil && gn != wn {
					errs.Add(1)
					fmt.Fprintf(os.Stderr, "soak: %s: read %d at %d: %v\n", p.view.Name(), n, off, gerr)
					continue
				}
				if gn != wn || !bytes.Equal(got[:gn], want[:wn]) {
					mismatches.Add(1)
					fmt.Fprintf(os.Stderr, "soak: %s: %d bytes at %d differ from the reference\n", p.view.Name(), n, off)
				}
			}
		}(uint64(r + 1))
	}
	wg.Wait()
	fmt.Printf("views=%d readers=%d duration=%s reads=%d bytes=%d MiB=%.0f errors=%d mismatches=%d\n",
		len(pairs), *readers, *duration, reads.Load(), bytesRead.Load(), float64(bytesRead.Load())/(1<<20), errs.Load(), mismatches.Load())
	if errs.Load() != 0 || mismatches.Load() != 0 {
		os.Exit(1)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
}

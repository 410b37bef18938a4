package layers

import (
	"runtime"
	"sync"
)

// Read-ahead of compressed clusters for sequential readers.
//
// The kernel reads a file sequentially one or two large requests at a
// time, and waits for them: while a request's clusters are inflated the
// reader waits, and while the reader (and the kernel's copy into its page
// cache) works, the server would sit idle. A Stream follows one reader's
// offsets and, while they are sequential, inflates the compressed
// clusters of the range ahead of the furthest request on the other cores,
// into the chain's cache (clustercache.go), where the next requests find
// them. The read-ahead budget bounds the memory; a reader that stops
// leaves at most that much behind, dropped first when others need room.

// cpus is how many goroutines CPU-bound work (inflating clusters) is
// shared among: the CPUs the process may use. A FUSE server runs with
// more Ps than CPUs (fs/sched.go), which would only oversubscribe them.
func cpus() int { return min(runtime.GOMAXPROCS(0), runtime.NumCPU()) }

// Stream reads a layer for one reader (an open file, say), reading ahead
// for it when its reads are sequential. It is safe for concurrent use:
// the requests of one reader may be served at once and arrive out of
// order.
type Stream struct {
	l  *Layer
	mu sync.Mutex
	// next is the end of the furthest read since the reader last jumped,
	// last the end of the latest; ahead the end of what was given to
	// read-ahead; reads that end in [idleFrom, idleTo) go without
	// read-ahead, after a range ahead from idleFrom held no compressed
	// cluster.
	next, last, ahead, idleFrom, idleTo int64
}

// NewStream returns a Stream that reads l.
func (l *Layer) NewStream() *Stream { return &Stream{l: l} }

// Read-ahead windows: twice the reader's request, at least minAhead (a
// dd of a zstd image with 1 MiB requests: 610 MiB/s with two requests
// ahead, 525 with one, 400 with four, which only crowds the CPUs); and a
// reader counts as sequential while it reads at most seqSlack (or four
// requests) behind its furthest read, where requests in flight together
// land, or at most maxGap past its previous read.
const (
	minAhead = 256 << 10
	seqSlack = 1 << 20
	// maxGap: a read at most this far past the previous one continues
	// its stream.
	maxGap = 512 << 10
	// idleAhead: after a range ahead with no compressed cluster (raw or
	// uncompressed qcow2 data), look again only this far on, so that
	// sequential reads of such images do not walk the chain twice.
	idleAhead = 16 << 20
)

// ReadAt reads as Layer.ReadAt does, and keeps read-ahead going.
func (s *Stream) ReadAt(p []byte, off int64) (int, error) {
	if from, to := s.advance(off, int64(len(p))); from < to {
		if !s.l.readAhead(from, to-from) {
			s.idleAfter(from, to)
		}
	}
	return s.l.ReadAt(p, off)
}

// idleAfter records that [from, to) held no compressed cluster to read
// ahead: reads go on without read-ahead until idleAhead past it, and
// with it again anywhere else. (A filesystem's first reads, made when it
// is mounted or probed, are at the end of the device: a pause that
// reached back from there would leave the rest of the device without
// read-ahead.)
func (s *Stream) idleAfter(from, to int64) {
	s.mu.Lock()
	s.idleFrom, s.idleTo = from, to+idleAhead
	s.mu.Unlock()
}

// advance records a read of [off, off+n) and returns the range to read
// ahead for it: empty when the reads are not sequential, or when the
// range ahead was given to read-ahead already.
//
// A read continues the stream when it lands among the furthest reads
// (the requests the kernel has in flight together arrive in any order),
// or a little past the previous one: a reader whose other pages the
// kernel holds in its cache (a filesystem on a loop device reading its
// files) asks only for the gaps. Read-ahead then runs from the furthest
// read of the stream, or from this read where it jumped elsewhere.
func (s *Stream) advance(off, n int64) (from, to int64) {
	if n <= 0 || off < 0 {
		return 0, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	end := off + n
	slack := max(4*n, seqSlack)
	frontier := off <= s.next && end >= s.next-slack
	seq := frontier || off >= s.last && off <= s.last+maxGap
	s.last = end
	if seq {
		s.next = max(s.next, end)
	} else {
		s.next = end // a jump: the reads from here are the stream
	}
	if !seq || end > s.idleFrom && end < s.idleTo {
		return 0, 0
	}
	anchor := end
	if frontier {
		anchor = s.next
	}
	window := max(2*n, minAhead)
	if s.ahead < anchor || s.ahead > anchor+2*window {
		s.ahead = anchor // a new place
	}
	from, to = s.ahead, min(anchor+window, s.l.Size)
	if from >= to {
		return 0, 0
	}
	s.ahead = to
	return from, to
}

// readAhead inflates, in the background, the compressed clusters that
// reading [off, off+n) of l (with its backing chain) needs, as far as the
// read-ahead budget allows. It reports whether the range holds compressed
// clusters. Errors are dropped: the read that needs the range meets them
// and reports them.
func (l *Layer) readAhead(off, n int64) bool {
	if off >= l.Size {
		return false
	}
	sp := runPool.Get().(*[]Run)
	defer runPool.Put(sp)
	runs, err := l.resolveRead((*sp)[:0], off, min(off+n, l.Size))
	*sp = runs[:0]
	if err != nil {
		return false
	}
	var jobs []aheadJob
	for _, r := range runs {
		if r.Kind == Compressed {
			jobs = append(jobs, aheadJob{q: r.Layer.q.qcow2Image, ext: r.Extent})
		}
	}
	if len(jobs) == 0 {
		return false
	}
	jobs[0].q.cache.clusters.readAhead(jobs)
	return true
}

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

// Stream reads a layer for one reader (an open file, say), reading ahead
// for it when its reads are sequential. It is safe for concurrent use:
// the requests of one reader may be served at once and arrive out of
// order.
type Stream struct {
	l  *Layer
	mu sync.Mutex
	// next is the end of the furthest read; ahead the end of what was
	// given to read-ahead; idle how far reads go on without read-ahead
	// after a range ahead held no compressed cluster.
	next, ahead, idle int64
}

// NewStream returns a Stream that reads l.
func (l *Layer) NewStream() *Stream { return &Stream{l: l} }

// Read-ahead windows: twice the reader's request, at least minAhead; and
// a reader counts as sequential while it reads at most seqSlack (or four
// requests) behind its furthest read, where requests in flight together
// land.
const (
	minAhead = 256 << 10
	seqSlack = 1 << 20
	// idleAhead: after a range ahead with no compressed cluster (raw or
	// uncompressed qcow2 data), look again only this far on, so that
	// sequential reads of such images do not walk the chain twice.
	idleAhead = 16 << 20
)

// ReadAt reads as Layer.ReadAt does, and keeps read-ahead going.
func (s *Stream) ReadAt(p []byte, off int64) (int, error) {
	if from, to := s.advance(off, int64(len(p))); from < to {
		if !s.l.readAhead(from, to-from) {
			s.mu.Lock()
			s.idle = max(s.idle, to+idleAhead)
			s.mu.Unlock()
		}
	}
	return s.l.ReadAt(p, off)
}

// advance records a read of [off, off+n) and returns the range to read
// ahead for it (empty when the reads are not sequential, or the range
// ahead was given to read-ahead already).
func (s *Stream) advance(off, n int64) (from, to int64) {
	if n <= 0 || off < 0 {
		return 0, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := off <= s.next && off >= s.next-max(4*n, seqSlack)
	s.next = max(s.next, off+n)
	if !seq || s.next < s.idle {
		return 0, 0
	}
	from = max(s.ahead, s.next)
	to = min(s.next+max(2*n, minAhead), s.l.Size)
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
	var jobs []aheadJob
	found := false
	l.aheadJobs(&jobs, off, n, &found)
	if len(jobs) == 0 {
		return found
	}
	c := jobs[0].q.cache
	jobs = c.clusters.reserve(jobs)
	if len(jobs) == 0 {
		return true
	}
	workers := min(len(jobs), runtime.GOMAXPROCS(0))
	var next sync.Mutex
	i := 0
	for range workers {
		go func() {
			for {
				next.Lock()
				if i == len(jobs) {
					next.Unlock()
					return
				}
				j := &jobs[i]
				i++
				next.Unlock()
				c.clusters.fill(j)
			}
		}()
	}
	return true
}

// aheadJobs appends the compressed clusters of [off, off+n) of l, with
// its backing chain, to jobs, in guest order, and sets found when there
// is any. It resolves the range as reads do (resolve.go), so a deep chain
// is not walked layer by layer for it.
func (l *Layer) aheadJobs(jobs *[]aheadJob, off, n int64, found *bool) {
	if off >= l.Size {
		return
	}
	n = min(n, l.Size-off)
	sp := runPool.Get().(*[]Run)
	defer runPool.Put(sp)
	runs, err := l.resolveRead((*sp)[:0], off, off+n)
	*sp = runs[:0]
	if err != nil {
		return
	}
	for _, r := range runs {
		if r.Kind == Compressed {
			*found = true
			*jobs = append(*jobs, aheadJob{q: r.Layer.q.qcow2Image, ext: r.Extent})
		}
	}
}

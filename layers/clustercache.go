package layers

import (
	"sync"
	"time"
)

// Inflated compressed clusters, kept within a byte budget.
//
// A compressed cluster must be inflated whole to read any byte of it,
// and the reads that reach it are often smaller: the kernel's page
// cache of a view holds only the pages that were read, not the rest of
// the cluster, and a filesystem read through a loop device comes back
// again and again for the inodes, directories and bitmaps next to the
// ones it read. So a cluster inflated for a partial read is kept (LRU,
// within Clusters bytes), and read-ahead (readahead.go) inflates the
// clusters a sequential reader will ask for next into a second budget
// (ReadAhead bytes), from which a cluster leaves once read to its end.
//
// A cluster is keyed by file, host offset and length of its compressed
// stream: views of one file (the current state and internal snapshots)
// share their clusters, and two descriptors that share an offset but not
// a length (a hostile image) do not share what they inflate to. Files
// never change while open, so an entry is never stale; errors are never
// kept.

// Defaults of NewCache.
const (
	// DefaultClusterCacheBytes keeps 64 inflated clusters of 64 KiB.
	// Reading every file of an ext4 filesystem through a loop device
	// (issue 10's benchmark) finds 44% of its reads of compressed
	// clusters in memory with 4 MiB, 43% with 1 MiB, 44.5% with 8 MiB:
	// nearly every miss is a cluster's first read.
	DefaultClusterCacheBytes = 4 << 20
	// DefaultReadAheadBytes lets read-ahead run two 1 MiB requests
	// ahead of a sequential reader (and some more readers).
	DefaultReadAheadBytes = 4 << 20
)

type clusterKey struct {
	file *HostFile
	off  int64 // host offset of the compressed stream
	clen int64 // length of the compressed stream
}

type clusterEntry struct {
	key  clusterKey
	buf  []byte        // the inflated cluster, once ready
	done chan struct{} // closed once filled or failed (then unlisted first)
	// ready: buf holds the cluster; before, it is being inflated.
	ready bool
	// started: someone inflates it. Read-ahead registers clusters before
	// its workers get to them; a reader that needs one first inflates it
	// itself rather than wait behind the others.
	started bool
	// ahead: inflated by read-ahead and not yet read to its end;
	// readyAt: when it was.
	ahead      bool
	readyAt    time.Time
	hit        bool
	prev, next *clusterEntry
}

// entryList is a doubly linked LRU list, most recent first.
type entryList struct {
	head, tail *clusterEntry
	bytes      int64
}

func (l *entryList) pushFront(e *clusterEntry) {
	e.prev, e.next = nil, l.head
	if l.head != nil {
		l.head.prev = e
	} else {
		l.tail = e
	}
	l.head = e
	l.bytes += int64(len(e.buf))
}

func (l *entryList) remove(e *clusterEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
	l.bytes -= int64(len(e.buf))
}

// clusterCache is the part of a Cache that holds inflated clusters.
type clusterCache struct {
	mu     sync.Mutex
	items  map[clusterKey]*clusterEntry
	kept   entryList // read by a partial read, LRU
	ahead  entryList // ready read-ahead, oldest last
	budget struct{ kept, ahead int64 }
	// pending is the bytes of read-ahead registered and not yet ready
	// (not listed).
	pending int64
	// queue holds read-ahead to inflate, oldest first; workers is how
	// many goroutines take from it (at most one per CPU).
	queue   []*aheadJob
	workers int
	stats   CacheStats
}

func (c *clusterCache) init(kept, ahead int64) {
	c.items = make(map[clusterKey]*clusterEntry)
	c.budget.kept, c.budget.ahead = max(kept, 0), max(ahead, 0)
}

// read copies into dst the bytes from start of the cluster that the
// compressed cluster ext of q inflates to (size bytes), from memory when
// it is there or being inflated, else by inflating it. A cluster
// inflated for a read of part of it is kept for the next read of
// another part; one read whole is not (the reader has all of it).
func (c *clusterCache) read(q *qcow2Image, ext *Extent, dst []byte, start int64) error {
	size := q.csize
	k := clusterKey{ext.File, ext.HostOffset, ext.CompressedSize}
	end := start + int64(len(dst))
	c.mu.Lock()
	for {
		e := c.items[k]
		if e == nil {
			break
		}
		if !e.ready && !e.started {
			// Read-ahead registered it, and no worker has got to it yet.
			if err := c.inflateAhead(e, q, ext); err != nil {
				c.mu.Unlock()
				return err
			}
			continue
		}
		if !e.ready {
			done := e.done
			c.mu.Unlock()
			<-done
			c.mu.Lock()
			continue // filled, or failed and gone: look again
		}
		copy(dst, e.buf[start:end])
		c.stats.ClusterHits++
		switch {
		case !e.ahead:
			c.kept.remove(e)
			c.kept.pushFront(e)
		case end == size:
			// A sequential reader is done with it.
			c.stats.ReadAheadHits++
			c.drop(e, &c.ahead)
		default:
			if !e.hit {
				c.stats.ReadAheadHits++
				e.hit = true
			}
		}
		c.mu.Unlock()
		return nil
	}
	c.stats.ClusterMisses++
	if end-start == size {
		c.mu.Unlock()
		// dst is the caller's, which may go on past it.
		return q.inflateCluster(dst[:size:size], ext)
	}
	if size > c.budget.kept {
		c.mu.Unlock()
		buf := clusterBufs.get(size)
		defer clusterBufs.put(buf)
		if err := q.inflateCluster(buf, ext); err != nil {
			return err
		}
		copy(dst, buf[start:end])
		return nil
	}
	e := &clusterEntry{key: k, done: make(chan struct{}), started: true}
	c.items[k] = e
	c.mu.Unlock()

	buf := clusterBufs.get(size)
	err := q.inflateCluster(buf, ext)
	c.mu.Lock()
	if err != nil {
		delete(c.items, k)
		close(e.done)
		c.mu.Unlock()
		clusterBufs.put(buf)
		return err
	}
	copy(dst, buf[start:end])
	e.buf, e.ready = buf, true
	c.kept.pushFront(e)
	for c.kept.bytes > c.budget.kept {
		c.drop(c.kept.tail, &c.kept)
	}
	close(e.done)
	c.mu.Unlock()
	return nil
}

// drop unlists the ready entry e from l and recycles its buffer. The
// caller holds c.mu; nobody else holds e.buf (copies are made under
// c.mu).
func (c *clusterCache) drop(e *clusterEntry, l *entryList) {
	l.remove(e)
	delete(c.items, e.key)
	clusterBufs.put(e.buf)
	e.buf = nil
}

// aheadJob is one cluster read-ahead inflates.
type aheadJob struct {
	q   *qcow2Image
	ext Extent
	e   *clusterEntry
}

// staleAhead is how long a cluster read ahead waits for its reader before
// it may make room for other read-ahead: a reader that stopped leaves its
// read-ahead behind. Dropping sooner would drop what a reader is about to
// read (and inflate it twice).
const staleAhead = 2 * time.Second

// readAhead registers as read-ahead the clusters of jobs that are not in
// memory, in order, while the read-ahead budget allows (making room by
// dropping stale read-ahead, staleAhead), and queues them
// for the workers, who inflate them oldest first: the clusters a reader
// needs soonest are ready soonest.
func (c *clusterCache) readAhead(jobs []aheadJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i := range jobs {
		j := &jobs[i] // queued by pointer: jobs is the caller's to give
		k := clusterKey{j.ext.File, j.ext.HostOffset, j.ext.CompressedSize}
		if c.items[k] != nil {
			continue
		}
		size := j.q.csize
		for c.pending+c.ahead.bytes+size > c.budget.ahead && c.ahead.tail != nil &&
			time.Since(c.ahead.tail.readyAt) > staleAhead {
			if !c.ahead.tail.hit {
				c.stats.ReadAheadUnused++
			}
			c.drop(c.ahead.tail, &c.ahead)
		}
		if c.pending+c.ahead.bytes+size > c.budget.ahead {
			break // full of what readers are about to read
		}
		c.pending += size
		j.e = &clusterEntry{key: k, done: make(chan struct{}), ahead: true}
		c.items[k] = j.e
		c.queue = append(c.queue, j)
		n++
	}
	c.stats.ReadAheadClusters += int64(n)
	for c.workers < min(len(c.queue), cpus()) {
		c.workers++
		go c.work()
	}
}

// work inflates queued read-ahead until the queue is empty.
func (c *clusterCache) work() {
	c.mu.Lock()
	for len(c.queue) > 0 {
		j := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		if j.e.started {
			continue // a reader took it
		}
		c.inflateAhead(j.e, j.q, &j.ext)
	}
	c.queue = c.queue[:0:0]
	c.workers--
	c.mu.Unlock()
}

// inflateAhead inflates read-ahead entry e, registered and not started,
// for whichever gets to it first, a worker or a reader that needs it, and
// stores it. The caller holds c.mu, which is let go while inflating. A
// failure is not kept: the reader that asks for the cluster inflates it
// again and reports it.
func (c *clusterCache) inflateAhead(e *clusterEntry, q *qcow2Image, ext *Extent) error {
	e.started = true
	c.mu.Unlock()
	size := q.csize
	buf := clusterBufs.get(size)
	err := q.inflateCluster(buf, ext)
	c.mu.Lock()
	c.pending -= size
	if err != nil {
		delete(c.items, e.key)
		clusterBufs.put(buf)
	} else {
		e.buf, e.ready, e.readyAt = buf, true, time.Now()
		c.ahead.pushFront(e)
	}
	close(e.done)
	return err
}

// forget drops every cluster of f, for a file that is being closed.
// Clusters being inflated are left to finish; they are unlisted when no
// reader can reach them any more.
func (c *clusterCache) forget(f *HostFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.items {
		if k.file != f || !e.ready {
			continue
		}
		if e.ahead {
			c.drop(e, &c.ahead)
		} else {
			c.drop(e, &c.kept)
		}
	}
}

// CacheStats counts what a Cache did since it was made, for tuning and
// for benchmarks: how often reads of compressed clusters found them
// inflated in memory.
type CacheStats struct {
	// ClusterHits and ClusterMisses count reads of (part of) a
	// compressed cluster that found it inflated in memory (or being
	// inflated by another reader), and those that inflated it.
	ClusterHits, ClusterMisses int64
	// ReadAheadClusters counts clusters inflated by read-ahead;
	// ReadAheadHits those a reader then read, ReadAheadUnused those
	// dropped unread.
	ReadAheadClusters, ReadAheadHits, ReadAheadUnused int64
	// ClusterBytes and ReadAheadBytes are the inflated clusters in
	// memory now, kept and read ahead.
	ClusterBytes, ReadAheadBytes int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	cc := &c.clusters
	cc.mu.Lock()
	defer cc.mu.Unlock()
	s := cc.stats
	s.ClusterBytes = cc.kept.bytes
	s.ReadAheadBytes = cc.ahead.bytes + cc.pending
	return s
}

package layers

import (
	"container/list"
	"sync"
)

// Cache holds what reading one or more chains keeps in memory, each part
// within its own byte budget: metadata tables read from image files (L2
// tables, for now), and inflated compressed clusters with read-ahead
// (clustercache.go). Memory stays bounded by the budgets however many
// layers a chain has and however large they are. Entries are keyed by
// file and host offset, so the views of one file (its current state and
// its internal snapshots) share them. It is safe for concurrent use.
type Cache struct {
	shards   [cacheShards]cacheShard
	clusters clusterCache
}

// CacheSizes are the byte budgets of a Cache.
type CacheSizes struct {
	// Tables: metadata tables (DefaultCacheBytes).
	Tables int64
	// Clusters: inflated compressed clusters kept for the next read of
	// another part of them (DefaultClusterCacheBytes).
	Clusters int64
	// ReadAhead: clusters inflated ahead of sequential readers, not yet
	// read (DefaultReadAheadBytes). Zero turns read-ahead off.
	ReadAhead int64
}

// DefaultCacheSizes are the budgets of NewCache(DefaultCacheBytes), the
// cache Open makes when Options.Cache is nil: 24 MiB in all.
var DefaultCacheSizes = CacheSizes{DefaultCacheBytes, DefaultClusterCacheBytes, DefaultReadAheadBytes}

// NewCacheSizes returns a cache with the given budgets.
func NewCacheSizes(s CacheSizes) *Cache {
	c := NewCache(s.Tables)
	c.clusters.init(s.Clusters, s.ReadAhead)
	return c
}

// DefaultCacheBytes is the budget of the cache Open makes when
// Options.Cache is nil: the L2 tables of 1 TiB of guest space with 64 KiB
// clusters.
const DefaultCacheBytes = 16 << 20

// cacheShards spreads lookups over independent locks: many FUSE requests
// in flight resolve L2 entries at the same time.
const cacheShards = 16

// NewCache returns a cache that holds at most budget bytes of tables (at
// least one table per shard, whatever the budget), and inflated clusters
// and read-ahead within their default budgets.
func NewCache(budget int64) *Cache {
	c := &Cache{}
	c.clusters.init(DefaultClusterCacheBytes, DefaultReadAheadBytes)
	for i := range c.shards {
		s := &c.shards[i]
		s.budget = max(budget/cacheShards, 1)
		s.ll = list.New()
		s.items = make(map[cacheKey]*list.Element)
	}
	return c
}

type cacheKey struct {
	file *HostFile
	off  int64
}

type cacheEntry struct {
	key cacheKey
	buf []byte
}

type cacheShard struct {
	mu     sync.Mutex
	budget int64
	used   int64
	ll     *list.List
	items  map[cacheKey]*list.Element
}

func (c *Cache) shard(k cacheKey) *cacheShard {
	// Fibonacci hashing: tables are cluster aligned, so the low bits of
	// the offset say nothing; the top bits of the product mix them all.
	h := uint64(k.off) * 0x9e3779b97f4a7c15
	return &c.shards[h>>60]
}

// get returns the table cached for (f, off), or nil.
func (c *Cache) get(f *HostFile, off int64) []byte {
	k := cacheKey{f, off}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[k]; ok {
		s.ll.MoveToFront(el)
		return el.Value.(*cacheEntry).buf
	}
	return nil
}

// put caches buf, which the caller must not modify afterwards, for (f, off),
// evicting the least recently used tables beyond the budget.
func (c *Cache) put(f *HostFile, off int64, buf []byte) {
	k := cacheKey{f, off}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[k]; ok {
		s.ll.MoveToFront(el)
		return
	}
	s.items[k] = s.ll.PushFront(&cacheEntry{k, buf})
	s.used += int64(len(buf))
	for s.used > s.budget && s.ll.Len() > 1 {
		old := s.ll.Back()
		e := old.Value.(*cacheEntry)
		s.ll.Remove(old)
		delete(s.items, e.key)
		s.used -= int64(len(e.buf))
	}
}

// forget drops every entry of f, for a file that is being closed.
func (c *Cache) forget(f *HostFile) {
	c.clusters.forget(f)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for k, el := range s.items {
			if k.file == f {
				s.used -= int64(len(el.Value.(*cacheEntry).buf))
				s.ll.Remove(el)
				delete(s.items, k)
			}
		}
		s.mu.Unlock()
	}
}

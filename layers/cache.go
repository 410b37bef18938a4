package layers

import (
	"github.com/chainfs/chainfs/internal/lru"
)

// Cache holds what reading one or more chains keeps in memory, each part
// within its own byte budget: metadata tables read from image files (L2
// tables, for now), and inflated compressed clusters with read-ahead
// (clustercache.go). Memory stays bounded by the budgets however many
// layers a chain has and however large they are. Entries are keyed by
// file and host offset, so the views of one file (its current state and
// its internal snapshots) share them. It is safe for concurrent use.
type Cache struct {
	tables   *lru.Cache[cacheKey, []byte]
	clusters clusterCache
}

// DefaultCacheBytes is the budget of the cache Open makes when
// Options.Cache is nil: the L2 tables of 1 TiB of guest space with 64 KiB
// clusters.
const DefaultCacheBytes = 16 << 20

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

// NewCache returns a cache that holds at most budget bytes of tables (and
// at least the last table read, whatever the budget), and inflated
// clusters and read-ahead within their default budgets.
func NewCache(budget int64) *Cache {
	return NewCacheSizes(CacheSizes{budget, DefaultClusterCacheBytes, DefaultReadAheadBytes})
}

// NewCacheSizes returns a cache with the given budgets.
func NewCacheSizes(s CacheSizes) *Cache {
	c := &Cache{tables: lru.New[cacheKey, []byte](s.Tables)}
	c.clusters.init(s.Clusters, s.ReadAhead)
	return c
}

// cacheKey names a table by its file and offset. The file is part of the
// shard hash: the layers of a chain made by the same tool keep their
// tables at the same offsets.
type cacheKey struct {
	file *HostFile
	off  int64
}

// get returns the table cached for (f, off), or nil.
func (c *Cache) get(f *HostFile, off int64) []byte {
	t, _ := c.tables.Get(cacheKey{f, off})
	return t
}

// put caches buf, which the caller must not modify afterwards, for (f, off),
// evicting the least recently used tables beyond the budget.
func (c *Cache) put(f *HostFile, off int64, buf []byte) {
	c.tables.Put(cacheKey{f, off}, buf, int64(len(buf)))
}

// forget drops every entry of f, for a file that is being closed.
func (c *Cache) forget(f *HostFile) {
	c.tables.DeleteFunc(func(k cacheKey) bool { return k.file == f })
	c.clusters.forget(f)
}

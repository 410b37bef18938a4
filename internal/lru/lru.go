// Package lru is a sharded least-recently-used cache that holds values
// within a byte budget: what each value costs is given when it is added,
// and the least recently used values are dropped to stay within the budget.
// chainfs keeps its metadata tables, resolved views and rendered text in
// such caches, so that memory is bounded by budgets, never by the number
// of layers or their sizes.
package lru

import (
	"hash/maphash"
	"sync"
)

// Cache maps keys to values within a byte budget. It is safe for
// concurrent use; values must not be modified once added.
type Cache[K comparable, V any] struct {
	seed   maphash.Seed
	shards []shard[K, V]
}

type entry[K comparable, V any] struct {
	key        K
	val        V
	size       int64
	prev, next *entry[K, V]
}

type shard[K comparable, V any] struct {
	mu     sync.Mutex
	budget int64
	used   int64
	items  map[K]*entry[K, V]
	root   entry[K, V] // sentinel: root.next is the most recently used
}

// shardBytes is the least budget of one shard: shards spread lookups over
// independent locks, but each must hold a useful number of values.
const shardBytes = 1 << 20

// maxShards bounds the shards of a large budget: many FUSE requests in
// flight look values up at once, but only a few run at any moment.
const maxShards = 16

// New returns a cache that holds at most budget bytes of values, except
// that each shard keeps its most recent value whatever its cost.
func New[K comparable, V any](budget int64) *Cache[K, V] {
	n := int(min(max(budget/shardBytes, 1), maxShards))
	c := &Cache[K, V]{seed: maphash.MakeSeed(), shards: make([]shard[K, V], n)}
	for i := range c.shards {
		s := &c.shards[i]
		s.budget = max(budget/int64(n), 1)
		s.items = make(map[K]*entry[K, V])
		s.root.next, s.root.prev = &s.root, &s.root
	}
	return c
}

// ShardBudget returns the bytes one shard may hold: a value costing more than
// this is worth computing again rather than caching.
func (c *Cache[K, V]) ShardBudget() int64 { return c.shards[0].budget }

func (c *Cache[K, V]) shard(k K) *shard[K, V] {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	return &c.shards[maphash.Comparable(c.seed, k)%uint64(len(c.shards))]
}

// Get returns the value cached for k and marks it recently used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	s.unlink(e)
	s.pushFront(e)
	return e.val, true
}

// Put caches v for k at the given cost, replacing any value cached for k,
// and drops the least recently used values beyond the budget.
func (c *Cache[K, V]) Put(k K, v V, size int64) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.items[k]; ok {
		s.used += size - e.size
		e.val, e.size = v, size
		s.unlink(e)
		s.pushFront(e)
	} else {
		e := &entry[K, V]{key: k, val: v, size: size}
		s.items[k] = e
		s.pushFront(e)
		s.used += size
	}
	for s.used > s.budget && s.root.prev != s.root.next {
		old := s.root.prev
		s.unlink(old)
		delete(s.items, old.key)
		s.used -= old.size
	}
}

// DeleteFunc drops every value whose key satisfies drop.
func (c *Cache[K, V]) DeleteFunc(drop func(K) bool) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for k, e := range s.items {
			if drop(k) {
				s.unlink(e)
				delete(s.items, k)
				s.used -= e.size
			}
		}
		s.mu.Unlock()
	}
}

// Used returns the bytes the cache holds and the number of values.
func (c *Cache[K, V]) Used() (bytes int64, n int) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		bytes += s.used
		n += len(s.items)
		s.mu.Unlock()
	}
	return bytes, n
}

func (s *shard[K, V]) unlink(e *entry[K, V]) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (s *shard[K, V]) pushFront(e *entry[K, V]) {
	e.prev = &s.root
	e.next = s.root.next
	s.root.next.prev = e
	s.root.next = e
}

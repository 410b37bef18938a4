package lru

import (
	"fmt"
	"sync"
	"testing"
)

func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name           string
		budget, size   int64
		puts, wantKept int
	}{
		{"everything fits", 100, 10, 10, 10},
		{"least recently used dropped", 100, 10, 25, 10},
		{"a value over the budget is kept alone", 5, 10, 3, 1},
		{"several shards", 4 << 20, 64 << 10, 200, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New[int, string](tc.budget)
			for i := range tc.puts {
				c.Put(i, fmt.Sprint(i), tc.size)
			}
			used, n := c.Used()
			if n > tc.wantKept+len(c.shards) || n < tc.wantKept-len(c.shards) || (tc.size <= tc.budget && used > tc.budget) {
				t.Errorf("%d values (%d bytes) kept; want about %d within %d", n, used, tc.wantKept, tc.budget)
			}
			if v, ok := c.Get(tc.puts - 1); !ok || v != fmt.Sprint(tc.puts-1) {
				t.Errorf("the last value put is gone: %q %v", v, ok)
			}
		})
	}
}

func TestRecency(t *testing.T) {
	c := New[string, int](30)
	c.Put("a", 1, 10)
	c.Put("b", 2, 10)
	c.Put("c", 3, 10)
	c.Get("a") // a is now more recent than b
	c.Put("d", 4, 10)
	if _, ok := c.Get("b"); ok {
		t.Error("b, the least recently used, was kept")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s was dropped", k)
		}
	}
	c.Put("a", 5, 25) // replacing costs the difference
	if v, _ := c.Get("a"); v != 5 {
		t.Errorf("a = %d after replacing it, want 5", v)
	}
	if used, _ := c.Used(); used > 30 {
		t.Errorf("%d bytes used of 30", used)
	}
	c.DeleteFunc(func(k string) bool { return k == "a" })
	if _, ok := c.Get("a"); ok {
		t.Error("a survived DeleteFunc")
	}
}

func TestConcurrent(t *testing.T) {
	c := New[int, int](8 << 20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10000 {
				k := (i*7 + g) % 3000
				if v, ok := c.Get(k); ok && v != k {
					t.Errorf("Get(%d) = %d", k, v)
					return
				}
				c.Put(k, k, 4096)
			}
		}()
	}
	wg.Wait()
	if used, _ := c.Used(); used > 8<<20 {
		t.Errorf("%d bytes used of %d", used, 8<<20)
	}
}

// Package bounded is a map for caches of what is cheap to read again: past
// its bound it forgets its oldest entries, so its memory does not grow
// with the number of users or rooms a process has seen.
package bounded

import "sync"

// Map is a map safe for concurrent use that holds at most its bound of
// entries. Once full, each Put drops the entry put longest ago (first in,
// first out): what was put lately, the likeliest to be read again, stays.
type Map[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   map[K]entry[V]
	// order holds a slot per Put, oldest at next once it is full. A slot
	// whose seq is no longer its key's (the key was put again, or
	// deleted) drops nothing when it comes round.
	order []slot[K]
	next  int
	seq   uint64
}

type entry[V any] struct {
	v   V
	seq uint64
}

type slot[K comparable] struct {
	k   K
	seq uint64
}

// New makes a Map of at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, m: make(map[K]entry[V])}
}

// Get returns the value of k, if any.
func (b *Map[K, V]) Get(k K) (V, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[k]
	return e.v, ok
}

// Put sets the value of k, as the newest entry, after dropping the oldest
// if the map is full.
func (b *Map[K, V]) Put(k K, v V) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	s := slot[K]{k, b.seq}
	if len(b.order) < b.max {
		b.order = append(b.order, s)
	} else {
		old := b.order[b.next]
		if e, ok := b.m[old.k]; ok && e.seq == old.seq {
			delete(b.m, old.k)
		}
		b.order[b.next] = s
		b.next = (b.next + 1) % b.max
	}
	b.m[k] = entry[V]{v, b.seq}
}

// Delete drops k.
func (b *Map[K, V]) Delete(k K) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, k)
}

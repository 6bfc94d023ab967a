// Package bounded is a map for caches of what is cheap to read again: it
// starts again empty when it reaches its bound, so its memory does not
// grow with the number of users or rooms a process has seen.
package bounded

import "sync"

// Map is a map safe for concurrent use that holds at most its bound of
// entries.
type Map[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   map[K]V
}

// New makes a Map of at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, m: make(map[K]V)}
}

// Get returns the value of k, if any.
func (b *Map[K, V]) Get(k K) (V, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.m[k]
	return v, ok
}

// Put sets the value of k, after dropping every entry if the map is full.
func (b *Map[K, V]) Put(k K, v V) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.m[k]; !ok && len(b.m) >= b.max {
		clear(b.m)
	}
	b.m[k] = v
}

// Delete drops k.
func (b *Map[K, V]) Delete(k K) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, k)
}

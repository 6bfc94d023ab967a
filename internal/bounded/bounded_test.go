package bounded

import "testing"

func TestMap(t *testing.T) {
	m := New[string, int](3)
	m.Put("a", 1)
	m.Put("b", 2)
	m.Put("c", 3)
	if v, ok := m.Get("a"); !ok || v != 1 {
		t.Fatalf("a = %d, %v", v, ok)
	}
	m.Put("d", 4) // full: the oldest, a, goes
	if _, ok := m.Get("a"); ok {
		t.Fatal("a kept past the bound")
	}
	for k, want := range map[string]int{"b": 2, "c": 3, "d": 4} {
		if v, ok := m.Get(k); !ok || v != want {
			t.Fatalf("%s = %d, %v; want %d", k, v, ok, want)
		}
	}
	// Put again, c is the newest: b and d go before it.
	m.Put("c", 5)
	m.Put("e", 6)
	m.Put("f", 7)
	for _, k := range []string{"b", "d"} {
		if _, ok := m.Get(k); ok {
			t.Fatalf("%s kept, though older than the c put again", k)
		}
	}
	if v, ok := m.Get("c"); !ok || v != 5 {
		t.Fatalf("c = %d, %v after it was put again", v, ok)
	}
	// A deleted key put again is not dropped by its old slot.
	m.Delete("e")
	if _, ok := m.Get("e"); ok {
		t.Fatal("e kept after Delete")
	}
	m.Put("e", 8)
	m.Put("g", 9)
	if v, ok := m.Get("e"); !ok || v != 8 {
		t.Fatalf("e = %d, %v: dropped by the slot of its deleted entry", v, ok)
	}
	if n := len(m.m); n > 3 {
		t.Fatalf("%d entries, bound 3", n)
	}
}

func TestMapBound(t *testing.T) {
	m := New[int, int](100)
	for i := range 1000 {
		m.Put(i%150, i)
		if i%7 == 0 {
			m.Delete(i % 13)
		}
		if n := len(m.m); n > 100 {
			t.Fatalf("%d entries after %d puts, bound 100", n, i+1)
		}
	}
	// The last 100 puts, of distinct keys, are all there.
	for i := 1000; i < 1100; i++ {
		m.Put(i%150, i)
	}
	for i := 1000; i < 1100; i++ {
		if v, ok := m.Get(i % 150); !ok || v != i {
			t.Fatalf("key %d = %d, %v; want %d", i%150, v, ok, i)
		}
	}
}

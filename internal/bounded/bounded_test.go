package bounded

import "testing"

func TestMap(t *testing.T) {
	m := New[string, int](2)
	m.Put("a", 1)
	m.Put("b", 2)
	m.Put("b", 3) // a replacement does not count against the bound
	if v, ok := m.Get("a"); !ok || v != 1 {
		t.Fatalf("a = %d, %v", v, ok)
	}
	if v, _ := m.Get("b"); v != 3 {
		t.Fatalf("b = %d", v)
	}
	m.Put("c", 4) // full: starts again
	if _, ok := m.Get("a"); ok {
		t.Fatal("a kept past the bound")
	}
	if v, ok := m.Get("c"); !ok || v != 4 {
		t.Fatalf("c = %d, %v", v, ok)
	}
	m.Delete("c")
	if _, ok := m.Get("c"); ok {
		t.Fatal("c kept after Delete")
	}
}

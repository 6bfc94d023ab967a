package syncapi

import "testing"

// TestParkingRemoveRefused: a sync that add refused, the listener closing,
// is answered and removed like any other, without counting it out of the
// syncs the close waits for (which panicked: a negative WaitGroup).
func TestParkingRemoveRefused(t *testing.T) {
	p := NewParking()
	counted := &parkedSync{}
	if !p.add(counted) {
		t.Fatal("refused before closing")
	}
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	refused := &parkedSync{}
	if p.add(refused) {
		t.Fatal("added while closing")
	}
	p.remove(refused)
	p.remove(counted)
	p.active.Wait() // returns: the count is back at zero, not below
}

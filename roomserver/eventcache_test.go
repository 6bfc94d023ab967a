package roomserver

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// An event read before its redaction committed is not put back after the
// redaction evicted it; one read after is.
func TestEventCacheRedactedSinceRead(t *testing.T) {
	c := newEventCache()
	var stale, fresh gomatrixserverlib.PDU // only identity matters here
	gen := c.generation()                  // a reader takes the generation, reads the row...
	c.redacted([]int64{7})                 // ...the redaction commits and evicts...
	c.put(gen, 7, stale)                   // ...and the reader puts what it read.
	if _, ok := c.Get(7); ok {
		t.Fatal("an event read before its redaction was cached after it")
	}
	c.put(c.generation(), 7, fresh)
	if _, ok := c.Get(7); !ok {
		t.Fatal("an event read after the redaction was not cached")
	}
	c.redacted(nil) // nothing redacted: no new generation
	if gen := c.generation(); gen != 1 {
		t.Fatalf("generation %d after one redaction", gen)
	}
}

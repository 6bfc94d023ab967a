package roomserver

import (
	"sync"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/bounded"
)

// eventCache keeps parsed events by NID. Events never change except by
// redaction, which evicts them. A reader that read an event's row before
// its redaction committed must not put the unredacted event back after
// that eviction: GET /state then served a redacted topic whole, once the
// push counter read events beside the commits. So a reader takes the
// cache's generation before it reads rows and puts what it parsed only if
// no redaction came since.
type eventCache struct {
	m *bounded.Map[int64, gomatrixserverlib.PDU]

	mu  sync.Mutex
	gen uint64 // bumped by every eviction of redacted events
}

func newEventCache() *eventCache {
	return &eventCache{m: bounded.New[int64, gomatrixserverlib.PDU](eventCacheMax)}
}

func (c *eventCache) Get(nid int64) (gomatrixserverlib.PDU, bool) { return c.m.Get(nid) }

// generation is what a reader takes before it reads the rows it will put.
func (c *eventCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put keeps pdu, parsed from a row read after generation gen was taken,
// unless events were redacted since.
func (c *eventCache) put(gen uint64, nid int64, pdu gomatrixserverlib.PDU) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		c.m.Put(nid, pdu)
	}
}

// committed keeps an event the roomserver just committed: no redaction
// of it can have committed yet, since that needs the room's lock, which
// its committer holds.
func (c *eventCache) committed(nid int64, pdu gomatrixserverlib.PDU) { c.m.Put(nid, pdu) }

// redacted evicts events whose redactions committed.
func (c *eventCache) redacted(nids []int64) {
	if len(nids) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, nid := range nids {
		c.m.Delete(nid)
	}
}

package syncapi

import (
	"context"

	"github.com/weft-chat/weft/sql"
)

// scanBudget bounds how many stored events one request reads while
// looking for events the caller may see: a user who left a busy room and
// paginates forwards would otherwise read the whole rest of the room in
// one request. Past it the page ends early, with a token to go on from.
const scanBudget = 2000

// maxBatch bounds one database read of a page.
const maxBatch = 1000

// fetchFunc reads up to n events whose position lies in (lo, hi], newest
// first when backward.
type fetchFunc func(ctx context.Context, lo, hi sql.TopoPos, backward bool, n int) ([]sql.Event, error)

// page is a run of events and where it stopped.
type page struct {
	events []sql.Event
	// next is the boundary after the last event read (kept or not): the
	// next page starts there.
	next sql.TopoPos
	// more is false when the range has no events left past next.
	more bool
}

// paginate reads events from the boundary from towards the boundary to
// (backwards: (to, from], newest first; forwards: (from, to], oldest
// first) until limit events pass keep, the range ends, or the scan budget
// is spent. Because next always stands just past the last event read,
// going on from it neither repeats nor skips an event.
func paginate(ctx context.Context, fetch fetchFunc, from, to sql.TopoPos, backward bool, limit int,
	keep func(sql.Event) (bool, error)) (page, error) {
	p := page{next: from, more: true}
	if limit <= 0 {
		return p, nil
	}
	n, scanned := limit+1, 0
	for {
		n = min(n, maxBatch)
		lo, hi := p.next, to
		if backward {
			lo, hi = to, p.next
		}
		if !lo.Less(hi) {
			p.more = false
			return p, nil
		}
		rows, err := fetch(ctx, lo, hi, backward, n)
		if err != nil {
			return page{}, err
		}
		for i, ev := range rows {
			scanned++
			if backward {
				p.next = before(ev)
			} else {
				p.next = ev.Key()
			}
			ok, err := keep(ev)
			if err != nil {
				return page{}, err
			}
			if ok {
				p.events = append(p.events, ev)
			}
			if len(p.events) == limit {
				// More if this batch has rows left, or was full (so the
				// range may go on).
				p.more = i < len(rows)-1 || len(rows) == n
				return p, nil
			}
		}
		if len(rows) < n {
			p.more = false
			return p, nil
		}
		if scanned >= scanBudget {
			return p, nil
		}
		// Few of the rows were kept: read more at a time.
		n *= 2
	}
}

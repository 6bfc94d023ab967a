package syncapi

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/weft-chat/weft/sql"
)

// sharedReadTimeout bounds a timeline read that several syncs share, which
// no one request's end may cut short.
const sharedReadTimeout = 30 * time.Second

// timelineReads shares the timeline reads of syncs that ask for the same
// window of the same room at the same time: an event wakes every member
// of its room at once, and they mostly ask for the window since their
// last sync, which is the same for all of them.
//
// Sharing is sound because each window (lo, hi] lies at or below the
// stream bound its sync read first, and positions commit in order: every
// event in it, and every redaction or relation at or below hi, committed
// before the first of those syncs asked, so the read gives what each of
// them would have read alone. What lies above hi, each may see or not
// either way. The rows are shared: callers must not change them.
type timelineReads struct {
	g singleflight.Group
}

// read is RoomEventsByStream(roomNID, lo, hi, n), shared.
func (t *timelineReads) read(ctx context.Context, db *sql.DB, roomNID, lo, hi int64, n int) ([]sql.Event, error) {
	key := fmt.Sprintf("%d:%d:%d:%d", roomNID, lo, hi, n)
	ch := t.g.DoChan(key, func() (any, error) {
		// Not the first caller's context: its end must not fail the others.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReadTimeout)
		defer cancel()
		return db.RoomEventsByStream(ctx, roomNID, lo, hi, n)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]sql.Event), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

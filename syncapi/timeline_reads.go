package syncapi

import (
	"context"
	"fmt"
	"sort"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/sql"
)

// sharedReadTimeout bounds a timeline read that several syncs share, which
// no one request's end may cut short.
const sharedReadTimeout = 30 * time.Second

// The last timeline reads kept: of at most windowsMax rooms, and only
// reads of at most windowRows events (a read's events are shared while a
// room's members are woken together, which is over fast; an initial sync's
// long read would only take memory).
const (
	windowsMax = 1024
	windowRows = 20
)

// timelineReads shares the timeline reads of syncs: an event wakes every
// member of its room at once, and they mostly ask for the window since
// their last sync, which is the same for all of them or lies within the
// window one of them read.
//
// Syncs that ask for the same window at the same time share one read.
// That is sound because each window (lo, hi] lies at or below the stream
// bound its sync read first, and positions commit in order: every event
// in it, and every redaction or relation at or below hi, committed before
// the first of those syncs asked, so the read gives what each of them
// would have read alone. What lies above hi, each may see or not either
// way.
//
// A sync that asks later is served from the room's last read when its
// window lies within that read's and its head saw no event of the room
// past that read's hi: every event of the room committed after the read
// would lie past it (positions commit in order), so none did, no
// redaction or relation either, and the read is what a new one would
// give. The rows are shared: callers must not change them.
//
// A sync whose window starts at or past the end of the room's last read
// reads on from that end instead: the room's members mostly synced last
// after its previous event, each from a position of its own, and the
// read then serves every one of them, not only those whose window starts
// past the first reader's. Before the end of the last read the room had
// nothing new for these syncs, so the longer read costs nothing more.
//
// Before any of that, the roomserver's memory of the newest events of the
// rooms it writes to serves what it holds (roomserver.RecentTimeline):
// the syncs an event wakes then read nothing from the database.
type timelineReads struct {
	recent  recentTimeline
	g       singleflight.Group
	windows *bounded.Map[int64, *timelineWindow]
}

// recentTimeline is roomserver.RecentTimeline.
type recentTimeline func(roomNID, lo, hi int64, n int, roomLast int64) ([]sql.Event, bool)

// timelineWindow is a read of RoomEventsByStream(room, lo, hi, n): rows,
// newest first; whole when they are all of (lo, hi] (fewer than n).
type timelineWindow struct {
	lo, hi int64
	whole  bool
	rows   []sql.Event
}

func newTimelineReads(recent recentTimeline) timelineReads {
	return timelineReads{recent: recent, windows: bounded.New[int64, *timelineWindow](windowsMax)}
}

// read is RoomEventsByStream(roomNID, lo, hi, n), shared. roomLast is the
// stream position of the room's newest event as the caller's head read it.
func (t *timelineReads) read(ctx context.Context, db *sql.DB, roomNID, lo, hi int64, n int, roomLast int64) ([]sql.Event, error) {
	// The room has no event in (roomLast, hi]: syncs whose heads differ
	// in positions but not in the room read the same window.
	hi = min(hi, roomLast)
	if rows, ok := t.recent(roomNID, lo, hi, n, roomLast); ok {
		return rows, nil
	}
	from := lo
	if w, ok := t.windows.Get(roomNID); ok {
		if rows, ok := w.serve(lo, hi, n, roomLast); ok {
			return rows, nil
		}
		if w.hi <= lo && w.hi < hi {
			from = w.hi
		}
	}
	if from != lo {
		w, err := t.readWindow(ctx, db, roomNID, from, hi, n)
		if err != nil {
			return nil, err
		}
		// The read holds (lo, hi] unless it was cut above lo.
		if rows, ok := w.serve(lo, hi, n, hi); ok {
			return rows, nil
		}
	}
	w, err := t.readWindow(ctx, db, roomNID, lo, hi, n)
	if err != nil {
		return nil, err
	}
	return w.rows, nil
}

// readWindow reads RoomEventsByStream(roomNID, lo, hi, n), shared by the
// syncs that ask for it at the same time, and keeps it as the room's last
// read when it is short.
func (t *timelineReads) readWindow(ctx context.Context, db *sql.DB, roomNID, lo, hi int64, n int) (*timelineWindow, error) {
	key := fmt.Sprintf("%d:%d:%d:%d", roomNID, lo, hi, n)
	ch := t.g.DoChan(key, func() (any, error) {
		// Not the first caller's context: its end must not fail the others.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReadTimeout)
		defer cancel()
		rows, err := db.RoomEventsByStream(ctx, roomNID, lo, hi, n)
		if err != nil {
			return nil, err
		}
		w := &timelineWindow{lo: lo, hi: hi, whole: len(rows) < n, rows: rows}
		if len(rows) <= windowRows {
			t.windows.Put(roomNID, w)
		}
		return w, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*timelineWindow), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serve gives RoomEventsByStream(room, lo, hi, n) from the window, if
// the window holds it whole and nothing of the room came after it.
func (w *timelineWindow) serve(lo, hi int64, n int, roomLast int64) ([]sql.Event, bool) {
	if roomLast > w.hi || lo < w.lo {
		return nil, false
	}
	// No event of the room lies in (w.hi, hi].
	hi = min(hi, w.hi)
	newest := sort.Search(len(w.rows), func(i int) bool { return w.rows[i].StreamPos <= hi })
	past := sort.Search(len(w.rows), func(i int) bool { return w.rows[i].StreamPos <= lo })
	if past < newest {
		past = newest // lo >= hi: an empty window
	}
	rows := w.rows[newest:past]
	switch {
	case len(rows) >= n:
		// The read's rows are the newest of its window: (lo, hi]'s
		// newest n are among them.
		return rows[:n:n], true
	case past < len(w.rows) || w.whole:
		// A row at or below lo was read, or the read held the whole of
		// its window: every event of (lo, hi] is among the rows.
		return rows[:len(rows):len(rows)], true
	}
	return nil, false
}

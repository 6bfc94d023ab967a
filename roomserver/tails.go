package roomserver

import (
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// The newest timeline events of rooms this process writes to are kept in
// memory, as their rows are stored (see RecentTimeline): of at most
// tailRooms rooms, tailRows events each.
const (
	tailRooms = 1024
	tailRows  = 16
)

// roomTail is a room's newest timeline events: every one with a stream
// position in (from, hi], newest first, where hi is the first's position
// (from when there are none). It is never changed once made, since
// readers share its rows.
type roomTail struct {
	from int64
	rows []sql.Event
}

func (t roomTail) hi() int64 {
	if len(t.rows) > 0 {
		return t.rows[0].StreamPos
	}
	return t.from
}

// with is the tail once row, the room's next timeline event after
// position prev, is added.
func (t roomTail) with(prev int64, row sql.Event) roomTail {
	if t.hi() != prev {
		// Events the tail does not hold came in between (another
		// process wrote them): it starts again.
		return roomTail{from: prev, rows: []sql.Event{row}}
	}
	rows := make([]sql.Event, 0, min(len(t.rows)+1, tailRows))
	rows = append(rows, row)
	rows = append(rows, t.rows[:min(len(t.rows), tailRows-1)]...)
	from := t.from
	if len(t.rows) >= tailRows {
		from = t.rows[tailRows-1].StreamPos
	}
	return roomTail{from: from, rows: rows}
}

// holds reports whether the tail holds the event.
func (t roomTail) holds(eventID string) bool {
	for _, r := range t.rows {
		if r.EventID == eventID {
			return true
		}
	}
	return false
}

// extendTail adds a committed room's new timeline events to its tail. An
// event built elsewhere (received), a redaction, or the bundled child of
// an event the tail holds makes the tail start again after it: the tail
// does not hold its row, or it changes rows the tail holds (a redacted
// one, one whose NoBundledChildren no longer holds).
func (rs *Roomserver) extendTail(rc *roomCommit) {
	if len(rc.outputs) == 0 {
		return
	}
	roomNID := rc.after.info.NID
	t, _ := rs.tails.Get(roomNID)
	prev, local := rc.v.info.LastStreamPos, rc.local
	for _, o := range rc.outputs {
		if len(local) > 0 && local[0].row.EventID == o.EventID {
			e := local[0]
			local = local[1:]
			if o.Type != spec.MRoomRedaction && (e.bundlesInto == "" || !t.holds(e.bundlesInto)) {
				row := e.row
				row.NoBundledChildren = true // nothing can relate to an event before it is built
				t = t.with(prev, row)
				prev = o.StreamPos
				continue
			}
		}
		t = roomTail{from: o.StreamPos}
		prev = o.StreamPos
	}
	rs.tails.Put(roomNID, t)
}

// RecentTimeline is RoomEventsByStream(roomNID, lo, hi, n) from the
// room's tail in memory, when the tail holds all of (lo, hi] and no event
// of the room past the tail (roomLast, the room's newest position as the
// caller read it, is at most the tail's). The rows are shared: callers
// must not change them.
func (rs *Roomserver) RecentTimeline(roomNID, lo, hi int64, n int, roomLast int64) ([]sql.Event, bool) {
	t, ok := rs.tails.Get(roomNID)
	if !ok || lo < t.from || hi > t.hi() || roomLast > t.hi() {
		return nil, false
	}
	i := 0
	for i < len(t.rows) && t.rows[i].StreamPos > hi {
		i++
	}
	j := i
	for j < len(t.rows) && j-i < n && t.rows[j].StreamPos > lo {
		j++
	}
	return t.rows[i:j:j], true
}

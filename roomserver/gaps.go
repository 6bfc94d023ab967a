package roomserver

import (
	"slices"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/sql"
)

// noteGaps records what an event from another server does to the room's
// gaps (sql.RecordGaps): entering the timeline, it closes the gaps at it
// and opens one at each of its prev events the timeline lacks, which a
// backfill fills when /messages pages back to it. Rejected, it closes
// the gaps at it: there is nothing to fetch there. Local events and
// remote ones that extend the room as it is need none of this: their
// prev events are the room's forward extremities, in the timeline, and
// they are nobody's missing prev event. Nor are the prev events of a
// remote event that are among the room's extremities (the common case,
// which so costs no statement).
func (g *groupTx) noteGaps(roomNID, nid int64, ev gomatrixserverlib.PDU, timeline bool, extremities []string) {
	g.filled = append(g.filled, ev.EventID())
	if !timeline {
		return
	}
	for _, id := range ev.PrevEventIDs() {
		if !slices.Contains(extremities, id) {
			g.gaps = append(g.gaps, sql.GapRow{RoomNID: roomNID, EventNID: nid, Prev: id})
		}
	}
}

package syncapi

import (
	"context"
	"slices"

	"github.com/weft-chat/weft/sql"
)

// afterGap cuts a room's timeline, oldest first, at the newest event in
// it that stands after a gap in the room's history here (sql.GapsIn),
// keeping that event and what follows. A timeline is contiguous history;
// the newest events of a room joined again through another server span
// what was said while this server was out of it, which it does not have
// yet. Cut there, the timeline is limited, and a client pages back from
// the event after the gap, where /messages fills it (fillGaps). It
// reports whether it cut.
func (a *API) afterGap(ctx context.Context, roomNID int64, evs []sql.Event) ([]sql.Event, bool, error) {
	if len(evs) < 2 {
		return evs, false, nil
	}
	pos, err := a.db.NewestGapAt(ctx, roomNID, evs[0].StreamPos, evs[len(evs)-1].StreamPos)
	if err != nil || pos == 0 {
		return evs, false, err
	}
	i := slices.IndexFunc(evs, func(e sql.Event) bool { return e.StreamPos >= pos })
	return evs[i:], true, nil
}

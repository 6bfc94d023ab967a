package roomserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// LastEventAt returns the room's latest timeline event at a position of
// the room event stream: the event the room's state "at" that position
// follows. 404 M_NOT_FOUND when the room had no event by then.
func (rs *Roomserver) LastEventAt(ctx context.Context, roomID string, streamPos int64) (sql.Event, gomatrixserverlib.PDU, error) {
	gen := rs.events.generation()
	s, err := rs.db.LastEventAtOrBefore(ctx, roomID, streamPos)
	if errors.Is(err, sql.ErrNotFound) {
		return sql.Event{}, nil, mxhttp.NotFound("The room has no event at that position")
	}
	if err != nil {
		return sql.Event{}, nil, fmt.Errorf("last event of %s at %d: %w", roomID, streamPos, err)
	}
	pdu, err := rs.parseCached(gen, s)
	return s, pdu, err
}

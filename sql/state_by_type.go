package sql

import "context"

// CurrentStateEventsOfType returns the events of a room's current state
// with one event type (all state keys), ordered by state key: the space
// children of a space, or the members of a room, without reading the rest
// of its state.
func (t *Queries) CurrentStateEventsOfType(ctx context.Context, roomID, eventType string) ([]Event, error) {
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`
		JOIN current_state c ON c.event_nid = e.event_nid WHERE r.room_id = $1 AND c.type = $2 ORDER BY c.state_key`, roomID, eventType)
}

package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
)

// AddInviteRoomState keeps the stripped state another server sent with an
// invite (see migration 0017).
func (p *Pipeline) AddInviteRoomState(eventNID int64, state []byte) {
	p.exec(errPipelineStmt("invite room state"), `INSERT INTO invite_room_state (event_nid, state) VALUES ($1, $2)`, eventNID, string(state))
}

// InviteRoomState returns the stripped state sent with an invite from
// another server, or nil if there is none.
func (t *Queries) InviteRoomState(ctx context.Context, eventNID int64) ([]byte, error) {
	var s string
	err := t.q.QueryRowContext(ctx, `SELECT state FROM invite_room_state WHERE event_nid = $1`, eventNID).Scan(&s)
	if errors.Is(err, stdsql.ErrNoRows) {
		return nil, nil
	}
	return []byte(s), err
}

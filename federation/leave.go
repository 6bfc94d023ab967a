package federation

import (
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// makeLeave is GET /v1/make_leave/{roomId}/{userId}: a leave template,
// by which another server's user rejects an invite, retracts a knock or
// leaves (spec: "Leaving Rooms (Rejecting Invites)"). 403 M_FORBIDDEN
// when the user has nothing to leave: the spec's auth rules let only the
// invited, joined or knocking leave (gomatrixserverlib also lets a leave
// follow a leave, for Synapse's old events, so that is checked here, as
// Synapse does).
func (m *Memberships) makeLeave(r *http.Request) (any, error) {
	ctx := r.Context()
	userID, err := pathUser(r)
	if err != nil {
		return nil, err
	}
	room, verImpl, err := m.residentRoom(r)
	if err != nil {
		return nil, err
	}
	if err := m.requireResident(ctx, room); err != nil {
		return nil, err
	}
	current, err := m.DB.Membership(ctx, room.RoomID, userID)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if current != spec.Join && current != spec.Invite && current != spec.Knock {
		return nil, mxhttp.Forbidden("User %s is not in room %s", userID, room.RoomID)
	}
	return m.template(ctx, room, verImpl, userID, map[string]any{"membership": spec.Leave})
}

// sendLeave is PUT /v2/send_leave/{roomId}/{eventId}: the leave is
// checked (see receiveMembership) and stored; the answer is empty.
func (m *Memberships) sendLeave(r *http.Request) (any, error) {
	if _, err := m.receiveSigned(r, spec.Leave); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// receiveSigned checks the event of a send_ endpoint (receiveMembership),
// its signatures, and gives it to the roomserver.
func (m *Memberships) receiveSigned(r *http.Request, membership string) (sql.RoomInfo, error) {
	room, _, ev, err := m.receiveMembership(r, membership)
	if err != nil {
		return room, err
	}
	if err := m.verifySignatures(r.Context(), ev); err != nil {
		return room, err
	}
	return room, m.submit(r.Context(), room, ev)
}

package federation

import (
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// makeLeave is GET /v1/make_leave/{roomId}/{userId}: a leave template,
// by which another server's user rejects an invite, retracts a knock or
// leaves (spec: "Leaving Rooms (Rejecting Invites)"). 403 M_FORBIDDEN
// when the auth rules would refuse the leave now (the user is not
// invited, joined or knocking).
func (m *Memberships) makeLeave(r *http.Request) (any, error) {
	userID, err := pathUser(r)
	if err != nil {
		return nil, err
	}
	room, verImpl, err := m.residentRoom(r)
	if err != nil {
		return nil, err
	}
	if err := m.requireResident(r.Context(), room); err != nil {
		return nil, err
	}
	return m.template(r.Context(), room, verImpl, userID, map[string]any{"membership": spec.Leave})
}

// sendLeave is PUT /v2/send_leave/{roomId}/{eventId}: the leave is
// checked (see receiveMembership) and stored; the answer is empty.
func (m *Memberships) sendLeave(r *http.Request) (any, error) {
	ctx := r.Context()
	room, _, ev, err := m.receiveMembership(r, spec.Leave)
	if err != nil {
		return nil, err
	}
	if err := m.verifySignatures(ctx, ev); err != nil {
		return nil, err
	}
	if err := m.submit(ctx, room, ev); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

package roomserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// joinRemote handles a JoinRemote input: the handshake through another
// server (see Joiner), then the room's state and auth chain are stored as
// outliers and the join event goes into the timeline with that state
// before it. From then on the room is one we are in, and its servers send
// us its events.
func (rs *Roomserver) joinRemote(ctx context.Context, req InputRequest) (InputResponse, error) {
	jr := req.JoinRemote
	if rs.join == nil {
		return InputResponse{}, mxhttp.Errorf(404, "M_NOT_FOUND", "Room %s is not known here and federation is off", req.RoomID)
	}
	if len(jr.Servers) == 0 {
		return InputResponse{}, mxhttp.Errorf(404, "M_NOT_FOUND", "No server to join room %s through", req.RoomID)
	}
	unlock := rs.rooms.lock(req.RoomID)
	defer unlock()
	if req.InputID != "" {
		if resp, found, err := rs.PreviousInput(ctx, req.InputID); err != nil || found {
			return resp, err
		}
	}
	servers := make([]spec.ServerName, len(jr.Servers))
	for i, s := range jr.Servers {
		servers[i] = spec.ServerName(s)
	}
	res, err := rs.join.Join(ctx, servers, req.RoomID, jr.UserID, jr.Content)
	if err != nil {
		return InputResponse{}, err
	}
	if res.Event.RoomID().String() != req.RoomID || res.Event.StateKey() == nil || *res.Event.StateKey() != jr.UserID {
		return InputResponse{}, fmt.Errorf("join through %s returned event %s, not %s's join to %s", res.Server, res.Event.EventID(), jr.UserID, req.RoomID)
	}
	if known, err := rs.db.EventsByID(ctx, []string{res.Event.EventID()}); err != nil {
		return InputResponse{}, err
	} else if len(known) > 0 && !known[0].Outlier {
		return InputResponse{RoomID: req.RoomID, EventIDs: []string{res.Event.EventID()}}, nil
	}
	if _, err := rs.db.Room(ctx, req.RoomID); errors.Is(err, sql.ErrNotFound) {
		if _, err := rs.db.CreateRoom(ctx, req.RoomID, string(res.RoomVersion.Version())); err != nil && !errors.Is(err, sql.ErrExists) {
			return InputResponse{}, fmt.Errorf("add room %s: %w", req.RoomID, err)
		}
	} else if err != nil {
		return InputResponse{}, err
	}
	rs.views.drop(req.RoomID)
	r := &receiver{rs: rs, roomID: req.RoomID, ver: res.RoomVersion, origin: res.Server}
	if err := r.storeOutliers(ctx, append(res.AuthChain, res.State...)); err != nil {
		return InputResponse{}, err
	}
	ids := make([]string, len(res.State))
	for i, e := range res.State {
		ids[i] = e.EventID()
	}
	stored, err := r.stored(ctx, ids)
	if err != nil {
		return InputResponse{}, err
	}
	before := sql.StateMap{}
	for _, e := range res.State {
		s, ok := stored[e.EventID()]
		if !ok || s.rejected || e.StateKey() == nil {
			continue
		}
		before[sql.StateKey{Type: e.Type(), StateKey: *e.StateKey()}] = s.row.NID
	}
	if err := r.allowed(ctx, res.Event, before); err != nil {
		return InputResponse{}, mxhttp.Forbidden("The join through %s is not allowed by the room's state: %v", res.Server, err)
	}
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	rc := &roomCommit{v: v, evs: []pending{{pdu: res.Event, remote: &remoteFacts{before: before, only: true}}}}
	if req.InputID != "" {
		rc.inputs = []sql.InputRecord{{InputID: req.InputID, RoomID: req.RoomID, EventIDs: []string{res.Event.EventID()}}}
	}
	if err := rs.commit(ctx, []*roomCommit{rc}); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{res.Event.EventID()}}, nil
}

// leaveRemote handles a LeaveRemote input: the handshake through another
// server (see Joiner.Leave), then the leave is kept out of band, as the
// invite it answers was.
func (rs *Roomserver) leaveRemote(ctx context.Context, req InputRequest) (InputResponse, error) {
	lr := req.LeaveRemote
	if rs.join == nil {
		return InputResponse{}, mxhttp.Errorf(404, "M_NOT_FOUND", "Room %s is not known here and federation is off", req.RoomID)
	}
	unlock := rs.rooms.lock(req.RoomID)
	defer unlock()
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	servers := make([]spec.ServerName, len(lr.Servers))
	for i, s := range lr.Servers {
		servers[i] = spec.ServerName(s)
	}
	ev, err := rs.join.Leave(ctx, servers, req.RoomID, lr.UserID, lr.Content)
	if err != nil {
		return InputResponse{}, err
	}
	if m, err := ev.Membership(); err != nil || m != spec.Leave || ev.StateKey() == nil || *ev.StateKey() != lr.UserID || ev.RoomID().String() != req.RoomID {
		return InputResponse{}, fmt.Errorf("leave handshake returned event %s, not %s's leave of %s", ev.EventID(), lr.UserID, req.RoomID)
	}
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v.info.Version))
	if err != nil {
		return InputResponse{}, err
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: ver}
	if err := r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, outOfBand: true}}); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
}

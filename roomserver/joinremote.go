package roomserver

import (
	"context"
	"fmt"
	"slices"

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
	res, err := rs.join.Join(ctx, jr.serverNames(), req.RoomID, jr.UserID, jr.Content)
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
	created, err := rs.ensureRoom(ctx, req.RoomID, string(res.RoomVersion.Version()))
	if err != nil {
		return InputResponse{}, err
	}
	rs.views.Delete(req.RoomID)
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	evs, err := rs.joinedState(ctx, v, res, !created)
	if err != nil {
		return InputResponse{}, err
	}
	rc := &roomCommit{v: v, evs: evs}
	if req.InputID != "" {
		rc.inputs = []sql.InputRecord{{InputID: req.InputID, RoomID: req.RoomID, EventIDs: []string{res.Event.EventID()}}}
	}
	if err := rs.commit(ctx, []*roomCommit{rc}); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{res.Event.EventID()}}, nil
}

// joinedState is what a join through another server adds to the room,
// in one commit: the state and auth chain the resident server sent, as
// outliers (those the room holds already left out), then the join, with
// that state before it, as the room's only forward extremity. The
// Joiner has checked those events (signatures, auth rules against their
// auth events, the join against the state), so they are not checked
// again here; only the join is checked once more against the state as
// this server holds it, without the events it rejected before. maybeKnown
// says the room may hold some of the events already (it is not new).
func (rs *Roomserver) joinedState(ctx context.Context, v *roomView, res *JoinResult, maybeKnown bool) ([]pending, error) {
	all := slices.Concat(res.AuthChain, res.State)
	known := map[string]sql.KnownEvent{}
	if maybeKnown {
		ids := make([]string, len(all))
		for i, e := range all {
			ids[i] = e.EventID()
		}
		var err error
		if known, err = rs.db.KnownEvents(ctx, v.info.NID, ids); err != nil {
			return nil, err
		}
	}
	evs := make([]pending, 0, len(all)+1)
	// The join is the commit's timeline event, even where the resident
	// server listed it among the others.
	adding := map[string]bool{res.Event.EventID(): true}
	for _, e := range all {
		if _, ok := known[e.EventID()]; ok || adding[e.EventID()] {
			continue
		}
		adding[e.EventID()] = true
		evs = append(evs, pending{pdu: e, remote: &remoteFacts{outlier: true}})
	}
	join := &remoteFacts{before: sql.StateMap{}, beforeFresh: make(map[sql.StateKey]string, len(res.State)), only: true}
	state := make([]gomatrixserverlib.PDU, 0, len(res.State))
	for _, e := range res.State {
		if e.StateKey() == nil {
			continue
		}
		k := sql.StateKey{Type: e.Type(), StateKey: *e.StateKey()}
		if s, ok := known[e.EventID()]; !ok {
			join.beforeFresh[k] = e.EventID()
		} else if !s.Rejected {
			join.before[k] = s.NID
		} else {
			continue
		}
		state = append(state, e)
	}
	if err := allowedBy(res.Event, state); err != nil {
		return nil, mxhttp.Forbidden("The join through %s is not allowed by the room's state: %v", res.Server, err)
	}
	return append(evs, pending{pdu: res.Event, remote: join}), nil
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
	ev, err := rs.join.Leave(ctx, lr.serverNames(), req.RoomID, lr.UserID, lr.Content)
	if err != nil {
		return InputResponse{}, err
	}
	if m, err := ev.Membership(); err != nil || m != spec.Leave || ev.StateKey() == nil || *ev.StateKey() != lr.UserID || ev.RoomID().String() != req.RoomID {
		return InputResponse{}, fmt.Errorf("leave handshake returned event %s, not %s's leave of %s", ev.EventID(), lr.UserID, req.RoomID)
	}
	ver, err := v.version()
	if err != nil {
		return InputResponse{}, err
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: ver}
	if err := r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, outOfBand: true}}); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
}

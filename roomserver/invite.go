package roomserver

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// StrippedStateKeys is the state shown with an invite or a knock (spec:
// Stripped state; m.room.create is required since v1.16).
var StrippedStateKeys = []sql.StateKey{
	{Type: spec.MRoomCreate}, {Type: spec.MRoomName}, {Type: "m.room.avatar"}, {Type: "m.room.topic"},
	{Type: spec.MRoomJoinRules}, {Type: spec.MRoomCanonicalAlias}, {Type: "m.room.encryption"},
}

// StrippedState is the state another server's user is shown with an
// invite or a knock (invite_room_state, knock_room_state): the events of
// StrippedStateKeys that lookup finds, whole, as the spec asks since
// v1.16 ("formatted according to the room version"; the create event is
// required, and servers check the room id against it).
func StrippedState(ctx context.Context, lookup func(context.Context, sql.StateKey) (gomatrixserverlib.PDU, error)) ([]json.RawMessage, error) {
	var stripped []json.RawMessage
	for _, k := range StrippedStateKeys {
		e, err := lookup(ctx, k)
		if err != nil {
			return nil, err
		}
		if e != nil {
			stripped = append(stripped, e.JSON())
		}
	}
	return stripped, nil
}

// receiveInvite handles a RemoteInvite input.
func (rs *Roomserver) receiveInvite(ctx context.Context, req InputRequest) (InputResponse, error) {
	in := req.Invite
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(in.RoomVersion))
	if err != nil {
		return InputResponse{}, mxhttp.Errorf(400, "M_INCOMPATIBLE_ROOM_VERSION", "Unsupported room version %s", in.RoomVersion)
	}
	ev, err := ver.NewEventFromUntrustedJSON(in.Event)
	if err != nil {
		return InputResponse{}, mxhttp.BadJSON("Invalid event: %v", err)
	}
	if ev.RoomID().String() != req.RoomID || ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return InputResponse{}, mxhttp.BadJSON("Not an invite to room %s", req.RoomID)
	}
	if m, err := ev.Membership(); err != nil || m != spec.Invite {
		return InputResponse{}, mxhttp.BadJSON("Not an invite")
	}
	unlock := rs.rooms.lock(req.RoomID)
	defer unlock()
	if _, err := rs.ensureRoom(ctx, req.RoomID, in.RoomVersion); err != nil {
		return InputResponse{}, err
	}
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	if v.info.Version != in.RoomVersion {
		return InputResponse{}, mxhttp.Errorf(400, "M_INCOMPATIBLE_ROOM_VERSION", "Room %s has version %s", req.RoomID, v.info.Version)
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: ver, origin: spec.ServerName(in.Origin)}
	if len(v.state) > 0 {
		// A room we are in: the invite is one of its events.
		if err := r.accept(ctx, ev, true); err != nil {
			return InputResponse{}, err
		}
		return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
	}
	known, err := rs.db.EventsByID(ctx, []string{ev.EventID()})
	if err != nil {
		return InputResponse{}, err
	}
	if len(known) == 0 {
		state := in.InviteRoomState
		if len(state) == 0 {
			state = json.RawMessage("[]")
		}
		err = r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, outOfBand: true, inviteRoomState: state}})
		if err != nil {
			return InputResponse{}, err
		}
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
}

// countersigned has the invitee's server sign an invite of one of its
// users (spec: PUT /invite/v2) and returns the event with both
// signatures. lookup gives the room's state for the stripped state.
func (rs *Roomserver) countersigned(ctx context.Context, ver gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU, lookup stateLookup) (gomatrixserverlib.PDU, error) {
	if rs.invite == nil {
		return nil, mxhttp.Forbidden("Users of other servers cannot be invited: federation is off")
	}
	stripped, err := StrippedState(ctx, lookup)
	if err != nil {
		return nil, err
	}
	signed, err := rs.invite.Invite(ctx, ver, ev, stripped)
	if err != nil {
		var merr *mxhttp.Error
		if errors.As(err, &merr) {
			return nil, err
		}
		return nil, mxhttp.Errorf(502, "M_UNKNOWN", "The invitee's server did not accept the invite: %v", err)
	}
	if signed.EventID() != ev.EventID() {
		return nil, mxhttp.Errorf(502, "M_UNKNOWN", "The invitee's server changed the invite")
	}
	return signed, nil
}

package roomserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// knockRemote handles a KnockRemote input: the handshake through another
// server (see Joiner.Knock), then the knock is kept out of band with the
// room state the resident server sent, as an invite to a room we are not
// in is: the knocker's /sync shows it under rooms.knock. The resident
// server invites the knocker or refuses them; either reaches us as it
// would for any user of ours not in the room.
func (rs *Roomserver) knockRemote(ctx context.Context, req InputRequest) (InputResponse, error) {
	kr := req.KnockRemote
	if rs.join == nil {
		return InputResponse{}, mxhttp.Errorf(404, "M_NOT_FOUND", "Room %s is not known here and federation is off", req.RoomID)
	}
	unlock := rs.rooms.lock(req.RoomID)
	defer unlock()
	res, err := rs.join.Knock(ctx, kr.serverNames(), req.RoomID, kr.UserID, kr.Content)
	if err != nil {
		return InputResponse{}, err
	}
	ev := res.Event
	if m, err := ev.Membership(); err != nil || m != spec.Knock || ev.StateKey() == nil || *ev.StateKey() != kr.UserID || ev.RoomID().String() != req.RoomID {
		return InputResponse{}, fmt.Errorf("knock handshake returned event %s, not %s's knock on %s", ev.EventID(), kr.UserID, req.RoomID)
	}
	version := string(res.RoomVersion.Version())
	if _, err := rs.ensureRoom(ctx, req.RoomID, version); err != nil {
		return InputResponse{}, err
	}
	v, err := rs.view(ctx, req.RoomID)
	if err != nil {
		return InputResponse{}, err
	}
	if v.info.Version != version {
		return InputResponse{}, fmt.Errorf("room %s has version %s here, not %s", req.RoomID, v.info.Version, version)
	}
	state := res.RoomState
	if len(state) == 0 {
		state = []byte("[]")
	}
	r := &receiver{rs: rs, roomID: req.RoomID, ver: res.RoomVersion}
	if err := r.commit(ctx, v, pending{pdu: ev, remote: &remoteFacts{outlier: true, outOfBand: true, inviteRoomState: state}}); err != nil {
		return InputResponse{}, err
	}
	return InputResponse{RoomID: req.RoomID, EventIDs: []string{ev.EventID()}}, nil
}

// ensureRoom adds a room this server learns of from another (a join, an
// invite, a knock) unless it knows it already, and reports whether it
// added it.
func (rs *Roomserver) ensureRoom(ctx context.Context, roomID, version string) (bool, error) {
	_, err := rs.db.Room(ctx, roomID)
	if !errors.Is(err, sql.ErrNotFound) {
		return false, err
	}
	if _, err := rs.db.CreateRoom(ctx, roomID, version); err != nil && !errors.Is(err, sql.ErrExists) {
		return false, fmt.Errorf("add room %s: %w", roomID, err)
	}
	return true, nil
}

package roomserver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// createRoom builds a new room's initial events, each on the previous one,
// and commits them all in one transaction: a room exists completely or not
// at all.
func (rs *Roomserver) createRoom(ctx context.Context, inputID string, cr *CreateRoom) (InputResponse, error) {
	for attempt := 0; ; attempt++ {
		// Room version 12 derives the room id from the create event: the
		// same creator creating rooms with the same content in the same
		// millisecond makes one id. A later timestamp makes another.
		resp, err := rs.createRoomOnce(ctx, inputID, cr, rs.now().Add(time.Duration(attempt)*time.Millisecond))
		var me *mxhttp.Error
		if attempt < 8 && errors.As(err, &me) && me.Code == "M_ROOM_IN_USE" && domainless(cr.RoomVersion) {
			continue
		}
		return resp, err
	}
}

// domainless reports whether a room version derives room ids from the
// create event (room version 12 on).
func domainless(version string) bool {
	v, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	return err == nil && v.DomainlessRoomIDs()
}

// createRoomOnce is one attempt of createRoom.
func (rs *Roomserver) createRoomOnce(ctx context.Context, inputID string, cr *CreateRoom, now time.Time) (InputResponse, error) {
	rc, err := rs.buildRoom(ctx, cr, now)
	if err != nil {
		return rs.unlessDone(ctx, inputID, err)
	}
	roomID := rc.v.info.RoomID
	ids := make([]string, len(rc.evs))
	for i, p := range rc.evs {
		ids[i] = p.pdu.EventID()
	}
	if inputID != "" {
		rc.inputs = []sql.InputRecord{{InputID: inputID, RoomID: roomID, EventIDs: ids}}
	}
	unlock := rs.rooms.lock(roomID)
	defer unlock()
	if err := rs.commit(ctx, []*roomCommit{rc}); err != nil {
		if errors.Is(err, errInputDone) {
			return rs.previousResult(ctx, inputID)
		}
		if errors.Is(err, sql.ErrExists) {
			return InputResponse{}, mxhttp.Errorf(400, "M_ROOM_IN_USE", "Room %s already exists", roomID)
		}
		return InputResponse{}, err
	}
	return InputResponse{RoomID: roomID, EventIDs: ids}, nil
}

// buildRoom builds a new room's initial events, ready to commit, all
// stamped now.
func (rs *Roomserver) buildRoom(ctx context.Context, cr *CreateRoom, now time.Time) (*roomCommit, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(cr.RoomVersion))
	if err != nil {
		return nil, mxhttp.Errorf(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %q", cr.RoomVersion)
	}
	if len(cr.Events) == 0 || cr.Events[0].Type != spec.MRoomCreate {
		return nil, mxhttp.BadJSON("a new room starts with its m.room.create event")
	}
	roomID := ""
	if !verImpl.DomainlessRoomIDs() {
		roomID = "!" + randomLetters(18) + ":" + string(rs.serverName)
	}
	// Until commit the room's state lives here, as parsed events.
	state := make(map[sql.StateKey]gomatrixserverlib.PDU)
	lookup := func(_ context.Context, k sql.StateKey) (gomatrixserverlib.PDU, error) { return state[k], nil }
	var built []pending
	var prev []string
	// idFree: the room id was found unused, before asking another server.
	idFree := false
	for i := range cr.Events {
		ne := &cr.Events[i]
		ev, err := rs.buildEvent(ctx, verImpl, roomID, prev, int64(i+1), lookup, ne, now)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			// Room version 12 derives the room id from the create event.
			roomID = ev.RoomID().String()
		}
		if invitesRemoteUser(ev, rs.serverName) {
			// As in an existing room (buildInto), the invitee's server
			// countersigns; it must not hear of a room id already taken,
			// which a retried version 12 create can make.
			if !idFree {
				if _, err := rs.db.Room(ctx, roomID); err == nil {
					return nil, mxhttp.Errorf(400, "M_ROOM_IN_USE", "Room %s already exists", roomID)
				} else if !errors.Is(err, sql.ErrNotFound) {
					return nil, err
				}
				idFree = true
			}
			if ev, err = rs.countersigned(ctx, verImpl, ev, lookup); err != nil {
				return nil, err
			}
		}
		if sk := ev.StateKey(); sk != nil {
			state[sql.StateKey{Type: ev.Type(), StateKey: *sk}] = ev
		}
		built = append(built, pending{pdu: ev, ne: ne})
		prev = []string{ev.EventID()}
	}
	v := &roomView{info: sql.RoomInfo{RoomID: roomID, Version: cr.RoomVersion, Extremities: []string{}}, state: sql.StateMap{}}
	return &roomCommit{v: v, evs: built}, nil
}

// randomLetters returns n random ASCII letters, for room ids.
func randomLetters(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// makeKnock is GET /v1/make_knock/{roomId}/{userId}?ver=…: a knock
// template (spec: "Knocking upon a room"). Unlike make_join, ver is
// required (400 M_MISSING_PARAM, as Synapse) since knocking came with
// room version 7. Whether the user may knock (the join rules, a ban, a
// room version without knocking) is the auth rules' answer: 403
// M_FORBIDDEN.
func (m *Memberships) makeKnock(r *http.Request) (any, error) {
	userID, err := pathUser(r)
	if err != nil {
		return nil, err
	}
	room, verImpl, err := m.residentRoom(r)
	if err != nil {
		return nil, err
	}
	supported := r.URL.Query()["ver"]
	if len(supported) == 0 {
		return nil, mxhttp.MissingParam("Missing ver: the room versions your server supports")
	}
	if err := compatible(room, supported); err != nil {
		return nil, err
	}
	if err := m.requireResident(r.Context(), room); err != nil {
		return nil, err
	}
	return m.template(r.Context(), room, verImpl, userID, map[string]any{"membership": spec.Knock})
}

// sendKnock is PUT /v1/send_knock/{roomId}/{eventId}: the knock is
// checked (see receiveMembership) and stored; the answer is the room's
// stripped state, for the knocker's client to show.
func (m *Memberships) sendKnock(r *http.Request) (any, error) {
	ctx := r.Context()
	room, err := m.receiveSigned(r, spec.Knock)
	if err != nil {
		return nil, err
	}
	state, err := roomserver.StrippedState(ctx, func(ctx context.Context, k sql.StateKey) (gomatrixserverlib.PDU, error) {
		return m.stateEvent(ctx, room.RoomID, k)
	})
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	for i, e := range state {
		if state[i], err = federationJSON(e); err != nil {
			return nil, mxhttp.Internal(err)
		}
	}
	return map[string]any{"knock_room_state": state}, nil
}

// Knock knocks for a user on a room this server is not in, through
// servers that are (spec: "Knocking upon a room"): make_knock, the knock
// built from the template and signed here with content's fields, then
// send_knock. Servers are tried as Join tries them. The answer's
// knock_room_state is kept as far as it is a list of objects.
func (j *Joiner) Knock(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (*roomserver.KnockResult, error) {
	var res *roomserver.KnockResult
	err := j.tryServers(ctx, servers, "knock", roomID, userID, func(s spec.ServerName) error {
		made, err := j.make(ctx, s, "knock", roomID, userID, supportedVersions.Encode())
		if err != nil {
			return err
		}
		verImpl, ev, err := j.buildFromTemplate(made, roomID, userID, spec.Knock, content)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		var answer struct {
			KnockRoomState []json.RawMessage `json:"knock_room_state"`
		}
		path := "/_matrix/federation/v1/send_knock/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID())
		if err := j.req.do(ctx, http.MethodPut, s, path, json.RawMessage(ev.JSON()), &answer); err != nil {
			return err
		}
		state, err := json.Marshal(objectsOnly(answer.KnockRoomState))
		if err != nil {
			return err
		}
		res = &roomserver.KnockResult{RoomVersion: verImpl, Event: ev, RoomState: state}
		return nil
	})
	return res, err
}

// objectsOnly keeps the JSON objects of a list.
func objectsOnly(list []json.RawMessage) []json.RawMessage {
	kept := []json.RawMessage{}
	for _, v := range list {
		var obj map[string]json.RawMessage
		if json.Unmarshal(v, &obj) == nil && obj != nil {
			kept = append(kept, v)
		}
	}
	return kept
}

package federation

import (
	"encoding/json"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestMakeKnock checks make_knock (knocks.yaml): ver is required, the
// room version must be among it (400 M_INCOMPATIBLE_ROOM_VERSION with the
// room's version), and the auth rules refuse a knock on a room whose join
// rule is not knock, or whose version predates knocking (403).
func TestMakeKnock(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		knock, _ := j.createRoomWith("10", nil, map[string]any{"join_rule": "knock"}, "shared")
		public, _ := j.createRoom("10", "shared")
		old, _ := j.createRoomWith("6", nil, map[string]any{"join_rule": "knock"}, "shared")

		m := j.template("knock", fedRemote, knock, fedBob, "7", "10")
		var ev struct {
			Type     string         `json:"type"`
			StateKey string         `json:"state_key"`
			Sender   string         `json:"sender"`
			Content  map[string]any `json:"content"`
		}
		if err := json.Unmarshal(m.Event, &ev); err != nil || ev.Type != spec.MRoomMember || ev.StateKey != fedBob || ev.Sender != fedBob ||
			ev.Content["membership"] != "knock" || m.RoomVersion != "10" {
			t.Fatalf("knock template %s (%s)", m.Event, m.RoomVersion)
		}
		j.expectError(fedRemote, "GET", makePath("knock", knock, fedBob), nil, 400, "M_MISSING_PARAM")
		code, out := j.call(fedRemote, "GET", makePath("knock", knock, fedBob, "1", "6"), nil)
		var version, errcode string
		_ = json.Unmarshal(out["room_version"], &version)
		_ = json.Unmarshal(out["errcode"], &errcode)
		if code != 400 || errcode != "M_INCOMPATIBLE_ROOM_VERSION" || version != "10" {
			t.Errorf("incompatible version: %d %s", code, out)
		}
		j.expectError(fedRemote, "GET", makePath("knock", public, fedBob, "10"), nil, 403, "M_FORBIDDEN")
		j.expectError(fedRemote, "GET", makePath("knock", old, fedBob, "6"), nil, 403, "M_FORBIDDEN")
		j.expectError(fedOther, "GET", makePath("knock", knock, fedBob, "10"), nil, 403, "M_FORBIDDEN")
		j.expectError(fedRemote, "GET", makePath("knock", "!nowhere:ours.example", fedBob, "10"), nil, 404, "M_NOT_FOUND")
	})
}

// TestSendKnock checks send_knock: an event that is not the requesting
// server's user's knock is 400 M_INVALID_PARAM; a knock is stored and
// answered with the room's stripped state, whole events with the create
// event among them (spec v1.16).
func TestSendKnock(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		j.input.pass = rsInput{j.rs}
		roomID, _ := j.createRoomWith("10", nil, map[string]any{"join_rule": "knock"}, "shared")
		knock := j.build(j.remote, j.template("knock", fedRemote, roomID, fedBob, "10"), roomID, fedBob, "knock")
		if code, errcode := j.send(fedOther, sendPath("knock", "v1", roomID, knock.EventID()), knock.JSON()); code != 400 || errcode != "M_INVALID_PARAM" {
			t.Errorf("knock of another server's user: %d %s", code, errcode)
		}
		leave := withJSON(t, knock, true, "membership", "leave")
		if code, errcode := j.send(fedRemote, sendPath("knock", "v1", roomID, knock.EventID()), leave); code != 400 || errcode != "M_INVALID_PARAM" {
			t.Errorf("a changed knock: %d %s", code, errcode)
		}
		code, out := j.call(fedRemote, "PUT", sendPath("knock", "v1", roomID, knock.EventID()), json.RawMessage(knock.JSON()))
		if code != 200 {
			t.Fatalf("send_knock: %d %s", code, out)
		}
		var state []struct {
			Type     string          `json:"type"`
			RoomID   string          `json:"room_id"`
			Sender   string          `json:"sender"`
			Content  json.RawMessage `json:"content"`
			EventID  string          `json:"event_id"`
			Unsigned json.RawMessage `json:"unsigned"`
		}
		if err := json.Unmarshal(out["knock_room_state"], &state); err != nil {
			t.Fatalf("knock_room_state %s: %v", out["knock_room_state"], err)
		}
		types := map[string]bool{}
		for _, e := range state {
			types[e.Type] = true
			if e.RoomID != roomID || e.Sender != fedAlice || e.Unsigned != nil {
				t.Errorf("stripped state entry %+v: want a whole event of the room, as sent over federation", e)
			}
		}
		if !types[spec.MRoomCreate] || !types[spec.MRoomJoinRules] {
			t.Errorf("knock_room_state types %v: want the create event and the join rules", types)
		}
		if m, err := db.Membership(t.Context(), roomID, fedBob); err != nil || m != "knock" {
			t.Errorf("bob's membership after the knock: %q %v", m, err)
		}
	})
}

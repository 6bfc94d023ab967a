package clientapi_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// Helpers of the room extras tests (upgrades, hierarchy, summaries,
// mutual rooms, reports).

// exState sends a state event as cli and returns its id.
func exState(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID, typ, key string, content any) string {
	t.Helper()
	var resp struct {
		EventID string `json:"event_id"`
	}
	h.do(t, cli, "PUT", "/rooms/"+pathEsc(roomID)+"/state/"+pathEsc(typ)+"/"+pathEsc(key), content).expect(t, 200).JSON(t, &resp)
	return resp.EventID
}

// exContent reads a state event's content as cli.
func exContent(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID, typ, key string) map[string]any {
	t.Helper()
	return h.do(t, cli, "GET", "/rooms/"+pathEsc(roomID)+"/state/"+pathEsc(typ)+"/"+pathEsc(key), nil).expect(t, 200).Object(t)
}

// exUpgrade asks for an upgrade of roomID.
func exUpgrade(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID string, body any) response {
	t.Helper()
	return h.do(t, cli, "POST", "/rooms/"+pathEsc(roomID)+"/upgrade", body)
}

// exUpgraded upgrades roomID to version and returns the replacement room.
func exUpgraded(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID string, body map[string]any) string {
	t.Helper()
	var resp struct {
		ReplacementRoom string `json:"replacement_room"`
	}
	exUpgrade(t, h, cli, roomID, body).expect(t, 200).JSON(t, &resp)
	if !strings.HasPrefix(resp.ReplacementRoom, "!") || resp.ReplacementRoom == roomID {
		t.Fatalf("upgrade of %s gave replacement_room %q", roomID, resp.ReplacementRoom)
	}
	return resp.ReplacementRoom
}

// jsonEqual compares two values as JSON.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	var u, v any
	_ = json.Unmarshal(x, &u)
	_ = json.Unmarshal(y, &v)
	ux, _ := json.Marshal(u)
	vy, _ := json.Marshal(v)
	return string(ux) == string(vy)
}

// TestRoomUpgrade: a version 10 room upgraded to 12 (spec: Room Upgrades,
// server behaviour): the replacement's create event, the copied state,
// power levels and bans, the tombstone, the old room's restricted power
// levels, and the local aliases and directory entry moving over.
func TestRoomUpgrade(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		server := h.srv.Config.ServerName
		alice, bob, dave := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "dave")
		alias, alt, far := "#upg:"+server, "#upg2:"+server, "#far:elsewhere.example"
		carol, eve := h.userID("carol"), "@eve:other.example"
		copied := map[string]any{
			"m.room.encryption":         map[string]any{"algorithm": "m.megolm.v1.aes-sha2"},
			"m.room.server_acl":         map[string]any{"allow": []any{"*"}, "deny": []any{"evil.example"}, "allow_ip_literals": false},
			"m.room.avatar":             map[string]any{"url": "mxc://example.org/avatar"},
			"m.room.guest_access":       map[string]any{"guest_access": "forbidden"},
			"m.room.history_visibility": map[string]any{"history_visibility": "world_readable"},
		}
		var initial []map[string]any
		for typ, c := range copied {
			initial = append(initial, map[string]any{"type": typ, "content": c})
		}
		// Not on the list of state to copy.
		initial = append(initial, map[string]any{"type": "org.example.custom", "content": map[string]any{"a": 1}})
		old := h.createRoom(t, alice, map[string]any{
			"room_version": "10", "preset": "public_chat", "visibility": "public", "room_alias_name": "upg",
			"name": "Upgrade me", "topic": "A topic", "initial_state": initial,
			"power_level_content_override": map[string]any{"users": map[string]any{alice.UserID.String(): 100, bob.UserID.String(): 40, eve: 75}},
		})
		h.do(t, alice, "PUT", "/directory/room/"+pathEsc(alt), map[string]any{"room_id": old}).expect(t, 200)
		exState(t, h, alice, old, "m.room.canonical_alias", "", map[string]any{"alias": alias, "alt_aliases": []string{alt, far}})
		h.do(t, alice, "POST", "/rooms/"+pathEsc(old)+"/ban", map[string]any{"user_id": carol, "reason": "spam"}).expect(t, 200)
		h.join(t, bob, old)
		h.send(t, alice, old, "last words")

		// Errors first (room_upgrades.yaml).
		v12 := map[string]any{"new_version": "12"}
		exUpgrade(t, h, bob, old, v12).expectError(t, 403, "M_FORBIDDEN")  // level 40 < 100 for the tombstone
		exUpgrade(t, h, dave, old, v12).expectError(t, 403, "M_FORBIDDEN") // not in the room
		exUpgrade(t, h, nil, old, v12).expectError(t, 401, "M_MISSING_TOKEN")
		exUpgrade(t, h, alice, "!unknown:"+server, v12).expectError(t, 404, "M_NOT_FOUND")
		exUpgrade(t, h, alice, "not-a-room", v12).expectError(t, 400, "M_INVALID_PARAM")
		exUpgrade(t, h, alice, old, map[string]any{"new_version": "999"}).expectError(t, 400, "M_UNSUPPORTED_ROOM_VERSION")
		exUpgrade(t, h, alice, old, map[string]any{"new_version": "org.example.unstable"}).expectError(t, 400, "M_UNSUPPORTED_ROOM_VERSION")
		exUpgrade(t, h, alice, old, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
		exUpgrade(t, h, alice, old, map[string]any{"new_version": 12}).expectError(t, 400, "M_BAD_JSON")
		exUpgrade(t, h, alice, old, "{not json").expectError(t, 400, "M_NOT_JSON")
		exUpgrade(t, h, alice, old, map[string]any{"new_version": "12", "additional_creators": []string{"bob"}}).expectError(t, 400, "M_INVALID_PARAM")
		exUpgrade(t, h, alice, old, map[string]any{"new_version": "12", "additional_creators": "bob"}).expectError(t, 400, "M_BAD_JSON")
		// A refused upgrade sends no tombstone.
		h.do(t, alice, "GET", "/rooms/"+pathEsc(old)+"/state/m.room.tombstone/", nil).expectError(t, 404, "M_NOT_FOUND")

		newID := exUpgraded(t, h, alice, old, map[string]any{"new_version": "12", "additional_creators": []string{bob.UserID.String()}})
		// A retried request gets the same answer, not a second room.
		if again := exUpgraded(t, h, alice, old, map[string]any{"new_version": "12"}); again != newID {
			t.Fatalf("retried upgrade made %s, first made %s", again, newID)
		}

		state := h.state(t, alice, newID)
		create := state[[2]string{"m.room.create", ""}]
		if create.Sender != alice.UserID.String() || create.Content["room_version"] != "12" {
			t.Fatalf("new room's create event: %+v", create)
		}
		if _, ok := create.Content["creator"]; ok {
			t.Fatalf("a version 12 create event has creator: %v", create.Content)
		}
		if !jsonEqual(create.Content["additional_creators"], []string{bob.UserID.String()}) {
			t.Fatalf("additional_creators = %v", create.Content["additional_creators"])
		}
		pred, _ := create.Content["predecessor"].(map[string]any)
		if pred["room_id"] != old {
			t.Fatalf("predecessor = %v, want room_id %s", pred, old)
		}
		if evID, _ := pred["event_id"].(string); h.event(t, alice, old, evID).RoomID != old {
			t.Fatalf("predecessor event %s is not in the old room", evID)
		}
		for typ, want := range copied {
			if got := state[[2]string{typ, ""}]; !jsonEqual(got.Content, want) {
				t.Errorf("%s in the new room = %v, want %v", typ, got.Content, want)
			}
		}
		for _, k := range [][2]string{{"m.room.name", ""}, {"m.room.topic", ""}, {"m.room.join_rules", ""}} {
			if got, want := state[k].Content, h.state(t, alice, old)[k].Content; !jsonEqual(got, want) {
				t.Errorf("%s in the new room = %v, want %v", k[0], got, want)
			}
		}
		if _, ok := state[[2]string{"org.example.custom", ""}]; ok {
			t.Error("state outside the list to copy was copied")
		}
		if m := state[[2]string{"m.room.member", carol}]; m.Content["membership"] != "ban" || m.Content["reason"] != "spam" {
			t.Errorf("the ban of %s was not copied: %+v", carol, m)
		}
		if _, ok := state[[2]string{"m.room.member", bob.UserID.String()}]; ok {
			t.Error("a membership other than a ban was copied")
		}
		pl := state[[2]string{"m.room.power_levels", ""}].Content
		users, _ := pl["users"].(map[string]any)
		if _, ok := users[alice.UserID.String()]; ok || users[bob.UserID.String()] != nil {
			t.Errorf("version 12 power levels list a creator: %v", users)
		}
		if users[eve] != float64(75) {
			t.Errorf("users[%s] = %v, want 75 copied", eve, users[eve])
		}
		if events, _ := pl["events"].(map[string]any); events["m.room.tombstone"] != float64(150) {
			t.Errorf("tombstone level in the upgraded room = %v, want 150", events["m.room.tombstone"])
		}
		if ca := state[[2]string{"m.room.canonical_alias", ""}].Content; !jsonEqual(ca, map[string]any{"alias": alias, "alt_aliases": []string{alt}}) {
			t.Errorf("new room's canonical alias = %v: want the local aliases", ca)
		}

		// The old room: tombstone, canonical alias without the moved
		// aliases, raised power levels.
		if ts := exContent(t, h, alice, old, "m.room.tombstone", ""); ts["replacement_room"] != newID || ts["body"] == "" {
			t.Fatalf("tombstone = %v", ts)
		}
		if ca := exContent(t, h, alice, old, "m.room.canonical_alias", ""); !jsonEqual(ca, map[string]any{"alt_aliases": []string{far}}) {
			t.Errorf("old room's canonical alias = %v, want only the remote alias left", ca)
		}
		oldPL := exContent(t, h, alice, old, "m.room.power_levels", "")
		if oldPL["events_default"] != float64(50) || oldPL["invite"] != float64(50) {
			t.Errorf("old room's power levels not restricted: %v", oldPL)
		}
		h.do(t, bob, "PUT", "/rooms/"+pathEsc(old)+"/send/m.room.message/after", map[string]any{"msgtype": "m.text", "body": "x"}).
			expectError(t, 403, "M_FORBIDDEN")

		// Aliases and the directory entry moved.
		for _, a := range []string{alias, alt} {
			if got := h.do(t, nil, "GET", "/directory/room/"+pathEsc(a), nil).expect(t, 200).Object(t)["room_id"]; got != newID {
				t.Errorf("%s resolves to %v, want %s", a, got, newID)
			}
		}
		if got := h.do(t, nil, "GET", "/directory/list/room/"+pathEsc(newID), nil).expect(t, 200).Object(t)["visibility"]; got != "public" {
			t.Errorf("new room's directory visibility = %v", got)
		}
		if got := h.do(t, nil, "GET", "/directory/list/room/"+pathEsc(old), nil).expect(t, 200).Object(t)["visibility"]; got != "private" {
			t.Errorf("old room's directory visibility = %v", got)
		}
		// The creators of the new room may upgrade it again; bob as an
		// additional creator.
		h.join(t, bob, newID)
		exUpgraded(t, h, bob, newID, map[string]any{"new_version": "12"})
	})
}

// TestRoomUpgradeVersions: upgrades from version 1 to 10 (create event
// with creator, string-free power levels) and down from 12 to 10 (the
// creators, whose power was implied, get an explicit level above all),
// and of a space, whose children come along.
func TestRoomUpgradeVersions(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		me := alice.UserID.String()

		v1 := h.createRoom(t, alice, map[string]any{"room_version": "1", "name": "Ancient", "preset": "public_chat"})
		h.join(t, bob, v1)
		v10 := exUpgraded(t, h, alice, v1, map[string]any{"new_version": "10", "additional_creators": []string{"ignored"}})
		state := h.state(t, alice, v10)
		create := state[[2]string{"m.room.create", ""}].Content
		if create["room_version"] != "10" || create["creator"] != me || create["additional_creators"] != nil {
			t.Fatalf("create of the version 10 room = %v", create)
		}
		if pred, _ := create["predecessor"].(map[string]any); pred["room_id"] != v1 || pred["event_id"] == nil {
			t.Fatalf("predecessor = %v", create["predecessor"])
		}
		if users, _ := state[[2]string{"m.room.power_levels", ""}].Content["users"].(map[string]any); users[me] != float64(100) {
			t.Fatalf("users = %v, want %s at 100", users, me)
		}
		if state[[2]string{"m.room.name", ""}].Content["name"] != "Ancient" {
			t.Fatal("name not copied")
		}
		if exContent(t, h, alice, v1, "m.room.tombstone", "")["replacement_room"] != v10 {
			t.Fatal("no tombstone in the version 1 room")
		}

		// Down from 12: both creators get a level above everyone else's
		// (eve's 150, the tombstone's 150).
		eve := "@eve:other.example"
		v12 := h.createRoom(t, alice, map[string]any{"room_version": "12", "preset": "private_chat",
			"creation_content":             map[string]any{"additional_creators": []string{bob.UserID.String()}},
			"power_level_content_override": map[string]any{"users": map[string]any{eve: 150}}})
		down := exUpgraded(t, h, alice, v12, map[string]any{"new_version": "10"})
		pl := h.state(t, alice, down)[[2]string{"m.room.power_levels", ""}].Content
		users, _ := pl["users"].(map[string]any)
		if !jsonEqual(users, map[string]any{me: 151, bob.UserID.String(): 151, eve: 150}) {
			t.Fatalf("users after a downgrade = %v, want both creators at 151 above eve's 150", users)
		}

		space := h.createRoom(t, alice, map[string]any{"creation_content": map[string]any{"type": "m.space"}, "preset": "public_chat"})
		child := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
		exState(t, h, alice, space, "m.space.child", child, map[string]any{"via": []string{h.srv.Config.ServerName}, "order": "a"})
		exState(t, h, alice, space, "m.space.child", "!gone:elsewhere.example", map[string]any{})
		newSpace := exUpgraded(t, h, alice, space, map[string]any{"new_version": "12"})
		state = h.state(t, alice, newSpace)
		if state[[2]string{"m.room.create", ""}].Content["type"] != "m.space" {
			t.Fatal("the room type was not copied")
		}
		if c := state[[2]string{"m.space.child", child}].Content; c["order"] != "a" {
			t.Fatalf("space child not copied: %v", c)
		}
		if _, ok := state[[2]string{"m.space.child", "!gone:elsewhere.example"}]; ok {
			t.Fatal("a removed space child was copied")
		}
		// A room that is not a space keeps no children.
		plain := h.createRoom(t, alice, nil)
		exState(t, h, alice, plain, "m.space.child", child, map[string]any{"via": []string{"x"}})
		keys := []string{}
		for k := range h.state(t, alice, exUpgraded(t, h, alice, plain, map[string]any{"new_version": "12"})) {
			keys = append(keys, k[0])
		}
		if slices.Contains(keys, "m.space.child") {
			t.Fatal("space children of a room that is not a space were copied")
		}
	})
}

package clientapi_test

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestCreateRoomPresets: each preset's state (create_room.yaml's table)
// and default power levels (Synapse's).
func TestCreateRoomPresets(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		aliceID, bobID := alice.UserID.String(), bob.UserID.String()
		cases := []struct {
			name      string
			body      map[string]any
			joinRule  string
			guest     string // "" when the preset sets no guest access
			invite    float64
			bobLevel  float64 // in room versions up to 11
			bobCreate bool    // bob an additional creator in room version 12
		}{
			{"private_chat", map[string]any{"preset": "private_chat"}, "invite", "can_join", 0, 0, false},
			{"trusted_private_chat", map[string]any{"preset": "trusted_private_chat"}, "invite", "can_join", 0, 100, true},
			{"public_chat", map[string]any{"preset": "public_chat"}, "public", "", 50, 0, false},
			{"visibility public", map[string]any{"visibility": "public"}, "public", "", 50, 0, false},
			{"visibility private", map[string]any{"visibility": "private"}, "invite", "can_join", 0, 0, false},
			{"no preset", map[string]any{}, "invite", "can_join", 0, 0, false},
		}
		for _, version := range []string{"11", "12"} {
			for _, c := range cases {
				t.Run(c.name+" v"+version, func(t *testing.T) {
					body := maps.Clone(c.body)
					body["room_version"] = version
					body["invite"] = []string{bobID}
					roomID := h.createRoom(t, alice, body)
					state := h.state(t, alice, roomID)
					get := func(typ, key, field string) any {
						t.Helper()
						ev, ok := state[[2]string{typ, key}]
						if !ok {
							return nil
						}
						return ev.Content[field]
					}
					if got := get("m.room.join_rules", "", "join_rule"); got != c.joinRule {
						t.Errorf("join_rule %v, want %s", got, c.joinRule)
					}
					if got := get("m.room.history_visibility", "", "history_visibility"); got != "shared" {
						t.Errorf("history_visibility %v", got)
					}
					if got, _ := get("m.room.guest_access", "", "guest_access").(string); got != c.guest {
						t.Errorf("guest_access %q, want %q", got, c.guest)
					}
					if got := get("m.room.member", bobID, "membership"); got != "invite" {
						t.Errorf("bob's membership %v", got)
					}
					pl := state[[2]string{"m.room.power_levels", ""}].Content
					if pl["invite"] != c.invite {
						t.Errorf("invite level %v, want %v", pl["invite"], c.invite)
					}
					users, _ := pl["users"].(map[string]any)
					var creators []any
					if raw, ok := state[[2]string{"m.room.create", ""}].Content["additional_creators"]; ok {
						creators, _ = raw.([]any)
					}
					if version == "12" {
						// v12: creators are not listed; trusted invitees become creators.
						if len(users) != 0 {
							t.Errorf("v12 users %v, want none", users)
						}
						if c.bobCreate != slices.Contains(creators, any(bobID)) {
							t.Errorf("additional_creators %v (bob a creator: want %v)", creators, c.bobCreate)
						}
						return
					}
					want := map[string]any{aliceID: float64(100)}
					if c.bobLevel != 0 {
						want[bobID] = c.bobLevel
					}
					if !reflect.DeepEqual(users, want) {
						t.Errorf("users %v, want %v", users, want)
					}
					if len(creators) != 0 {
						t.Errorf("additional_creators %v before v12", creators)
					}
				})
			}
		}

		t.Run("default power levels", func(t *testing.T) {
			for version, tombstone := range map[string]float64{"11": 100, "12": 150} {
				roomID := h.createRoom(t, alice, map[string]any{"room_version": version})
				pl := h.state(t, alice, roomID)[[2]string{"m.room.power_levels", ""}].Content
				events := map[string]any{"m.room.name": float64(50), "m.room.power_levels": float64(100), "m.room.history_visibility": float64(100),
					"m.room.canonical_alias": float64(50), "m.room.avatar": float64(50), "m.room.tombstone": tombstone,
					"m.room.server_acl": float64(100), "m.room.encryption": float64(100)}
				if !reflect.DeepEqual(pl["events"], events) {
					t.Errorf("v%s events %v, want %v", version, pl["events"], events)
				}
				for k, want := range map[string]float64{"users_default": 0, "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0} {
					if pl[k] != want {
						t.Errorf("v%s %s = %v, want %v", version, k, pl[k], want)
					}
				}
				if n, _ := pl["notifications"].(map[string]any); n["room"] != float64(50) {
					t.Errorf("notifications %v", pl["notifications"])
				}
			}
		})
	})
}

// TestCreateRoomOptions: every option of createRoom in one request, and
// the order the spec gives the initial events.
func TestCreateRoomOptions(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		aliceID, bobID := alice.UserID.String(), bob.UserID.String()
		if err := alice.SetDisplayName(ctx, "Alice A."); err != nil {
			t.Fatal(err)
		}
		alias := "#options:" + h.srv.Config.ServerName
		roomID := h.createRoom(t, alice, map[string]any{
			"visibility":      "public",
			"preset":          "private_chat",
			"room_alias_name": "options",
			"name":            "The name",
			"topic":           "The topic",
			"invite":          []string{bobID},
			"is_direct":       true,
			"room_version":    "11",
			// The server overwrites creator and room_version.
			"creation_content": map[string]any{"m.federate": false, "type": "m.space", "creator": "@mallory:elsewhere", "room_version": "1"},
			"initial_state": []map[string]any{
				{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}},
				{"type": "m.room.name", "content": map[string]any{"name": "overwritten by name"}},
				{"type": "org.example.custom", "state_key": "k", "content": map[string]any{"n": 1}},
				{"type": "org.example.custom", "state_key": "k", "content": map[string]any{"n": 2}},
			},
			"power_level_content_override": map[string]any{"events_default": 10, "kick": 75, "users": map[string]int{aliceID: 100, bobID: 20}},
		})
		state := h.state(t, alice, roomID)
		content := func(typ, key string) map[string]any { return state[[2]string{typ, key}].Content }

		create := content("m.room.create", "")
		if create["m.federate"] != false || create["type"] != "m.space" || create["room_version"] != "11" || create["creator"] != nil {
			t.Errorf("create content %v", create)
		}
		if got := content("m.room.join_rules", "")["join_rule"]; got != "public" {
			t.Errorf("initial_state join_rule lost to the preset: %v", got)
		}
		if got := content("m.room.guest_access", "")["guest_access"]; got != "can_join" {
			t.Errorf("guest_access %v", got)
		}
		if got := content("m.room.name", "")["name"]; got != "The name" {
			t.Errorf("name %v", got)
		}
		// Spec v1.15: the topic in m.topic too.
		topic := content("m.room.topic", "")
		wantTopic := map[string]any{"topic": "The topic", "m.topic": map[string]any{"m.text": []any{map[string]any{"body": "The topic"}}}}
		if !reflect.DeepEqual(topic, wantTopic) {
			t.Errorf("topic %v, want %v", topic, wantTopic)
		}
		if got := content("org.example.custom", "k")["n"]; got != float64(2) {
			t.Errorf("custom state n = %v, want the later entry's 2", got)
		}
		if got := content("m.room.canonical_alias", "")["alias"]; got != alias {
			t.Errorf("canonical alias %v", got)
		}
		invite := content("m.room.member", bobID)
		if invite["membership"] != "invite" || invite["is_direct"] != true {
			t.Errorf("invite %v", invite)
		}
		if got := content("m.room.member", aliceID)["displayname"]; got != "Alice A." {
			t.Errorf("creator's join carries displayname %v", got)
		}
		pl := content("m.room.power_levels", "")
		if pl["events_default"] != float64(10) || pl["kick"] != float64(75) || pl["ban"] != float64(50) ||
			!reflect.DeepEqual(pl["users"], map[string]any{aliceID: float64(100), bobID: float64(20)}) {
			t.Errorf("power levels %v", pl)
		}

		// create_room.yaml's order; the preset's join_rules gave way to
		// initial_state's, and initial_state's name to the name.
		want := []string{"m.room.create|", "m.room.member|" + aliceID, "m.room.power_levels|", "m.room.canonical_alias|",
			"m.room.history_visibility|", "m.room.guest_access|", "m.room.join_rules|", "org.example.custom|k",
			"m.room.name|", "m.room.topic|", "m.room.member|" + bobID}
		if got := h.stateOrder(t, roomID); !slices.Equal(got, want) {
			t.Errorf("event order\n got %v\nwant %v", got, want)
		}

		// The alias resolves and the room is in the published directory.
		resolved, err := alice.ResolveAlias(ctx, id.RoomAlias(alias))
		if err != nil || resolved.RoomID.String() != roomID {
			t.Errorf("alias resolves to %v (%v), want %s", resolved, err, roomID)
		}
		vis := h.do(t, alice, "GET", "/directory/list/room/"+pathEsc(roomID), nil).expect(t, 200).Object(t)["visibility"]
		if vis != "public" {
			t.Errorf("directory visibility %v, want public", vis)
		}
		private := h.createRoom(t, alice, nil)
		if vis := h.do(t, alice, "GET", "/directory/list/room/"+pathEsc(private), nil).expect(t, 200).Object(t)["visibility"]; vis != "private" {
			t.Errorf("a private room is %v in the directory", vis)
		}

		// The same through mautrix, whose power level override always
		// carries the fields it knows.
		resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "trusted_private_chat", Name: "via mautrix", Topic: "t",
			Invite: []id.UserID{bob.UserID}, IsDirect: true, RoomVersion: "12",
			InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Raw: map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}})
		if err != nil {
			t.Fatal(err)
		}
		var name event.RoomNameEventContent
		if err := alice.StateEvent(ctx, resp.RoomID, event.StateRoomName, "", &name); err != nil || name.Name != "via mautrix" {
			t.Errorf("mautrix room name %q %v", name.Name, err)
		}
		var enc map[string]any
		if err := alice.StateEvent(ctx, resp.RoomID, event.StateEncryption, "", &enc); err != nil || enc["algorithm"] != "m.megolm.v1.aes-sha2" {
			t.Errorf("encryption from initial_state: %v %v", enc, err)
		}
	})
}

// TestCreateRoomVersions: rooms of versions 1, 6, 10, 11 and 12 work end
// to end: the create event per version, messages, redactions both ways.
func TestCreateRoomVersions(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		aliceID := alice.UserID.String()
		for _, version := range []string{"1", "6", "10", "11", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(version), Name: "v" + version})
				if err != nil {
					t.Fatal(err)
				}
				roomID := resp.RoomID.String()
				var create roomEvent
				h.do(t, alice, "GET", "/rooms/"+pathEsc(roomID)+"/state/m.room.create?format=event", nil).expect(t, 200).JSON(t, &create)
				if create.Content["room_version"] != version || create.Sender != aliceID {
					t.Fatalf("create event %+v", create)
				}
				// Room version 11 dropped creator.
				if wantCreator := version != "11" && version != "12"; (create.Content["creator"] == aliceID) != wantCreator {
					t.Fatalf("creator %v in v%s", create.Content["creator"], version)
				}
				users := h.state(t, alice, roomID)[[2]string{"m.room.power_levels", ""}].Content["users"].(map[string]any)
				if version == "12" {
					// Room version 12: the room id is the create event's
					// hash, and the creator is not listed in power levels.
					if roomID != "!"+strings.TrimPrefix(create.EventID, "$") {
						t.Fatalf("v12 room id %s, create event %s", roomID, create.EventID)
					}
					if _, listed := users[aliceID]; listed {
						t.Fatalf("v12 power levels list the creator: %v", users)
					}
				} else if users[aliceID] != float64(100) || !strings.HasSuffix(roomID, ":"+h.srv.Config.ServerName) {
					t.Fatalf("room %s users %v", roomID, users)
				}

				msg := h.send(t, alice, roomID, "hello v"+version)
				if got := h.event(t, alice, roomID, msg).Content["body"]; got != "hello v"+version {
					t.Fatalf("message body %v", got)
				}
				if _, err := alice.RedactEvent(ctx, resp.RoomID, id.EventID(msg)); err != nil {
					t.Fatal(err)
				}
				if ev := h.event(t, alice, roomID, msg); len(ev.Content) != 0 || ev.Unsigned.RedactedBecause == nil {
					t.Fatalf("v%s redaction: %+v", version, ev)
				}
				// Spec v1.18: redactions through /send in every version;
				// before v11 the server moves redacts to the top level.
				msg2 := h.send(t, alice, roomID, "again")
				var r struct {
					EventID string `json:"event_id"`
				}
				h.do(t, alice, "PUT", "/rooms/"+pathEsc(roomID)+"/send/m.room.redaction/r", map[string]any{"redacts": msg2, "reason": "x"}).
					expect(t, 200).JSON(t, &r)
				red := h.event(t, alice, roomID, r.EventID)
				_, inContent := red.Content["redacts"]
				if red.Redacts != msg2 || inContent != (version == "11" || version == "12") {
					t.Fatalf("v%s redaction sent through /send: %+v", version, red)
				}
				if ev := h.event(t, alice, roomID, msg2); len(ev.Content) != 0 {
					t.Fatalf("v%s redaction through /send not applied: %+v", version, ev)
				}
			})
		}
	})
}

// TestCreateRoomV12Creators: room version 12's privileged creators.
func TestCreateRoomV12Creators(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		ctx := context.Background()
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		aliceID, bobID, carolID := alice.UserID.String(), bob.UserID.String(), carol.UserID.String()
		roomID := h.createRoom(t, alice, map[string]any{"preset": "public_chat", "room_version": "12",
			"creation_content": map[string]any{"additional_creators": []string{bobID}}})
		create := h.state(t, alice, roomID)[[2]string{"m.room.create", ""}].Content
		if !reflect.DeepEqual(create["additional_creators"], []any{bobID}) {
			t.Fatalf("additional_creators %v", create["additional_creators"])
		}
		h.join(t, bob, roomID)
		h.join(t, carol, roomID)
		rid := id.RoomID(roomID)
		// bob is in no users list, yet has creator power: he may raise carol.
		var pl map[string]any
		if err := bob.StateEvent(ctx, rid, event.StatePowerLevels, "", &pl); err != nil {
			t.Fatal(err)
		}
		pl["users"] = map[string]any{carolID: 100}
		if _, err := bob.SendStateEvent(ctx, rid, event.StatePowerLevels, "", pl); err != nil {
			t.Fatalf("additional creator changes power levels: %v", err)
		}
		// Creators cannot be listed, so cannot be demoted.
		pl["users"] = map[string]any{carolID: 100, aliceID: 0}
		_, err := carol.SendStateEvent(ctx, rid, event.StatePowerLevels, "", pl)
		wantMxErr(t, err, 403, "M_FORBIDDEN")
		// carol, at 100, is still below the creators: she cannot send the
		// tombstone (150).
		_, err = carol.SendStateEvent(ctx, rid, event.NewEventType("m.room.tombstone"), "", map[string]any{"body": "x", "replacement_room": "!x"})
		wantMxErr(t, err, 403, "M_FORBIDDEN")
		if _, err := bob.SendStateEvent(ctx, rid, event.NewEventType("m.room.tombstone"), "", map[string]any{"body": "x", "replacement_room": "!x"}); err != nil {
			t.Fatalf("additional creator sends tombstone: %v", err)
		}
	})
}

// TestCreateRoomErrors: bad requests are refused before anything is
// stored, with the spec's error codes.
func TestCreateRoomErrors(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		aliceID, bobID := alice.UserID.String(), bob.UserID.String()
		h.createRoom(t, alice, map[string]any{"room_alias_name": "taken"})
		cases := []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"unknown version", map[string]any{"room_version": "13"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
			{"experimental version", map[string]any{"room_version": "org.matrix.hydra.11"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
			{"empty version", map[string]any{"room_version": ""}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
			{"version not a string", map[string]any{"room_version": 12}, 400, "M_BAD_JSON"},
			{"not json", `{"preset":`, 400, "M_NOT_JSON"},
			{"not an object", `[]`, 400, "M_BAD_JSON"},
			{"unknown preset", map[string]any{"preset": "party"}, 400, "M_BAD_JSON"},
			{"bad visibility", map[string]any{"visibility": "secret"}, 400, "M_INVALID_PARAM"},
			{"bad invitee", map[string]any{"invite": []string{"bob"}}, 400, "M_INVALID_PARAM"},
			{"inviting oneself", map[string]any{"invite": []string{aliceID}}, 400, "M_INVALID_PARAM"},
			{"third-party invite", map[string]any{"invite_3pid": []map[string]any{{"medium": "email", "address": "a@b.c"}}}, 400, "M_INVALID_PARAM"},
			{"initial state without content", map[string]any{"initial_state": []map[string]any{{"type": "org.example"}}}, 400, "M_BAD_JSON"},
			{"initial state without type", map[string]any{"initial_state": []map[string]any{{"content": map[string]any{}}}}, 400, "M_BAD_JSON"},
			{"alias taken", map[string]any{"room_alias_name": "taken"}, 400, "M_ROOM_IN_USE"},
			{"whole alias", map[string]any{"room_alias_name": "#a:b"}, 400, "M_INVALID_PARAM"},
			{"alias with space", map[string]any{"room_alias_name": "a b"}, 400, "M_INVALID_PARAM"},
			{"creation content not an object", map[string]any{"creation_content": []int{1}}, 400, "M_BAD_JSON"},
			// Synapse: before v12 an override's users must keep the creator.
			{"v11 override without creator", map[string]any{"room_version": "11",
				"power_level_content_override": map[string]any{"users": map[string]int{bobID: 100}}}, 400, "M_INVALID_PARAM"},
			// v12: creators cannot be listed (nor so demoted).
			{"v12 override lists creator", map[string]any{"room_version": "12",
				"power_level_content_override": map[string]any{"users": map[string]int{aliceID: 0}}}, 400, "M_INVALID_PARAM"},
			{"v12 override lists additional creator", map[string]any{"room_version": "12",
				"creation_content":             map[string]any{"additional_creators": []string{bobID}},
				"power_level_content_override": map[string]any{"users": map[string]int{bobID: 50}}}, 400, "M_INVALID_PARAM"},
			{"v12 bad additional creator", map[string]any{"room_version": "12",
				"creation_content": map[string]any{"additional_creators": []string{"bob"}}}, 400, "M_INVALID_PARAM"},
			// create_room.yaml: state the creator cannot set is M_INVALID_ROOM_STATE.
			{"name above the creator's power", map[string]any{"room_version": "11", "name": "x",
				"power_level_content_override": map[string]any{"events": map[string]int{"m.room.name": 101}}}, 400, "M_INVALID_ROOM_STATE"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				h.do(t, alice, "POST", "/createRoom", c.body).expectError(t, c.status, c.code)
			})
		}
		h.do(t, nil, "POST", "/createRoom", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
		// Nothing was stored, not even the rooms refused for their state:
		// alice is in the one room made above.
		rooms, err := h.db.RoomsWithMembership(context.Background(), aliceID, "join")
		if err != nil || len(rooms) != 1 {
			t.Fatalf("alice is in %v (%v), want the one room created", rooms, err)
		}
	})
}

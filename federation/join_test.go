package federation

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// roomState is a room's current state and its auth chain as send_join
// answers them.
func (j *joinEnv) roomState(roomID string) (state, chain []json.RawMessage) {
	j.t.Helper()
	ctx := context.Background()
	info, err := j.db.Room(ctx, roomID)
	if err != nil {
		j.t.Fatal(err)
	}
	e := &Events{DB: j.db, ServerName: ours}
	st, err := e.snapshotEvents(ctx, info.SnapshotNID)
	if err != nil {
		j.t.Fatal(err)
	}
	ch, err := e.authChain(ctx, info.NID, st)
	if err != nil {
		j.t.Fatal(err)
	}
	if state, err = federationPDUs(st); err != nil {
		j.t.Fatal(err)
	}
	if chain, err = federationPDUs(ch); err != nil {
		j.t.Fatal(err)
	}
	return state, chain
}

// signedByUs builds an event in the room signed with our key, with the
// auth events given rather than those the rules select.
func (j *joinEnv) signedByUs(verImpl gomatrixserverlib.IRoomVersion, roomID, typ, stateKey string, content any, prev, auth []string, depth int64) json.RawMessage {
	j.t.Helper()
	raw, _ := json.Marshal(content)
	proto := gomatrixserverlib.ProtoEvent{SenderID: fedAlice, RoomID: roomID, Type: typ, StateKey: &stateKey, Content: raw,
		PrevEvents: prev, AuthEvents: auth, Depth: depth, Version: verImpl}
	if verImpl.DomainlessRoomIDs() {
		// The create event is implied.
		proto.AuthEvents = auth[1:]
	}
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), ours, j.key.ID, j.key.Private)
	if err != nil {
		j.t.Fatal(err)
	}
	return ev.JSON()
}

func stateIDs(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}

// TestCheckJoinState checks the joining server's checks of a send_join
// answer (spec: "Joining Rooms"; the room's state must be signed and pass
// the auth rules, the join must be allowed by it), in a room version of
// each event format.
func TestCheckJoinState(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"1", "10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				ctx := context.Background()
				j := newJoinEnv(t, db)
				verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
				roomID, initial := j.createRoom(version, "shared")
				topic := j.state(roomID, fedAlice, "m.room.topic", "", map[string]any{"topic": "old"})
				j.member(roomID, "@dave:ours.example", "@dave:ours.example", "join")
				j.message(roomID, fedAlice, "hello")
				join := j.build(j.remote, j.template("join", fedRemote, roomID, fedBob, version), roomID, fedBob, "join")
				state, chain := j.roomState(roomID)

				check := func(state, chain []json.RawMessage) ([]gomatrixserverlib.PDU, error) {
					t.Helper()
					st, _, err := checkJoinState(ctx, j.ring, verImpl, roomID, join, state, chain)
					return st, err
				}
				got, err := check(state, chain)
				if err != nil {
					t.Fatalf("the room's true state: %v", err)
				}
				if len(got) != len(state) {
					t.Fatalf("kept %d of %d state events", len(got), len(state))
				}

				replace := func(list []json.RawMessage, id string, with json.RawMessage) []json.RawMessage {
					out := make([]json.RawMessage, 0, len(list))
					for _, raw := range list {
						ev, err := verImpl.NewEventFromTrustedJSON(raw, false)
						if err != nil {
							t.Fatal(err)
						}
						switch {
						case ev.EventID() != id:
							out = append(out, raw)
						case with != nil:
							out = append(out, with)
						}
					}
					return out
				}

				// A state event whose signature is not ours is dropped.
				var topicJSON map[string]any
				for _, raw := range state {
					if ev, _ := verImpl.NewEventFromTrustedJSON(raw, false); ev.EventID() == topic {
						_ = json.Unmarshal(raw, &topicJSON)
					}
				}
				sigs := topicJSON["signatures"].(map[string]any)[string(ours)].(map[string]any)
				for k := range sigs {
					sigs[k] = strings.Repeat("A", 86)
				}
				forged, _ := json.Marshal(topicJSON)
				if got, err := check(replace(state, topic, forged), chain); err != nil || slices.Contains(stateIDs(got), topic) || len(got) != len(state)-1 {
					t.Errorf("forged signature: kept %v (%v)", stateIDs(got), err)
				}

				// An event whose auth events are not the rules' selection
				// (here with the history visibility too) is rejected.
				prev := []string{initial[len(initial)-1]}
				auth := []string{initial[0], initial[2], initial[1], initial[4]}
				extra := j.signedByUs(verImpl, roomID, "m.room.topic", "", map[string]any{"topic": "new"}, prev, auth, 10)
				extraEv, err := verImpl.NewEventFromUntrustedJSON(extra)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := check(replace(state, topic, extra), chain); err != nil || slices.Contains(stateIDs(got), extraEv.EventID()) {
					t.Errorf("wrong auth selection: kept %v (%v)", stateIDs(got), err)
				}

				// Two events for one key make the answer unusable.
				if _, err := check(append(state, extra), chain); err == nil {
					t.Errorf("two topics in the state accepted")
				}

				// Without the create event the room cannot be checked; in
				// another room (v12: one whose create hash is another id)
				// nothing is.
				if _, err := check(replace(state, initial[0], nil), replace(chain, initial[0], nil)); err == nil {
					t.Errorf("state without the create event accepted")
				}
				otherRoom, _ := j.createRoom(version, "shared")
				if _, _, err := checkJoinState(ctx, j.ring, verImpl, otherRoom, join, state, chain); err == nil {
					t.Errorf("another room's state accepted")
				}

				// The join must be allowed by the state, not only by its
				// own auth events: the room turned invite-only since.
				j.state(roomID, fedAlice, "m.room.join_rules", "", map[string]any{"join_rule": "invite"})
				state, chain = j.roomState(roomID)
				if _, err := check(state, chain); err == nil || !strings.Contains(err.Error(), "state") {
					t.Errorf("join refused by the state accepted: %v", err)
				}
			})
		}
	})
}

// TestAuthCheck checks the order of the auth checks of a send_join
// answer: an event passes only once its auth events have, so one that
// stands on a rejected event, or on one missing from the answer, is
// rejected even though its own selection is right.
func TestAuthCheck(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		for _, version := range []string{"10", "12"} {
			t.Run("v"+version, func(t *testing.T) {
				j := newJoinEnv(t, db)
				verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
				roomID, initial := j.createRoom(version, "shared")
				create, member, power, joinRules, visibility := initial[0], initial[1], initial[2], initial[3], initial[4]
				state, chain := j.roomState(roomID)
				byID := map[string]gomatrixserverlib.PDU{}
				add := func(raw json.RawMessage) string {
					ev, err := verImpl.NewEventFromUntrustedJSON(raw)
					if err != nil {
						t.Fatal(err)
					}
					byID[ev.EventID()] = ev
					return ev.EventID()
				}
				for _, raw := range slices.Concat(state, chain) {
					add(raw)
				}
				prev := []string{visibility}
				topic := func(text string, auth ...string) string {
					return add(j.signedByUs(verImpl, roomID, "m.room.topic", "", map[string]any{"topic": text}, prev, auth, 10))
				}
				// Alice joins again with the history visibility among
				// the auth events, which the rules do not select.
				bad := add(j.signedByUs(verImpl, roomID, "m.room.member", fedAlice, map[string]any{"membership": "join"}, prev,
					[]string{create, power, member, joinRules, visibility}, 10))
				good := topic("good", create, power, member)
				onBad := topic("on a rejected member event", create, power, bad)
				onMissing := topic("on a missing event", create, power, "$"+strings.Repeat("A", 43))
				accepted := authCheck(byID)
				for _, id := range append(slices.Clone(initial), good) {
					if !accepted[id] {
						t.Errorf("%s rejected", id)
					}
				}
				for name, id := range map[string]string{"bad selection": bad, "on a rejected event": onBad, "on a missing event": onMissing} {
					if accepted[id] {
						t.Errorf("the event %s accepted", name)
					}
				}
			})
		}
	})
}

// TestBuildFromTemplate checks what the joining server verifies of a
// make_join template (joins-v1.yaml: room id, sender and state key, type
// and membership) and how it fills in the content.
func TestBuildFromTemplate(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		j := newJoinEnv(t, db)
		roomID, _ := j.createRoom("10", "shared")
		m := j.template("join", fedRemote, roomID, fedBob, "10")
		jn := &Joiner{req: requester{origin: fedRemote, key: j.remote.keys.Key}, now: time.Now}
		build := func(m makeResponse) (gomatrixserverlib.PDU, error) {
			_, ev, err := jn.buildFromTemplate(m, roomID, fedBob, spec.Join, json.RawMessage(`{"displayname":"Bob","membership":"leave"}`))
			return ev, err
		}
		ev, err := build(editTemplate(m, func(ev map[string]any) {
			ev["content"].(map[string]any)["join_authorised_via_users_server"] = fedAlice
		}))
		if err != nil {
			t.Fatal(err)
		}
		var content map[string]any
		_ = json.Unmarshal(ev.Content(), &content)
		if content["membership"] != "join" || content["displayname"] != "Bob" || content["join_authorised_via_users_server"] != fedAlice {
			t.Errorf("content %v: want the template's membership and authoriser, our display name", content)
		}
		// Signed by its server, and (restricted) awaiting the resident's
		// signature.
		if err := gomatrixserverlib.VerifyEventSignatures(context.Background(), ev.Sign(string(ours), j.key.ID, j.key.Private), j.ring, userIDForSender); err != nil {
			t.Errorf("the join's signatures: %v", err)
		}
		for name, edit := range map[string]func(map[string]any){
			"room":       func(ev map[string]any) { ev["room_id"] = "!other:ours.example" },
			"sender":     func(ev map[string]any) { ev["sender"] = "@mallory:remote.example" },
			"state key":  func(ev map[string]any) { ev["state_key"] = "@mallory:remote.example" },
			"type":       func(ev map[string]any) { ev["type"] = "m.room.message" },
			"membership": func(ev map[string]any) { ev["content"].(map[string]any)["membership"] = "invite" },
			"content":    func(ev map[string]any) { ev["content"] = "join" },
			"prev event": func(ev map[string]any) { ev["prev_events"] = []any{[]any{}} },
			"auth event": func(ev map[string]any) { ev["auth_events"] = []any{""} },
		} {
			if _, err := build(editTemplate(m, edit)); err == nil {
				t.Errorf("template with another %s accepted", name)
			}
		}
		if _, err := build(makeResponse{RoomVersion: "org.matrix.msc4014", Event: m.Event}); err == nil {
			t.Errorf("template of an unsupported room version accepted")
		}
	})
}

// TestCountersigned checks the join the resident server sends back: it
// must be ours, with its signature added.
func TestCountersigned(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		j := newJoinEnv(t, db)
		roomID, _ := j.createRoom("10", "shared")
		m := j.template("join", fedRemote, roomID, fedBob, "10")
		jn := &Joiner{req: requester{origin: fedRemote, key: j.remote.keys.Key}, keys: j.ring, now: time.Now}
		verImpl := gomatrixserverlib.MustGetRoomVersion("10")
		mine := j.build(j.remote, m, roomID, fedBob, "join")

		if got, err := jn.countersigned(ctx, verImpl, mine, nil); err != nil || got.EventID() != mine.EventID() {
			t.Errorf("no event sent back: %v", err)
		}
		resident := mine.Sign(string(ours), j.key.ID, j.key.Private)
		got, err := jn.countersigned(ctx, verImpl, mine, resident.JSON())
		if err != nil || !strings.Contains(string(got.JSON()), `"ours.example"`) {
			t.Errorf("countersigned join: %v", err)
		}
		other := j.build(j.remote, editTemplate(m, func(ev map[string]any) { ev["depth"] = 99 }), roomID, fedBob, "join")
		if _, err := jn.countersigned(ctx, verImpl, mine, other.JSON()); err == nil {
			t.Errorf("another join sent back accepted")
		}

		// A restricted join needs the authorising server's signature.
		restricted := j.build(j.remote, editTemplate(m, func(ev map[string]any) {
			ev["content"].(map[string]any)["join_authorised_via_users_server"] = fedAlice
		}), roomID, fedBob, "join")
		if _, err := jn.countersigned(ctx, verImpl, restricted, nil); err == nil {
			t.Errorf("restricted join without the resident's signature accepted")
		}
		if _, err := jn.countersigned(ctx, verImpl, restricted, restricted.Sign(string(ours), j.key.ID, j.key.Private).JSON()); err != nil {
			t.Errorf("restricted join with the resident's signature: %v", err)
		}
	})
}

// TestInParallel checks that every index is handed out exactly once,
// whatever the size.
func TestInParallel(t *testing.T) {
	for _, n := range []int{0, 1, parallelMin, parallelMin + 1, 10*parallelMin + 7} {
		seen := make([]int32, n)
		inParallel(n, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				seen[i]++
			}
		})
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("n=%d: index %d handed out %d times", n, i, c)
			}
		}
	}
}

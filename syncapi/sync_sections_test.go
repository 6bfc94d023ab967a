package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// strippedTypes lists the types of stripped events, checking that each
// has only the four stripped fields (spec: Stripped state).
func strippedTypes(t *testing.T, evs []map[string]json.RawMessage) []string {
	t.Helper()
	var out []string
	for _, e := range evs {
		for k := range e {
			if k != "type" && k != "state_key" && k != "sender" && k != "content" {
				t.Errorf("stripped event has %q", k)
			}
		}
		var typ string
		_ = json.Unmarshal(e["type"], &typ)
		out = append(out, typ)
	}
	return out
}

// TestSyncInvite: an invite shows in rooms.invite, in the initial sync and
// in the incremental one after it, with the room's stripped state and the
// invite itself; joining moves the room to rooms.join with its full state.
func TestSyncInvite(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Secret", Topic: "Shh"})
		send(t, alice, roomID, "before the invite", nil)
		since := h.sync(t, bob, nil).NextBatch
		invite(t, alice, roomID, bob)

		for name, resp := range map[string]syncResp{"incremental": h.syncSince(t, bob, since), "initial": h.sync(t, bob, nil)} {
			inv, ok := resp.invited(roomID)
			if !ok || inv.InviteState == nil {
				t.Fatalf("%s: no invite: %+v", name, resp.Rooms)
			}
			got := strippedTypes(t, inv.InviteState.Events)
			for _, want := range []string{"m.room.create", "m.room.name", "m.room.topic", "m.room.join_rules", "m.room.member"} {
				if !slices.Contains(got, want) {
					t.Errorf("%s: invite_state %v misses %s", name, got, want)
				}
			}
			last := inv.InviteState.Events[len(inv.InviteState.Events)-1]
			var sk, sender string
			_ = json.Unmarshal(last["state_key"], &sk)
			_ = json.Unmarshal(last["sender"], &sender)
			if sk != bob.UserID.String() || sender != alice.UserID.String() {
				t.Errorf("%s: last stripped event is %s's, from %s; want bob's invite from alice", name, sk, sender)
			}
			if _, ok := resp.joined(roomID); ok {
				t.Errorf("%s: an invited room is in rooms.join", name)
			}
		}

		since = h.syncSince(t, bob, since).NextBatch
		join(t, bob, roomID)
		resp := h.syncSince(t, bob, since)
		j, ok := resp.joined(roomID)
		if !ok {
			t.Fatalf("joined room not in rooms.join: %+v", resp.Rooms)
		}
		if _, ok := resp.invited(roomID); ok {
			t.Error("a joined room is still in rooms.invite")
		}
		// Newly joined: the whole state, and a timeline running back past
		// since (the client had nothing of the room).
		all := append(stateOf(j), j.Timeline.Events...)
		if !hasState(all, "m.room.create", "") || !hasState(all, "m.room.name", "") {
			t.Errorf("newly joined room without its full state: %v", types(all))
		}
		if !slices.Contains(bodies(j.Timeline.Events), "before the invite") {
			t.Errorf("newly joined timeline %v misses the history bob may see", bodies(j.Timeline.Events))
		}
	})
}

// TestSyncLeave: leaving moves the room to rooms.leave with the timeline
// up to the leave; later events are not synced; archived rooms show in an
// initial sync only with include_leave; a rejected invite shows as the
// leave alone.
func TestSyncLeave(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		since := h.sync(t, bob, nil).NextBatch
		send(t, alice, roomID, "last words", nil)
		leave(t, bob, roomID)
		send(t, alice, roomID, "after bob left", nil)

		resp := h.syncSince(t, bob, since)
		l, ok := resp.left(roomID)
		if !ok {
			t.Fatalf("no rooms.leave entry: %+v", resp.Rooms)
		}
		if _, ok := resp.joined(roomID); ok {
			t.Error("a left room is in rooms.join")
		}
		evs := l.Timeline.Events
		if len(evs) == 0 || evs[len(evs)-1].Type != "m.room.member" || *evs[len(evs)-1].StateKey != bob.UserID.String() {
			t.Fatalf("left timeline does not end with bob's leave: %s", describe(evs))
		}
		if got := bodies(evs); !slices.Equal(got, []string{"last words"}) {
			t.Errorf("left timeline messages %v, want the one before the leave only", got)
		}
		next := h.syncSince(t, bob, resp.NextBatch)
		if !next.noRooms() {
			t.Errorf("events after the leave reached bob: %+v", next.Rooms)
		}

		// Initial syncs: archived rooms only with include_leave.
		if _, ok := h.sync(t, bob, nil).left(roomID); ok {
			t.Error("an archived room in an initial sync without include_leave")
		}
		withLeave := h.sync(t, bob, url.Values{"filter": {`{"room":{"include_leave":true}}`}})
		l, ok = withLeave.left(roomID)
		if !ok {
			t.Fatal("include_leave: the archived room is missing")
		}
		if evs := l.Timeline.Events; evs[len(evs)-1].Type != "m.room.member" || slices.Contains(bodies(evs), "after bob left") {
			t.Errorf("include_leave timeline: %s", describe(evs))
		}
		if !hasState(append(stateOf(l), l.Timeline.Events...), "m.room.create", "") {
			t.Error("include_leave: no state")
		}

		// A rejected invite: the leave alone, no state, no history.
		carol := h.user(t, "carol")
		private := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		send(t, alice, private, "private", nil)
		invite(t, alice, private, carol)
		since = h.sync(t, carol, nil).NextBatch
		leave(t, carol, private)
		resp = h.syncSince(t, carol, since)
		l, ok = resp.left(private)
		if !ok {
			t.Fatalf("rejected invite not in rooms.leave: %+v", resp.Rooms)
		}
		if len(l.Timeline.Events) != 1 || l.Timeline.Events[0].Type != "m.room.member" || len(stateOf(l)) != 0 {
			t.Errorf("rejected invite: timeline %s, %d state events; want the leave alone", describe(l.Timeline.Events), len(stateOf(l)))
		}
		if _, ok := resp.invited(private); ok {
			t.Error("the rejected invite is still in rooms.invite")
		}
		// Nor does include_leave show carol the state of a room she never
		// joined.
		l, ok = h.sync(t, carol, url.Values{"filter": {`{"room":{"include_leave":true}}`}}).left(private)
		if !ok || len(l.Timeline.Events) != 1 || len(stateOf(l)) != 0 {
			t.Errorf("include_leave, rejected invite: present %v, timeline %s, %d state events", ok, describe(l.Timeline.Events), len(stateOf(l)))
		}
	})
}

// TestSyncKnock: a knock shows in rooms.knock with stripped state; being
// let in (invited) moves the room to rooms.invite.
func TestSyncKnock(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Knock here", InitialState: []*event.Event{{
			Type: event.StateJoinRules, StateKey: ptr(""), Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
		since := h.sync(t, bob, nil).NextBatch
		if _, err := bob.KnockRoom(ctx, roomID, &mautrix.ReqKnockRoom{Reason: "let me in"}); err != nil {
			t.Fatal(err)
		}
		resp := h.syncSince(t, bob, since)
		if resp.Rooms == nil || resp.Rooms.Knock[roomID].KnockState == nil {
			t.Fatalf("no knock: %+v", resp.Rooms)
		}
		got := strippedTypes(t, resp.Rooms.Knock[roomID].KnockState.Events)
		if !slices.Contains(got, "m.room.create") || !slices.Contains(got, "m.room.name") || got[len(got)-1] != "m.room.member" {
			t.Errorf("knock_state types %v", got)
		}
		invite(t, alice, roomID, bob)
		resp = h.syncSince(t, bob, resp.NextBatch)
		if _, ok := resp.invited(roomID); !ok {
			t.Fatalf("accepted knock not in rooms.invite: %+v", resp.Rooms)
		}
	})
}

// TestSyncSummary: a room without a name has heroes (other members, not
// the caller), and member counts.
func TestSyncSummary(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		invite(t, alice, roomID, carol)
		j, _ := h.sync(t, alice, nil).joined(roomID)
		var heroes []string
		var joined, invited int
		_ = json.Unmarshal(j.Summary["m.heroes"], &heroes)
		_ = json.Unmarshal(j.Summary["m.joined_member_count"], &joined)
		_ = json.Unmarshal(j.Summary["m.invited_member_count"], &invited)
		if !slices.Equal(heroes, []string{bob.UserID.String(), carol.UserID.String()}) || joined != 2 || invited != 1 {
			t.Errorf("summary heroes %v joined %d invited %d", heroes, joined, invited)
		}
		// A named room needs no heroes. (With two rooms, an initial sync
		// reads their summaries together: still each its own.)
		named := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "Has a name"})
		both := h.sync(t, alice, nil)
		j, _ = both.joined(named)
		if _, ok := j.Summary["m.heroes"]; ok {
			t.Errorf("named room has heroes: %s", j.Summary["m.heroes"])
		}
		if err := json.Unmarshal(j.Summary["m.joined_member_count"], &joined); err != nil || joined != 1 {
			t.Errorf("named room: %d joined %v", joined, err)
		}
		j, _ = both.joined(roomID)
		heroes = nil
		_ = json.Unmarshal(j.Summary["m.heroes"], &heroes)
		_ = json.Unmarshal(j.Summary["m.joined_member_count"], &joined)
		_ = json.Unmarshal(j.Summary["m.invited_member_count"], &invited)
		if !slices.Equal(heroes, []string{bob.UserID.String(), carol.UserID.String()}) || joined != 2 || invited != 1 {
			t.Errorf("beside a named room: heroes %v joined %d invited %d", heroes, joined, invited)
		}
		// The summary comes again when membership changes, not with every
		// message.
		since := h.sync(t, alice, nil).NextBatch
		send(t, alice, roomID, "hello", nil)
		j, _ = h.syncSince(t, alice, since).joined(roomID)
		if j.Summary != nil {
			t.Errorf("summary with a plain message: %v", j.Summary)
		}
		leave(t, bob, roomID)
		j, _ = h.syncSince(t, alice, since).joined(roomID)
		_ = json.Unmarshal(j.Summary["m.joined_member_count"], &joined)
		if joined != 1 {
			t.Errorf("after bob left: joined %d", joined)
		}
	})
}

// TestSyncIgnoredUsers: events and invites from ignored users are not
// synced, their state events are.
func TestSyncIgnoredUsers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		if err := bob.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{alice.UserID.String(): map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		since := h.sync(t, bob, nil).NextBatch
		send(t, alice, roomID, "ignored", nil)
		if _, err := alice.SendStateEvent(ctx, id.RoomID(roomID), event.StateTopic, "", map[string]any{"topic": "new"}); err != nil {
			t.Fatal(err)
		}
		other := createRoom(t, alice, &mautrix.ReqCreateRoom{})
		invite(t, alice, other, bob)
		resp := h.syncSince(t, bob, since)
		j, _ := resp.joined(roomID)
		if slices.Contains(bodies(j.Timeline.Events), "ignored") {
			t.Error("a message from an ignored user was synced")
		}
		if !hasState(j.Timeline.Events, "m.room.topic", "") {
			t.Error("a state event from an ignored user was not synced")
		}
		if _, ok := resp.invited(other); ok {
			t.Error("an invite from an ignored user was synced")
		}
	})
}

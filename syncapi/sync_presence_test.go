package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql/sqltest"
)

// presenceEvent is an m.presence event of a sync (spec: m.presence).
type presenceEvent struct {
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		Presence        string  `json:"presence"`
		LastActiveAgo   *int64  `json:"last_active_ago"`
		StatusMsg       *string `json:"status_msg"`
		CurrentlyActive *bool   `json:"currently_active"`
	} `json:"content"`
}

// presenceOf lists the presence section's events, keyed by sender; it
// fails on a sender listed twice.
func (r syncResp) presenceOf(t *testing.T) map[string]presenceEvent {
	t.Helper()
	out := make(map[string]presenceEvent)
	if r.Presence == nil {
		return out
	}
	var list struct {
		Events []presenceEvent `json:"events"`
	}
	if err := json.Unmarshal(r.Presence, &list); err != nil {
		t.Fatalf("presence section %s: %v", r.Presence, err)
	}
	for _, e := range list.Events {
		if e.Type != "m.presence" {
			t.Fatalf("presence event of type %q", e.Type)
		}
		if _, dup := out[e.Sender]; dup {
			t.Fatalf("%s twice in %s", e.Sender, r.Presence)
		}
		out[e.Sender] = e
	}
	return out
}

func senders(m map[string]presenceEvent) []string {
	var out []string
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func setPresence(t *testing.T, cli *mautrix.Client, state, msg string) {
	t.Helper()
	if err := cli.SetPresence(context.Background(), mautrix.ReqPresence{Presence: event.Presence(state), StatusMsg: msg}); err != nil {
		t.Fatalf("set presence: %v", err)
	}
}

// TestSyncPresence: the presence section carries the caller's own
// presence and that of the users they share a joined room with, each
// change exactly once across incremental syncs, and never that of a user
// who shares no room with them.
func TestSyncPresence(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)

		// An initial sync marks the caller online (set_presence defaults
		// to online) and tells them so.
		a0 := h.sync(t, alice, nil)
		if got := a0.presenceOf(t)[alice.UserID.String()]; got.Content.Presence != "online" ||
			got.Content.CurrentlyActive == nil || !*got.Content.CurrentlyActive {
			t.Fatalf("alice's own presence in her first sync: %+v", got)
		}
		c0 := h.sync(t, carol, nil)
		b0 := h.sync(t, bob, nil)
		if got := senders(b0.presenceOf(t)); !slices.Equal(got, []string{alice.UserID.String(), bob.UserID.String()}) {
			t.Fatalf("bob's initial presence: %v", got)
		}
		if _, ok := c0.presenceOf(t)[alice.UserID.String()]; ok {
			t.Fatal("carol sees alice's presence")
		}

		setPresence(t, alice, "unavailable", "Making cupcakes")
		b1 := h.syncSince(t, bob, b0.NextBatch)
		got := b1.presenceOf(t)
		if senders(got)[0] != alice.UserID.String() || len(got) != 1 {
			t.Fatalf("bob's incremental presence: %v", senders(got))
		}
		if c := got[alice.UserID.String()].Content; c.Presence != "unavailable" || c.StatusMsg == nil ||
			*c.StatusMsg != "Making cupcakes" || c.CurrentlyActive != nil {
			t.Fatalf("alice's presence as bob sees it: %+v", c)
		}
		// Once: the next sync from there has nothing more.
		if b2 := h.syncSince(t, bob, b1.NextBatch); b2.Presence != nil {
			t.Fatalf("alice's presence again: %s", b2.Presence)
		}
		// Carol never: not in an incremental sync either.
		if c1 := h.syncSince(t, carol, c0.NextBatch); len(c1.presenceOf(t)) != 0 {
			t.Fatalf("carol's incremental presence: %s", c1.Presence)
		}
		// Alice, too, learns of her own change.
		if a1 := h.syncSince(t, alice, a0.NextBatch, "set_presence", "offline"); a1.presenceOf(t)[alice.UserID.String()].Content.Presence != "unavailable" {
			t.Fatalf("alice's own change: %s", a1.Presence)
		}
	})
}

// TestSyncPresenceNewRoomPeers: when bob joins a room of alice's, each
// learns the other's presence in their next sync, although neither
// changed it since their previous sync (Synapse does the same).
func TestSyncPresenceNewRoomPeers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		a0 := h.sync(t, alice, nil)
		b0 := h.sync(t, bob, nil)
		if _, ok := b0.presenceOf(t)[alice.UserID.String()]; ok {
			t.Fatal("bob sees alice before sharing a room")
		}
		join(t, bob, room)
		if got := h.syncSince(t, alice, a0.NextBatch).presenceOf(t); got[bob.UserID.String()].Content.Presence != "online" {
			t.Fatalf("alice's sync after bob joined: %v", senders(got))
		}
		if got := h.syncSince(t, bob, b0.NextBatch).presenceOf(t); got[alice.UserID.String()].Content.Presence != "online" {
			t.Fatalf("bob's sync after he joined: %v", senders(got))
		}
	})
}

func TestSyncSetPresence(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		me := alice.UserID.String()
		// offline: the sync leaves presence alone (Synapse).
		s0 := h.sync(t, alice, url.Values{"set_presence": {"offline"}})
		if s0.Presence != nil {
			t.Fatalf("set_presence=offline changed presence: %s", s0.Presence)
		}
		s1 := h.syncSince(t, alice, s0.NextBatch, "set_presence", "unavailable")
		if got := s1.presenceOf(t)[me].Content; got.Presence != "unavailable" || got.LastActiveAgo != nil {
			t.Fatalf("after set_presence=unavailable: %+v (not activity)", got)
		}
		s2 := h.syncSince(t, alice, s1.NextBatch)
		if got := s2.presenceOf(t)[me].Content; got.Presence != "online" || got.LastActiveAgo == nil {
			t.Fatalf("after a default sync: %+v", got)
		}
		// Syncing again changes nothing clients must see.
		for range 3 {
			s2 = h.syncSince(t, alice, s2.NextBatch)
			if s2.Presence != nil {
				t.Fatalf("a repeated sync sent presence: %s", s2.Presence)
			}
		}
		wantError(t, "bad set_presence", h.get(t, alice, "/_matrix/client/v3/sync", url.Values{"set_presence": {"away"}}), 400, "M_INVALID_PARAM")
	})
}

func TestSyncPresenceFilter(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)
		h.sync(t, alice, nil)
		sync := func(f any) syncResp {
			return h.sync(t, bob, url.Values{"filter": {filterJSON(f)}})
		}
		both := []string{alice.UserID.String(), bob.UserID.String()}
		if got := senders(sync(map[string]any{}).presenceOf(t)); !slices.Equal(got, both) {
			t.Fatalf("no filter: %v", got)
		}
		if r := sync(map[string]any{"presence": map[string]any{"types": []string{"m.other"}}}); r.Presence != nil {
			t.Fatalf("types without m.presence: %s", r.Presence)
		}
		if r := sync(map[string]any{"presence": map[string]any{"not_types": []string{"m.*"}}}); r.Presence != nil {
			t.Fatalf("not_types m.*: %s", r.Presence)
		}
		if got := senders(sync(map[string]any{"presence": map[string]any{"not_senders": []string{bob.UserID.String()}}}).presenceOf(t)); !slices.Equal(got, both[:1]) {
			t.Fatalf("not_senders bob: %v", got)
		}
		if got := senders(sync(map[string]any{"presence": map[string]any{"senders": []string{bob.UserID.String()}}}).presenceOf(t)); !slices.Equal(got, both[1:]) {
			t.Fatalf("senders bob: %v", got)
		}
		// limit keeps the latest change: bob's, made by this very sync's
		// predecessor.
		if got := senders(sync(map[string]any{"presence": map[string]any{"limit": 1}}).presenceOf(t)); !slices.Equal(got, both[1:]) {
			t.Fatalf("limit 1: %v", got)
		}
	})
}

// TestSyncPresenceLongPoll: a long-polling sync is woken by the presence
// change of a user it shares a room with, and not by a stranger's.
func TestSyncPresenceLongPoll(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, room)
		b0 := h.sync(t, bob, nil)
		poll := h.syncAsync(t, bob, b0.NextBatch, 10*time.Second)
		stillWaiting(t, poll, "before any change")
		setPresence(t, carol, "online", "stranger")
		stillWaiting(t, poll, "after a stranger's change")
		setPresence(t, alice, "online", "here")
		r := await(t, poll, 5*time.Second)
		if got := r.resp.presenceOf(t); len(got) != 1 || got[alice.UserID.String()].Content.StatusMsg == nil {
			t.Fatalf("woken with %s", r.resp.Presence)
		}
		if r.took > 4*time.Second {
			t.Fatalf("woken after %s", r.took)
		}
	})
}

// TestSyncPresenceOff: with presence off, syncs carry no presence section
// and set_presence changes nothing.
func TestSyncPresenceOff(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.Presence.Enabled = false
			h := hs{hstest.Start(t, cfg)}
			alice, bob := h.user(t, "alice"), h.user(t, "bob")
			room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			join(t, bob, room)
			a0 := h.sync(t, alice, url.Values{"set_presence": {"unavailable"}})
			b0 := h.sync(t, bob, nil)
			setPresence(t, alice, "online", "ignored")
			for _, r := range []syncResp{a0, b0, h.syncSince(t, bob, b0.NextBatch), h.syncSince(t, alice, a0.NextBatch)} {
				if r.Presence != nil {
					t.Fatalf("presence section with presence off: %s", r.Presence)
				}
			}
		})
	}
}

package push

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestCounterCarriesPowerAndNames: counting a room's events leaves what
// its next event needs in the caches, the power levels of the state after
// each event and the names of its members, so the room's first message
// reads neither; but an event that sets the power levels leaves nothing
// stale behind.
func TestCounterCarriesPowerAndNames(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		key, err := serverkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(slog.DiscardHandler)
		rs := roomserver.New(db, nil, "test.local", key, log)
		c := NewCounter(db, roomserver.API{Roomserver: rs}, "test.local", log)
		const alice, bob = "@alice:test.local", "@bob:test.local"
		content := func(v any) json.RawMessage {
			b, _ := json.Marshal(v)
			return b
		}
		str := func(s string) *string { return &s }
		created, err := rs.HandleInput(ctx, roomserver.InputRequest{InputID: "create", CreateRoom: &roomserver.CreateRoom{RoomVersion: "10", Events: []roomserver.NewEvent{
			{Sender: alice, Type: "m.room.create", StateKey: str(""), Content: content(map[string]any{"creator": alice, "room_version": "10"})},
			{Sender: alice, Type: "m.room.member", StateKey: str(alice), Content: content(map[string]any{"membership": "join", "displayname": "Alice"})},
			{Sender: alice, Type: "m.room.power_levels", StateKey: str(""), Content: content(map[string]any{"users": map[string]int{alice: 100}})},
			{Sender: alice, Type: "m.room.join_rules", StateKey: str(""), Content: content(map[string]any{"join_rule": "public"})},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		room := created.RoomID
		// count commits an input and counts its event.
		count := func(input string, ne roomserver.NewEvent) sql.Event {
			t.Helper()
			resp, err := rs.HandleInput(ctx, roomserver.InputRequest{InputID: input, RoomID: room, NewEvent: &ne})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.HandleBatch(ctx, []roomserver.OutputEvent{{RoomID: room, EventID: resp.EventIDs[0]}}); err != nil {
				t.Fatal(err)
			}
			ev, _, err := rs.CommittedEvent(ctx, resp.EventIDs[0])
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}
		join := count("join", roomserver.NewEvent{Sender: bob, Type: "m.room.member", StateKey: str(bob),
			Content: content(map[string]any{"membership": "join", "displayname": "Bob"})})
		if name, ok := c.names.Get(join.NID); !ok || name != "Bob" {
			t.Errorf("bob's name after his join was counted: %q, %v", name, ok)
		}
		after, ok := rs.StateAfter(join.EventID)
		if !ok || after == join.StateBeforeNID {
			t.Fatalf("state after the join: %d, %v (before %d)", after, ok, join.StateBeforeNID)
		}
		if p, ok := c.powers.Get(after); !ok || p.UserLevel(alice) != 100 {
			t.Errorf("power levels of the state after the join: %v, alice at %d", ok, p.UserLevel(alice))
		}
		msg := count("msg", roomserver.NewEvent{Sender: alice, Type: "m.room.message", Content: content(map[string]any{"msgtype": "m.text", "body": "hi Bob"})})
		if msg.StateBeforeNID != after {
			t.Fatalf("the message stands on %d, not on the state after the join (%d)", msg.StateBeforeNID, after)
		}

		// New power levels: the state after them is not given the old.
		pl := count("pl", roomserver.NewEvent{Sender: alice, Type: "m.room.power_levels", StateKey: str(""),
			Content: content(map[string]any{"users": map[string]int{alice: 100, bob: 50}})})
		plAfter, _ := rs.StateAfter(pl.EventID)
		if p, ok := c.powers.Get(plAfter); ok && p.UserLevel(bob) != 50 {
			t.Errorf("the state after new power levels has bob at %d", p.UserLevel(bob))
		}
		reply := count("reply", roomserver.NewEvent{Sender: bob, Type: "m.room.message", Content: content(map[string]any{"msgtype": "m.text", "body": "thanks"})})
		if p, ok := c.powers.Get(reply.StateBeforeNID); !ok || p.UserLevel(bob) != 50 {
			t.Errorf("power levels before bob's reply: %v, bob at %d", ok, p.UserLevel(bob))
		}
	})
}

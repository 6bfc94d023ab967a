package federation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersBackfill: B backfills older history (spec: "Backfilling
// and retrieving missing events"). A's room has 30 messages when bob of
// B joins it; B holds the room's state and bob's join, nothing before.
// Paging back with /messages, bob gets A's whole history in order, down
// to the room's creation, fetched from A as he goes; /sync never shows
// it. With history visibility "joined", nothing before bob's join was
// his to see: B fetches nothing and shows nothing.
func TestTwoServersBackfill(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			dbB := openDB(t, cfgB.Database.URL)
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")

			for _, vis := range []string{"shared", "joined"} {
				created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", InitialState: []*event.Event{{
					Type: event.StateHistoryVisibility, StateKey: new(string),
					Content: event.Content{Raw: map[string]any{"history_visibility": vis}}}}})
				if err != nil {
					t.Fatal(err)
				}
				roomID := created.RoomID
				var sent []id.EventID
				for i := range 30 {
					resp, err := alice.SendText(ctx, roomID, fmt.Sprintf("%s %d", vis, i))
					if err != nil {
						t.Fatal(err)
					}
					sent = append(sent, resp.EventID)
				}
				before, err := bob.SyncRequest(ctx, 0, "", "", false, "")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}); err != nil {
					t.Fatalf("%s: bob joins: %v", vis, err)
				}

				got := pageBack(t, bob, roomID, 7)
				if vis == "joined" {
					if len(got) != 1 || got[0].Type != event.StateMember || got[0].GetStateKey() != bob.UserID.String() {
						t.Errorf("%s: bob pages back through %v, want his join alone", vis, ids(got))
					}
					for _, id := range sent {
						if _, err := dbB.EventByID(ctx, id.String()); !errors.Is(err, sql.ErrNotFound) {
							t.Errorf("%s: B holds %s (%v), which it had no right to", vis, id, err)
						}
					}
					continue
				}
				// The same history as its own users see on A, in order.
				want := pageBack(t, alice, roomID, 100)
				if !slices.Equal(ids(got), ids(want)) {
					t.Fatalf("%s: bob's history\n%v\nalice's\n%v", vis, ids(got), ids(want))
				}
				if last := got[len(got)-1]; last.Type != event.StateCreate {
					t.Errorf("%s: history ends with %s, want the create event", vis, last.Type)
				}
				var bodies []string
				for _, ev := range slices.Backward(got) {
					if ev.Type == event.EventMessage {
						body, _ := ev.Content.Raw["body"].(string)
						bodies = append(bodies, body)
					}
				}
				if len(bodies) != 30 || bodies[0] != vis+" 0" || bodies[29] != vis+" 29" {
					t.Errorf("%s: messages %v", vis, bodies)
				}

				// /sync: none of it, incrementally or from scratch.
				for name, since := range map[string]string{"incremental": before.NextBatch, "initial": ""} {
					resp, err := bob.SyncRequest(ctx, 0, since, "", false, "")
					if err != nil {
						t.Fatal(err)
					}
					for _, ev := range resp.Rooms.Join[roomID].Timeline.Events {
						if ev.Type == event.EventMessage {
							t.Errorf("%s: %s sync shows backfilled %s", vis, name, ev.ID)
						}
					}
				}
			}
		})
	}
}

// pageBack pages a room back with /messages from its newest event to its
// first, limit events a page, and returns the events newest first.
func pageBack(t *testing.T, cli *mautrix.Client, roomID id.RoomID, limit int) []*event.Event {
	t.Helper()
	var out []*event.Event
	from := ""
	for pages := 0; ; pages++ {
		if pages > 50 {
			t.Fatalf("%s pages back through %s without end", cli.UserID, roomID)
		}
		resp, err := cli.Messages(context.Background(), roomID, from, "", mautrix.DirectionBackward, nil, limit)
		if err != nil {
			t.Fatalf("%s pages back through %s: %v", cli.UserID, roomID, err)
		}
		out = append(out, resp.Chunk...)
		if resp.End == "" {
			return out
		}
		from = resp.End
	}
}

func ids(evs []*event.Event) []id.EventID {
	out := make([]id.EventID, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

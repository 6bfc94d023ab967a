package federation_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersRejoinGap is the scenario found running against
// Dendrite: bob of B joins alice's room on A, they talk, bob leaves;
// alice says something while B is out of the room; bob joins again. His
// new join has her message for prev event, which B never received. B
// recorded the gap, and bob paging back from his join (from the sync's
// prev_batch, as clients do) gets her message, fetched from A with
// /backfill, between his leave and his new join; paging on, he gets the
// whole room in the order alice sees it (the start of the room too,
// which B lacked since his first join). /sync never shows the fetched
// history as new.
func TestTwoServersRejoinGap(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			alice := testclient.Register(t, servers[0].ClientURL, "alice")
			bob := testclient.Register(t, servers[1].ClientURL, "bob")
			via := &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}

			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID
			send := func(cli *mautrix.Client, body string) id.EventID {
				t.Helper()
				resp, err := cli.SendText(ctx, roomID, body)
				if err != nil {
					t.Fatal(err)
				}
				return resp.EventID
			}
			send(alice, "before bob")
			if _, err := bob.JoinRoom(ctx, roomID.String(), via); err != nil {
				t.Fatalf("bob joins: %v", err)
			}
			// One after the other, so that both servers order them alike.
			send(alice, "hello bob")
			waitFor(t, func() bool { return hasText(t, bob, roomID, "hello bob") })
			send(bob, "hi alice")
			waitFor(t, func() bool { return hasText(t, alice, roomID, "hi alice") })
			if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
				t.Fatalf("bob leaves: %v", err)
			}
			waitFor(t, func() bool { return !slices.Contains(joinedMembers(t, alice, roomID), bob.UserID) })
			away := send(alice, "while bob was away")
			since := syncSince(t, bob)
			if _, err := bob.JoinRoom(ctx, roomID.String(), via); err != nil {
				t.Fatalf("bob joins again: %v", err)
			}

			// The sync after the rejoin: his join, not alice's message.
			// The room's newest events span the gap, so the timeline
			// starts after it, limited.
			resp, err := bob.SyncRequest(ctx, 0, since, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			tl := resp.Rooms.Join[roomID].Timeline
			if len(tl.Events) != 1 || !tl.Limited || tl.PrevBatch == "" {
				t.Fatalf("bob's sync after the rejoin: %v, limited %v, prev_batch %q; want his join alone, limited", ids(tl.Events), tl.Limited, tl.PrevBatch)
			}
			if rejoin := tl.Events[0]; rejoin.Type != event.StateMember || rejoin.GetStateKey() != bob.UserID.String() ||
				rejoin.Content.Raw["membership"] != "join" {
				t.Fatalf("bob's sync after the rejoin shows %s %s", rejoin.Type.Type, rejoin.GetStateKey())
			}
			next := resp.NextBatch

			// Paging back from it, as clients do: alice's message, then
			// bob's leave and his last message. So does a page from the
			// end of the room.
			for _, from := range []string{tl.PrevBatch, ""} {
				page, err := bob.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 4)
				if err != nil {
					t.Fatal(err)
				}
				if from == "" && len(page.Chunk) > 0 {
					page.Chunk = page.Chunk[1:] // his join
				}
				if len(page.Chunk) < 3 || page.Chunk[0].ID != away || page.Chunk[1].Type != event.StateMember ||
					page.Chunk[1].Content.Raw["membership"] != "leave" || page.Chunk[1].GetStateKey() != bob.UserID.String() {
					t.Fatalf("bob pages back from %q through %v; want alice's %s, then his leave", from, ids(page.Chunk), away)
				}
				if body, _ := page.Chunk[2].Content.Raw["body"].(string); body != "hi alice" {
					t.Errorf("then %q, want his last message", body)
				}
			}

			// The whole room, as alice sees it, page by page.
			got, want := pageBack(t, bob, roomID, 4), pageBack(t, alice, roomID, 100)
			if !slices.Equal(ids(got), ids(want)) {
				t.Fatalf("bob's history\n%v\nalice's\n%v", ids(got), ids(want))
			}
			if last := got[len(got)-1]; last.Type != event.StateCreate {
				t.Errorf("history ends with %s, want the create event", last.Type)
			}

			// /sync: none of the fetched history is new.
			later, err := bob.SyncRequest(ctx, 0, next, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			if jr, ok := later.Rooms.Join[roomID]; ok && len(jr.Timeline.Events) != 0 {
				t.Errorf("an incremental sync after paging back shows %v", ids(jr.Timeline.Events))
			}
		})
	}
}

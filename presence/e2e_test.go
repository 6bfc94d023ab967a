package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// presenceIn returns the presence a sync response gives for userID.
func presenceIn(t *testing.T, resp *mautrix.RespSync, userID id.UserID) (event.PresenceEventContent, bool) {
	t.Helper()
	for _, evt := range resp.Presence.Events {
		if evt.Sender != userID {
			continue
		}
		if evt.Type.Type != "m.presence" {
			t.Fatalf("presence event of type %s", evt.Type.Type)
		}
		var c event.PresenceEventContent
		if err := json.Unmarshal(evt.Content.VeryRaw, &c); err != nil {
			t.Fatalf("presence content %s: %v", evt.Content.VeryRaw, err)
		}
		return c, true
	}
	return event.PresenceEventContent{}, false
}

type syncResult struct {
	resp *mautrix.RespSync
	err  error
	took time.Duration
}

func longPoll(cli *mautrix.Client, since string, timeout time.Duration) <-chan syncResult {
	out := make(chan syncResult, 1)
	go func() {
		start := time.Now()
		resp, err := cli.FullSyncRequest(context.Background(), mautrix.ReqSync{Since: since, Timeout: int(timeout.Milliseconds())})
		out <- syncResult{resp: resp, err: err, took: time.Since(start)}
	}()
	return out
}

// TestPresenceEndToEnd: alice sets her presence with a status message
// through mautrix; bob, who shares a room with her, is woken in his
// long-poll with it; carol, who shares none, never sees it.
func TestPresenceEndToEnd(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			srv := hstest.StartEngine(t, e)
			alice := testclient.Register(t, srv.ClientURL, "alice")
			bob := testclient.Register(t, srv.ClientURL, "bob")
			carol := testclient.Register(t, srv.ClientURL, "carol")
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatal(err)
			}
			if _, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{}); err != nil {
				t.Fatal(err)
			}

			bob0, err := bob.FullSyncRequest(ctx, mautrix.ReqSync{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := presenceIn(t, bob0, alice.UserID); ok {
				t.Fatal("bob sees alice's presence before she has any")
			}
			carol0, err := carol.FullSyncRequest(ctx, mautrix.ReqSync{})
			if err != nil {
				t.Fatal(err)
			}

			bobPoll := longPoll(bob, bob0.NextBatch, 20*time.Second)
			carolPoll := longPoll(carol, carol0.NextBatch, 2*time.Second)
			time.Sleep(200 * time.Millisecond) // both are waiting
			if err := alice.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "Making cupcakes"}); err != nil {
				t.Fatal(err)
			}

			r := <-bobPoll
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.took > 10*time.Second {
				t.Fatalf("bob's long-poll answered after %s: not woken", r.took)
			}
			got, ok := presenceIn(t, r.resp, alice.UserID)
			if !ok || got.Presence != event.PresenceOnline || got.StatusMessage != "Making cupcakes" || !got.CurrentlyActive {
				t.Fatalf("bob woken with alice's presence %+v (present %v)", got, ok)
			}

			c := <-carolPoll
			if c.err != nil {
				t.Fatal(c.err)
			}
			if _, ok := presenceIn(t, c.resp, alice.UserID); ok {
				t.Fatal("carol's long-poll got alice's presence")
			}
			// Nor does a fresh initial sync of carol's, nor GET.
			carol1, err := carol.FullSyncRequest(ctx, mautrix.ReqSync{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := presenceIn(t, carol1, alice.UserID); ok {
				t.Fatal("carol's initial sync has alice's presence")
			}
			if _, err := carol.GetPresence(ctx, alice.UserID); !errors.Is(err, mautrix.MForbidden) {
				t.Fatalf("carol's GET of alice's presence: %v, want M_FORBIDDEN", err)
			}
			p, err := bob.GetPresence(ctx, alice.UserID)
			if err != nil || p.Presence != event.PresenceOnline || p.StatusMsg != "Making cupcakes" {
				t.Fatalf("bob's GET of alice's presence: %+v, %v", p, err)
			}
		})
	}
}

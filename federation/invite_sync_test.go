package federation_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// An invite from another server to a room this server is not in is an
// out-of-band membership, an outlier that no timeline holds, and so is its
// rejection: a client that synced before must still see each in its next,
// incremental, sync (found against Dendrite: only initial syncs showed
// them).
func TestRemoteInviteInIncrementalSync(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			servers := hstest.StartFederated(t, hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine))
			a, b := servers[0], servers[1]
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			first, err := bob.SyncRequest(ctx, 0, "", "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Later", Preset: "private_chat"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
				t.Fatalf("invite bob: %v", err)
			}
			var invite *mautrix.SyncInvitedRoom
			since := first.NextBatch
			for deadline := time.Now().Add(10 * time.Second); invite == nil && time.Now().Before(deadline); {
				resp, err := bob.SyncRequest(ctx, 2000, since, "", false, "")
				if err != nil {
					t.Fatal(err)
				}
				since = resp.NextBatch
				invite = resp.Rooms.Invite[room.RoomID]
			}
			if invite == nil {
				t.Fatal("bob's incremental sync shows no invite")
			}
			var name string
			var sawInvite bool
			for _, ev := range invite.State.Events {
				switch ev.Type {
				case event.StateRoomName:
					name, _ = ev.Content.Raw["name"].(string)
				case event.StateMember:
					sawInvite = ev.GetStateKey() == bob.UserID.String() && ev.Content.Raw["membership"] == "invite"
				}
			}
			if name != "Later" || !sawInvite {
				t.Errorf("invite_state %+v: want the room's name and bob's invite", invite.State.Events)
			}
			// Served once: the next sync has nothing of the room.
			resp, err := bob.SyncRequest(ctx, 0, since, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, again := resp.Rooms.Invite[room.RoomID]; again {
				t.Error("the invite is served again by the following sync")
			}
			since = resp.NextBatch

			// bob rejects it (through A, out of band too): his next sync
			// moves the room to leave with his leave, once.
			if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
				t.Fatalf("bob rejects the invite: %v", err)
			}
			resp, err = bob.SyncRequest(ctx, 0, since, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			left := resp.Rooms.Leave[room.RoomID]
			if left == nil {
				t.Fatalf("bob's incremental sync does not show the rejected invite's room as left: %+v", resp.Rooms)
			}
			var sawLeave bool
			for _, ev := range left.Timeline.Events {
				sawLeave = sawLeave || ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() && ev.Content.Raw["membership"] == "leave"
			}
			if !sawLeave {
				t.Errorf("left room's timeline %+v: want bob's leave", left.Timeline.Events)
			}
			if _, still := resp.Rooms.Invite[room.RoomID]; still {
				t.Error("the rejected invite is still served")
			}
			resp, err = bob.SyncRequest(ctx, 0, resp.NextBatch, "", false, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, again := resp.Rooms.Leave[room.RoomID]; again {
				t.Error("the leave is served again by the following sync")
			}
		})
	}
}

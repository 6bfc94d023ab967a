package federation_test

import (
	"context"
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

// An invite of a user of another server (spec: "Inviting to a room"):
// that server countersigns it, its user sees the invite with the stripped
// state A sent, and A's room holds the invite. A user who blocks invites
// is not invited, and A's room is unchanged.
func TestInviteAcrossServers(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			carol := testclient.Register(t, b.ClientURL, "carol")
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Across", Preset: "private_chat"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
				t.Fatalf("invite bob: %v", err)
			}
			var invite *mautrix.SyncInvitedRoom
			deadline := time.Now().Add(10 * time.Second)
			since := ""
			for invite == nil && time.Now().Before(deadline) {
				resp, err := bob.SyncRequest(ctx, 2000, since, "", false, "")
				if err != nil {
					t.Fatal(err)
				}
				since = resp.NextBatch
				invite = resp.Rooms.Invite[room.RoomID]
			}
			if invite == nil {
				t.Fatal("bob's sync shows no invite")
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
			if name != "Across" || !sawInvite {
				t.Errorf("invite_state %+v: want the room's name and bob's invite", invite.State.Events)
			}
			members, err := alice.Members(ctx, room.RoomID)
			if err != nil {
				t.Fatal(err)
			}
			if m := membershipOf(members, bob.UserID); m != "invite" {
				t.Errorf("bob's membership on A: %q", m)
			}

			// carol blocks invites (v1.18): B refuses, A's room does not
			// change.
			if err := carol.SetAccountData(ctx, "m.invite_permission_config", map[string]any{"default_action": "block"}); err != nil {
				t.Fatal(err)
			}
			_, err = alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: carol.UserID})
			var herr mautrix.HTTPError
			if !errors.As(err, &herr) || herr.RespError == nil || herr.RespError.ErrCode != "M_INVITE_BLOCKED" {
				t.Errorf("inviting carol: %v, want M_INVITE_BLOCKED", err)
			}
			members, _ = alice.Members(ctx, room.RoomID)
			if m := membershipOf(members, carol.UserID); m != "" {
				t.Errorf("carol's membership on A: %q", m)
			}
		})
	}
}

func membershipOf(resp *mautrix.RespMembers, user id.UserID) string {
	for _, ev := range resp.Chunk {
		if ev.GetStateKey() == user.String() {
			m, _ := ev.Content.Raw["membership"].(string)
			return m
		}
	}
	return ""
}

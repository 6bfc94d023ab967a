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
			invite := syncInvite(t, bob, room.RoomID)
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

// TestCreateRoomInvitesAcrossServers: createRoom's invite list may name
// users of other servers (spec: createRoom "invite"), whose servers
// countersign their invites as for /invite; a refusal fails the request
// before the room exists, as for a local invitee who blocks invites.
func TestCreateRoomInvitesAcrossServers(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			servers := hstest.StartFederated(t, hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine))
			a, b := servers[0], servers[1]
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			carol := testclient.Register(t, b.ClientURL, "carol")
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Made with an invite", Preset: "private_chat",
				Invite: []id.UserID{bob.UserID}})
			if err != nil {
				t.Fatal(err)
			}
			invite := syncInvite(t, bob, room.RoomID)
			var name string
			for _, ev := range invite.State.Events {
				if ev.Type == event.StateRoomName {
					name, _ = ev.Content.Raw["name"].(string)
				}
			}
			if name != "Made with an invite" {
				t.Errorf("invite_state %+v: want the room's name", invite.State.Events)
			}
			// The invite B countersigned is the one in A's room: bob can
			// join the invite-only room through it.
			if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatalf("bob joins: %v", err)
			}
			members, err := alice.Members(ctx, room.RoomID)
			if err != nil {
				t.Fatal(err)
			}
			if m := membershipOf(members, bob.UserID); m != "join" {
				t.Errorf("bob's membership on A: %q", m)
			}

			if err := carol.SetAccountData(ctx, "m.invite_permission_config", map[string]any{"default_action": "block"}); err != nil {
				t.Fatal(err)
			}
			before, err := alice.JoinedRooms(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{carol.UserID}})
			if !isMautrixError(err, 403, "M_INVITE_BLOCKED") {
				t.Errorf("creating a room inviting carol: %v, want 403 M_INVITE_BLOCKED", err)
			}
			if after, err := alice.JoinedRooms(ctx); err != nil || len(after.JoinedRooms) != len(before.JoinedRooms) {
				t.Errorf("alice's rooms after the refused create: %v (before %v), %v", after, before, err)
			}
		})
	}
}

// syncInvite syncs as cli until its invite to roomID shows.
func syncInvite(t *testing.T, cli *mautrix.Client, roomID id.RoomID) *mautrix.SyncInvitedRoom {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	since := ""
	for time.Now().Before(deadline) {
		resp, err := cli.SyncRequest(context.Background(), 2000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		if invite := resp.Rooms.Invite[roomID]; invite != nil {
			return invite
		}
	}
	t.Fatalf("%s's sync shows no invite to %s", cli.UserID, roomID)
	return nil
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

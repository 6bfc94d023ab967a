package federation_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersKnock has users of B knock on a room of A (spec:
// "Knocking upon a room"), by id with via and by alias, in room versions
// 10 and 12: B's sync shows the knock with the state A sent, A's room
// holds it; carol retracts her knock through A; alice invites bob, who
// joins. A room whose join rule is not knock refuses, and the
// refusal reaches the client.
func TestTwoServersKnock(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA := cfgA.ServerName
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			carol := testclient.Register(t, b.ClientURL, "carol")
			membership := func(roomID id.RoomID, user id.UserID) string {
				t.Helper()
				var m event.MemberEventContent
				if err := alice.StateEvent(ctx, roomID, event.StateMember, user.String(), &m); err != nil {
					t.Fatalf("%s's membership on A: %v", user, err)
				}
				return string(m.Membership)
			}

			for _, version := range []string{"10", "12"} {
				created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Knock " + version,
					RoomAliasName: "knock" + version, RoomVersion: id.RoomVersion(version),
					InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
				if err != nil {
					t.Fatal(err)
				}
				roomID := created.RoomID
				if _, err := bob.KnockRoom(ctx, roomID.String(), &mautrix.ReqKnockRoom{Via: []string{nameA}, Reason: "let me in"}); err != nil {
					t.Fatalf("v%s: bob knocks: %v", version, err)
				}
				knocked := syncKnock(t, bob, roomID)
				var name, own string
				for _, ev := range knocked.State.Events {
					switch {
					case ev.Type == event.StateRoomName:
						name, _ = ev.Content.Raw["name"].(string)
					case ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String():
						own, _ = ev.Content.Raw["membership"].(string)
					}
				}
				if name != "Knock "+version || own != "knock" {
					t.Errorf("v%s: knock_state %+v: want the room's name and bob's knock", version, knocked.State.Events)
				}
				if m := membership(roomID, bob.UserID); m != "knock" {
					t.Fatalf("v%s: bob's membership on A: %s", version, m)
				}

				// carol knocks by alias and changes her mind: B is not in
				// the room, so the leave goes through A.
				if _, err := carol.KnockRoom(ctx, "#knock"+version+":"+nameA, nil); err != nil {
					t.Fatalf("v%s: carol knocks by alias: %v", version, err)
				}
				syncKnock(t, carol, roomID)
				if _, err := carol.LeaveRoom(ctx, roomID); err != nil {
					t.Fatalf("v%s: carol retracts her knock: %v", version, err)
				}
				if m := membership(roomID, carol.UserID); m != "leave" {
					t.Errorf("v%s: carol's membership on A after retracting: %s", version, m)
				}
				resp, err := carol.SyncRequest(ctx, 0, "", "", false, "")
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := resp.Rooms.Knock[roomID]; ok {
					t.Errorf("v%s: carol's sync still shows the retracted knock", version)
				}

				if _, err := alice.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
					t.Fatalf("v%s: alice invites bob: %v", version, err)
				}
				if _, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil {
					t.Fatalf("v%s: bob joins: %v", version, err)
				}
				if m := membership(roomID, bob.UserID); m != "join" {
					t.Errorf("v%s: bob's membership on A after joining: %s", version, m)
				}
			}

			public, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = bob.KnockRoom(ctx, public.RoomID.String(), &mautrix.ReqKnockRoom{Via: []string{nameA}})
			if !isMautrixError(err, 403, "M_FORBIDDEN") {
				t.Errorf("knocking on a public room: %v, want A's 403 M_FORBIDDEN", err)
			}
		})
	}
}

// syncKnock syncs as cli until its knock on roomID shows.
func syncKnock(t *testing.T, cli *mautrix.Client, roomID id.RoomID) *mautrix.SyncKnockedRoom {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	since := ""
	for time.Now().Before(deadline) {
		resp, err := cli.SyncRequest(context.Background(), 2000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		if knocked := resp.Rooms.Knock[roomID]; knocked != nil {
			return knocked
		}
	}
	t.Fatalf("%s's sync shows no knock on %s", cli.UserID, roomID)
	return nil
}

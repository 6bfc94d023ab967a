package federation_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersJoin has a user of server B join rooms of server A over
// the real federation API (spec: "Joining Rooms"): by room id with via
// (room version 10) and by A's alias, resolved by asking A (version 12,
// whose room id is the create event's hash). Both servers then hold the
// join: B has the room's state from send_join, A the join in its room;
// messages then go both ways, and B's leave reaches A. Refusals come
// back to B's client as A gave them.
func TestTwoServersJoin(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA := cfgA.ServerName
			alice := testclient.Register(t, a.ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			if err := bob.SetDisplayName(ctx, "Bob"); err != nil {
				t.Fatal(err)
			}

			for _, version := range []string{"10", "12"} {
				created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Lobby " + version,
					RoomAliasName: "lobby" + version, RoomVersion: id.RoomVersion(version)})
				if err != nil {
					t.Fatal(err)
				}
				roomID := created.RoomID
				if _, err := alice.SendText(ctx, roomID, "before"); err != nil {
					t.Fatal(err)
				}

				var joined *mautrix.RespJoinRoom
				if version == "10" {
					joined, err = bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{nameA}})
				} else {
					alias := "#lobby" + version + ":" + nameA
					resolved, err := bob.ResolveAlias(ctx, id.RoomAlias(alias))
					if err != nil || resolved.RoomID != roomID || !slices.Equal(resolved.Servers, []string{nameA}) {
						t.Fatalf("B resolves %s: %+v, %v", alias, resolved, err)
					}
					joined, err = bob.JoinRoom(ctx, alias, nil)
				}
				if err != nil {
					t.Fatalf("v%s: bob joins: %v", version, err)
				}
				if joined.RoomID != roomID {
					t.Fatalf("v%s: joined %s, want %s", version, joined.RoomID, roomID)
				}

				// B: the room is joined, with the state A sent.
				rooms, err := bob.JoinedRooms(ctx)
				if err != nil || !slices.Contains(rooms.JoinedRooms, roomID) {
					t.Fatalf("v%s: bob's joined rooms %+v, %v", version, rooms, err)
				}
				var name event.RoomNameEventContent
				if err := bob.StateEvent(ctx, roomID, event.StateRoomName, "", &name); err != nil || name.Name != "Lobby "+version {
					t.Errorf("v%s: room name on B: %q, %v", version, name.Name, err)
				}
				members := func(cli *mautrix.Client) map[id.UserID]string {
					t.Helper()
					resp, err := cli.JoinedMembers(ctx, roomID)
					if err != nil {
						t.Fatalf("v%s: joined members as %s: %v", version, cli.UserID, err)
					}
					out := make(map[id.UserID]string)
					for u, m := range resp.Joined {
						out[u] = m.DisplayName
					}
					return out
				}
				want := map[id.UserID]string{alice.UserID: "", bob.UserID: "Bob"}
				for _, cli := range []*mautrix.Client{bob, alice} {
					got := members(cli)
					if len(got) != 2 || got[bob.UserID] != "Bob" || !hasKey(got, alice.UserID) {
						t.Errorf("v%s: joined members seen by %s: %v, want %v", version, cli.UserID, got, want)
					}
				}
				// A holds the join that B built and signed, with bob's profile.
				var member event.MemberEventContent
				if err := alice.StateEvent(ctx, roomID, event.StateMember, bob.UserID.String(), &member); err != nil ||
					member.Membership != event.MembershipJoin || member.Displayname != "Bob" {
					t.Errorf("v%s: bob's member event on A: %+v, %v", version, member, err)
				}
				// Joining again changes nothing.
				if again, err := bob.JoinRoom(ctx, roomID.String(), nil); err != nil || again.RoomID != roomID {
					t.Errorf("v%s: join again: %v", version, err)
				}

				// Messages go both ways: each server now sends the room's
				// events to the other.
				if _, err := alice.SendText(ctx, roomID, "after, from A"); err != nil {
					t.Fatal(err)
				}
				if _, err := bob.SendText(ctx, roomID, "after, from B"); err != nil {
					t.Fatal(err)
				}
				waitFor(t, func() bool { return hasText(t, bob, roomID, "after, from A") })
				waitFor(t, func() bool { return hasText(t, alice, roomID, "after, from B") })

				// bob leaves, which A learns, and joins again through A: B,
				// no longer in the room, cannot build on it.
				if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
					t.Fatalf("v%s: bob leaves: %v", version, err)
				}
				if rooms, err := bob.JoinedRooms(ctx); err != nil || slices.Contains(rooms.JoinedRooms, roomID) {
					t.Fatalf("v%s: bob's joined rooms after leaving %+v, %v", version, rooms, err)
				}
				waitFor(t, func() bool { return !hasKey(members(alice), bob.UserID) })
				// Without via, a version 12 room id names no server to ask;
				// before, the room id's server is asked.
				_, err = bob.JoinRoom(ctx, roomID.String(), nil)
				if version == "12" {
					if !isMautrixError(err, 404, "M_NOT_FOUND") {
						t.Errorf("v%s: rejoin without a server to ask: %v", version, err)
					}
					_, err = bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{nameA}})
				}
				if err != nil {
					t.Fatalf("v%s: bob rejoins: %v", version, err)
				}
				if rooms, err := bob.JoinedRooms(ctx); err != nil || !slices.Contains(rooms.JoinedRooms, roomID) {
					t.Fatalf("v%s: bob's joined rooms after rejoining %+v, %v", version, rooms, err)
				}
			}

			// Refusals: A's answer reaches B's client.
			_, err := bob.JoinRoom(ctx, "!unknown:"+nameA, nil)
			if !isMautrixError(err, 404, "M_NOT_FOUND") {
				t.Errorf("unknown room of A: %v", err)
			}
			private, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.JoinRoom(ctx, private.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{nameA}}); !isMautrixError(err, 403, "M_FORBIDDEN") {
				t.Errorf("invite-only room of A: %v", err)
			}
			if _, err := bob.JoinRoom(ctx, "#nothing:"+nameA, nil); !isMautrixError(err, 404, "M_NOT_FOUND") {
				t.Errorf("unknown alias of A: %v", err)
			}
		})
	}
}

// hasText reports whether one of the room's latest messages, as cli
// reads them, has the body.
func hasText(t *testing.T, cli *mautrix.Client, roomID id.RoomID, body string) bool {
	t.Helper()
	msgs, err := cli.Messages(context.Background(), roomID, "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatalf("messages as %s: %v", cli.UserID, err)
	}
	for _, ev := range msgs.Chunk {
		if b, _ := ev.Content.Raw["body"].(string); b == body {
			return true
		}
	}
	return false
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}

// TestTwoServersInvites has a user of B answer invites to rooms of A that
// B is not in: accepting joins through the inviter's server, which the
// room id (version 12) does not name; rejecting goes through A with
// make_leave and send_leave (spec: "Leaving Rooms (Rejecting Invites)"),
// here by B's Joiner directly.
func TestTwoServersInvites(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) { testTwoServersInvites(t, engine) })
	}
}

func testTwoServersInvites(t *testing.T, engine config.Engine) {
	ctx := context.Background()
	cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
	servers := hstest.StartFederated(t, cfgA, cfgB)
	a, b := servers[0], servers[1]
	alice := testclient.Register(t, a.ClientURL, "alice")
	bob := testclient.Register(t, b.ClientURL, "bob")
	invitedRoom := func() id.RoomID {
		t.Helper()
		created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "12"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.InviteUser(ctx, created.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
			t.Fatal(err)
		}
		return created.RoomID
	}
	membership := func(roomID id.RoomID) string {
		t.Helper()
		var m event.MemberEventContent
		if err := alice.StateEvent(ctx, roomID, event.StateMember, bob.UserID.String(), &m); err != nil {
			t.Fatal(err)
		}
		return string(m.Membership)
	}

	accepted := invitedRoom()
	if _, err := bob.JoinRoom(ctx, accepted.String(), nil); err != nil {
		t.Fatalf("bob accepts the invite: %v", err)
	}
	if m := membership(accepted); m != "join" {
		t.Fatalf("bob's membership on A after accepting: %s", m)
	}

	rejected := invitedRoom()
	if _, err := bob.LeaveRoom(ctx, rejected, &mautrix.ReqLeave{Reason: "no thanks"}); err != nil {
		t.Fatalf("bob rejects the invite: %v", err)
	}
	if m := membership(rejected); m != "leave" {
		t.Fatalf("bob's membership on A after rejecting: %s", m)
	}
	var m event.MemberEventContent
	if err := alice.StateEvent(ctx, rejected, event.StateMember, bob.UserID.String(), &m); err != nil || m.Reason != "no thanks" {
		t.Errorf("leave content %+v, %v", m, err)
	}
	// B knows bob has left: the invite is gone from his joined and
	// invited rooms, and leaving again changes nothing.
	resp, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.Rooms.Invite[rejected]; ok {
		t.Errorf("bob's sync still shows the rejected invite")
	}
	if _, err := bob.LeaveRoom(ctx, rejected); err != nil {
		t.Errorf("leaving again: %v", err)
	}
}

// TestTwoServersRestrictedJoin has a user of B join a restricted room of
// A (spec: "Restricted rooms") as a member of the room it allows: A names
// its authoriser in the template and signs the join, which B checks.
// Without that membership A refuses.
func TestTwoServersRestrictedJoin(t *testing.T) {
	engine := sqltest.Engines()[0]
	ctx := context.Background()
	cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
	servers := hstest.StartFederated(t, cfgA, cfgB)
	a, b := servers[0], servers[1]
	nameA := cfgA.ServerName
	alice := testclient.Register(t, a.ClientURL, "alice")
	bob := testclient.Register(t, b.ClientURL, "bob")
	space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	restricted, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateJoinRules, StateKey: new(string), Content: event.Content{Raw: map[string]any{
			"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": space.RoomID.String()}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	via := &mautrix.ReqJoinRoom{Via: []string{nameA}}
	if _, err := bob.JoinRoom(ctx, restricted.RoomID.String(), via); !isMautrixError(err, 403, "M_FORBIDDEN") {
		t.Fatalf("restricted join without the allowed room: %v", err)
	}
	if _, err := bob.JoinRoom(ctx, space.RoomID.String(), via); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, restricted.RoomID.String(), via); err != nil {
		t.Fatalf("restricted join as a member of the allowed room: %v", err)
	}
	var member event.MemberEventContent
	if err := alice.StateEvent(ctx, restricted.RoomID, event.StateMember, bob.UserID.String(), &member); err != nil ||
		member.Membership != event.MembershipJoin || member.JoinAuthorisedViaUsersServer != alice.UserID {
		t.Fatalf("bob's join on A: %+v, %v", member, err)
	}
	if rooms, err := bob.JoinedRooms(ctx); err != nil || !slices.Contains(rooms.JoinedRooms, restricted.RoomID) {
		t.Fatalf("bob's joined rooms on B: %+v, %v", rooms, err)
	}
}

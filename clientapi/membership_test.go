package clientapi_test

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/syncapi/view"
)

// mhs is a whole test homeserver (guests allowed) for the membership
// tests, with helpers that go through its client API.
type mhs struct {
	t   *testing.T
	srv *hstest.Server
}

// forEachMembershipServer runs f on a fresh homeserver on each engine.
func forEachMembershipServer(t *testing.T, f func(t *testing.T, h mhs)) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.Registration.AllowGuests = true
			f(t, mhs{t: t, srv: hstest.Start(t, cfg)})
		})
	}
}

func (h mhs) user(name string) *mautrix.Client {
	h.t.Helper()
	return testclient.Register(h.t, h.srv.ClientURL, name)
}

// call makes a raw request as cli (nil: no token).
func (h mhs) call(method, path string, cli *mautrix.Client, body any) response {
	h.t.Helper()
	token := ""
	if cli != nil {
		token = cli.AccessToken
	}
	return hsClient{t: h.t, url: h.srv.ClientURL}.do(method, path, token, body)
}

// createRoom makes a room through POST /createRoom with a raw request, so
// that tests can give content a typed client would refuse.
func (h mhs) createRoom(cli *mautrix.Client, req map[string]any) string {
	h.t.Helper()
	var resp struct {
		RoomID string `json:"room_id"`
	}
	h.call("POST", "/createRoom", cli, req).expect(h.t, 200).JSON(h.t, &resp)
	return resp.RoomID
}

// member returns the target's member event as viewer sees it, nil when
// the room state has none.
func (h mhs) member(viewer *mautrix.Client, roomID string, target id.UserID) map[string]any {
	h.t.Helper()
	r := h.call("GET", "/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(string(target))+"?format=event", viewer, nil)
	if r.Status == 404 {
		return nil
	}
	return r.expect(h.t, 200).Object(h.t)
}

// membership is the target's current membership ("" when none).
func (h mhs) membership(viewer *mautrix.Client, roomID string, target id.UserID) string {
	h.t.Helper()
	ev := h.member(viewer, roomID, target)
	if ev == nil {
		return ""
	}
	m, _ := ev["content"].(map[string]any)["membership"].(string)
	return m
}

// streamPos is an event's position in the room event stream, read from
// the homeserver's database: the sync API that hands clients such
// positions (as tokens) does not exist yet.
func (h mhs) streamPos(eventID string) int64 {
	h.t.Helper()
	db, err := sql.Open(context.Background(), h.srv.Config.Database.URL, 2)
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	ev, err := db.EventByID(context.Background(), eventID)
	if err != nil {
		h.t.Fatalf("event %s: %v", eventID, err)
	}
	return ev.StreamPos
}

// roomsWith lists, from the database, the rooms where the user has the
// membership, forgotten rooms left out (what sync's include_leave will
// read).
func (h mhs) roomsWith(userID id.UserID, membership string) []string {
	h.t.Helper()
	db, err := sql.Open(context.Background(), h.srv.Config.Database.URL, 2)
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	rooms, err := db.RoomsWithMembership(context.Background(), string(userID), membership)
	if err != nil {
		h.t.Fatal(err)
	}
	return rooms
}

func (h mhs) joinedRooms(cli *mautrix.Client) []id.RoomID {
	h.t.Helper()
	resp, err := cli.JoinedRooms(context.Background())
	if err != nil {
		h.t.Fatalf("joined_rooms: %v", err)
	}
	return resp.JoinedRooms
}

// wantMembershipError fails unless err is the Matrix error code with status.
func wantMembershipError(t testing.TB, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
	if he.RespError.StatusCode != status || he.RespError.ErrCode != code {
		t.Fatalf("got %d %s (%s), want %d %s", he.RespError.StatusCode, he.RespError.ErrCode, he.RespError.Err, status, code)
	}
}

// memberOK takes a client call's two results and, given the test, fails
// it on an error or returns the value: memberOK(cli.Call(…))(t).
func memberOK[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func memberRoomPath(roomID, rest string) string { return "/rooms/" + url.PathEscape(roomID) + rest }

func TestJoinLeaveForget(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie := h.user("alice"), h.user("bob"), h.user("charlie")
		if err := bob.SetDisplayName(ctx, "Bob B"); err != nil {
			t.Fatal(err)
		}
		avatar := id.ContentURI{Homeserver: "localhost", FileID: "bobface"}
		if err := bob.SetAvatarURL(ctx, avatar); err != nil {
			t.Fatal(err)
		}
		roomID := h.createRoom(alice, map[string]any{"preset": "public_chat", "room_alias_name": "lobby"})
		rid := id.RoomID(roomID)

		// Join by room id; the join event carries the profile (Synapse).
		resp := memberOK(bob.JoinRoomByID(ctx, rid))(t)
		if resp.RoomID != rid {
			t.Fatalf("join answered %s, want %s", resp.RoomID, rid)
		}
		ev := h.member(alice, roomID, bob.UserID)
		content := ev["content"].(map[string]any)
		if content["membership"] != "join" || content["displayname"] != "Bob B" || content["avatar_url"] != avatar.String() {
			t.Fatalf("join event content %v", content)
		}
		if got := h.joinedRooms(bob); !slices.Equal(got, []id.RoomID{rid}) {
			t.Fatalf("joined_rooms %v", got)
		}

		// Joining again changes nothing: no new event.
		memberOK(bob.JoinRoom(ctx, roomID, &mautrix.ReqJoinRoom{Reason: "again"}))(t)
		if again := h.member(alice, roomID, bob.UserID); again["event_id"] != ev["event_id"] {
			t.Fatalf("second join made event %v, first %v", again["event_id"], ev["event_id"])
		}

		// Join by alias, with a reason.
		memberOK(charlie.JoinRoom(ctx, "#lobby:"+h.srv.Config.ServerName, &mautrix.ReqJoinRoom{Reason: "hello"}))(t)
		if c := h.member(alice, roomID, charlie.UserID)["content"].(map[string]any); c["membership"] != "join" || c["reason"] != "hello" {
			t.Fatalf("alias join content %v", c)
		}

		// Forget while joined: 400 M_UNKNOWN (spec: forget, "The user has not left the room").
		_, err := bob.ForgetRoom(ctx, rid)
		wantMembershipError(t, err, 400, "M_UNKNOWN")

		// Leave with a reason, then leave again (no-op), then forget.
		memberOK(bob.LeaveRoom(ctx, rid, &mautrix.ReqLeave{Reason: "bye"}))(t)
		left := h.member(alice, roomID, bob.UserID)
		if c := left["content"].(map[string]any); c["membership"] != "leave" || c["reason"] != "bye" {
			t.Fatalf("leave content %v", c)
		}
		memberOK(bob.LeaveRoom(ctx, rid))(t)
		if h.member(alice, roomID, bob.UserID)["event_id"] != left["event_id"] {
			t.Fatal("leaving twice made a new event")
		}
		if got := h.joinedRooms(bob); len(got) != 0 {
			t.Fatalf("joined_rooms after leave %v", got)
		}
		if left := h.roomsWith(bob.UserID, "leave"); !slices.Contains(left, roomID) {
			t.Fatalf("left rooms before forget %v", left)
		}
		memberOK(bob.ForgetRoom(ctx, rid))(t)
		if left := h.roomsWith(bob.UserID, "leave"); slices.Contains(left, roomID) {
			t.Fatalf("forgotten room still listed: %v", left)
		}
		// Forgetting a room one was never in is a no-op, as in Synapse.
		memberOK(alice.ForgetRoom(ctx, "!nowhere:"+id.RoomID(h.srv.Config.ServerName)))(t)
		// Rejoining after forgetting brings the room back.
		memberOK(bob.JoinRoomByID(ctx, rid))(t)
		if got := h.joinedRooms(bob); !slices.Equal(got, []id.RoomID{rid}) {
			t.Fatalf("joined_rooms after rejoin %v", got)
		}

		// Errors.
		sn := h.srv.Config.ServerName
		_, err = bob.JoinRoom(ctx, "!unknown:"+sn, nil)
		wantMembershipError(t, err, 404, "M_NOT_FOUND")
		// A room of another server is joined through it: 502 when it
		// cannot be reached.
		_, err = bob.JoinRoom(ctx, "!elsewhere:other.example", nil)
		wantMembershipError(t, err, 502, "M_UNKNOWN")
		_, err = bob.JoinRoom(ctx, "#nope:"+sn, nil)
		wantMembershipError(t, err, 404, "M_NOT_FOUND")
		_, err = bob.JoinRoom(ctx, "#remote:other.example", nil)
		wantMembershipError(t, err, 502, "M_UNKNOWN")
		_, err = bob.JoinRoom(ctx, "lobby", nil)
		wantMembershipError(t, err, 400, "M_INVALID_PARAM")
		h.call("POST", "/rooms/notaroom/join", bob, "{}").expectError(t, 400, "M_INVALID_PARAM")
		h.call("POST", memberRoomPath(roomID, "/join"), bob, "[1]").expectError(t, 400, "M_BAD_JSON")
		h.call("POST", memberRoomPath(roomID, "/join"), bob, `{"reason": 5}`).expectError(t, 400, "M_BAD_JSON")
		h.call("POST", memberRoomPath(roomID, "/join"), nil, "{}").expectError(t, 401, "M_MISSING_TOKEN")
		_, err = charlie.LeaveRoom(ctx, "!unknown:"+id.RoomID(sn))
		wantMembershipError(t, err, 404, "M_NOT_FOUND")
		dave := h.user("dave")
		_, err = dave.LeaveRoom(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN") // never in the room
	})
}

func TestInvite(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie, dave := h.user("alice"), h.user("bob"), h.user("charlie"), h.user("dave")
		roomID := h.createRoom(alice, map[string]any{"preset": "private_chat"})
		rid := id.RoomID(roomID)
		if err := bob.SetDisplayName(ctx, "Bobby"); err != nil {
			t.Fatal(err)
		}

		// Invite-only: an uninvited join is refused.
		_, err := bob.JoinRoomByID(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: bob.UserID, Reason: "come in"}))(t)
		inv := h.member(alice, roomID, bob.UserID)
		if c := inv["content"].(map[string]any); c["membership"] != "invite" || c["reason"] != "come in" || c["displayname"] != "Bobby" {
			t.Fatalf("invite content %v", c)
		}
		if inv["sender"] != string(alice.UserID) {
			t.Fatalf("invite sender %v", inv["sender"])
		}
		// Spec: 200 when already invited.
		memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: bob.UserID}))(t)
		memberOK(bob.JoinRoomByID(ctx, rid))(t)
		// Inviting a member: 403.
		_, err = alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: bob.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// An outsider cannot invite.
		_, err = charlie.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: dave.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		// Nor can a member below the invite level (private_chat: 0, so
		// raise it first).
		// (Room version 12, the default: the creator is not listed.)
		h.call("PUT", memberRoomPath(roomID, "/state/m.room.power_levels/"), alice, map[string]any{"invite": 50}).expect(t, 200)
		_, err = bob.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: dave.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// Rejecting an invite is leaving.
		memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: charlie.UserID}))(t)
		memberOK(charlie.LeaveRoom(ctx, rid))(t)
		if m := h.membership(alice, roomID, charlie.UserID); m != "leave" {
			t.Fatalf("charlie after rejecting: %q", m)
		}

		// Invite blocking (spec v1.18, "Invite permission").
		if err := dave.SetAccountData(ctx, "m.invite_permission_config", map[string]any{"default_action": "block"}); err != nil {
			t.Fatal(err)
		}
		_, err = alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: dave.UserID})
		wantMembershipError(t, err, 403, "M_INVITE_BLOCKED")
		if m := h.membership(alice, roomID, dave.UserID); m != "" {
			t.Fatalf("blocked invite left membership %q", m)
		}
		// An unsupported value lets invites through.
		if err := dave.SetAccountData(ctx, "m.invite_permission_config", map[string]any{"default_action": "allow"}); err != nil {
			t.Fatal(err)
		}
		memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: dave.UserID}))(t)

		// Bad requests.
		path := memberRoomPath(roomID, "/invite")
		h.call("POST", path, alice, map[string]any{"user_id": "bob"}).expectError(t, 400, "M_INVALID_PARAM")
		h.call("POST", path, alice, map[string]any{"reason": "x"}).expectError(t, 400, "M_MISSING_PARAM")
		h.call("POST", path, alice, map[string]any{"user_id": 7}).expectError(t, 400, "M_BAD_JSON")
		h.call("POST", path, alice, "").expectError(t, 400, "M_NOT_JSON")
		h.call("POST", memberRoomPath("!unknown:"+h.srv.Config.ServerName, "/invite"), alice,
			map[string]any{"user_id": string(bob.UserID)}).expectError(t, 404, "M_NOT_FOUND")
		// Remote invitees need federation.
		h.call("POST", path, alice, map[string]any{"user_id": "@zed:other.example"}).expectError(t, 502, "M_UNKNOWN")
	})
}

func TestKickBanUnban(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie := h.user("alice"), h.user("bob"), h.user("charlie")
		roomID := h.createRoom(alice, map[string]any{"preset": "public_chat"})
		rid := id.RoomID(roomID)
		memberOK(bob.JoinRoomByID(ctx, rid))(t)
		memberOK(charlie.JoinRoomByID(ctx, rid))(t)

		// Without power: 403.
		_, err := bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: charlie.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = bob.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: charlie.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// Kick, with the reason on the event.
		memberOK(alice.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: charlie.UserID, Reason: "jokes"}))(t)
		ev := h.member(alice, roomID, charlie.UserID)
		if c := ev["content"].(map[string]any); c["membership"] != "leave" || c["reason"] != "jokes" || ev["sender"] != string(alice.UserID) {
			t.Fatalf("kick event %v", ev)
		}
		// Kicking someone not in the room: 403 (Synapse).
		_, err = alice.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: charlie.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		// A kicked user may rejoin a public room.
		memberOK(charlie.JoinRoomByID(ctx, rid))(t)

		// Ban: the user leaves and cannot come back nor be invited.
		memberOK(alice.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: charlie.UserID, Reason: "spam"}))(t)
		if m := h.membership(alice, roomID, charlie.UserID); m != "ban" {
			t.Fatalf("after ban: %q", m)
		}
		_, err = charlie.JoinRoomByID(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: charlie.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = charlie.LeaveRoom(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		// Banning someone who never came.
		dave := h.user("dave")
		memberOK(alice.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: dave.UserID}))(t)
		_, err = dave.JoinRoomByID(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// Unban: without power 403; of a user not banned M_BAD_STATE (Synapse).
		_, err = bob.UnbanUser(ctx, rid, &mautrix.ReqUnbanUser{UserID: charlie.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = alice.UnbanUser(ctx, rid, &mautrix.ReqUnbanUser{UserID: bob.UserID})
		wantMembershipError(t, err, 403, "M_BAD_STATE")
		memberOK(alice.UnbanUser(ctx, rid, &mautrix.ReqUnbanUser{UserID: charlie.UserID, Reason: "served"}))(t)
		if m := h.membership(alice, roomID, charlie.UserID); m != "leave" {
			t.Fatalf("after unban: %q", m)
		}
		memberOK(charlie.JoinRoomByID(ctx, rid))(t)

		// A non-member cannot moderate.
		eve := h.user("eve")
		_, err = eve.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: bob.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// Bad bodies.
		for _, action := range []string{"/kick", "/ban", "/unban"} {
			h.call("POST", memberRoomPath(roomID, action), alice, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
			h.call("POST", memberRoomPath(roomID, action), alice, map[string]any{"user_id": "nobody"}).expectError(t, 400, "M_INVALID_PARAM")
			h.call("POST", memberRoomPath("!unknown:"+h.srv.Config.ServerName, action), alice,
				map[string]any{"user_id": string(bob.UserID)}).expectError(t, 404, "M_NOT_FOUND")
		}
	})
}

func TestKnock(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob := h.user("alice"), h.user("bob")
		knockRule := []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}

		for _, version := range []string{"7", "10", "12"} {
			roomID := h.createRoom(alice, map[string]any{"preset": "private_chat", "room_version": version,
				"initial_state": knockRule, "room_alias_name": "knock" + version})
			rid := id.RoomID(roomID)
			resp := memberOK(bob.KnockRoom(ctx, "#knock"+version+":"+h.srv.Config.ServerName, &mautrix.ReqKnockRoom{Reason: "let me in"}))(t)
			if resp.RoomID != rid {
				t.Fatalf("v%s: knock answered %s", version, resp.RoomID)
			}
			if c := h.member(alice, roomID, bob.UserID)["content"].(map[string]any); c["membership"] != "knock" || c["reason"] != "let me in" {
				t.Fatalf("v%s: knock content %v", version, c)
			}
			// Knocking is not joining.
			_, err := bob.JoinRoomByID(ctx, rid)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			// Accepting the knock is inviting.
			memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: bob.UserID}))(t)
			_, err = bob.KnockRoom(ctx, roomID, nil)
			wantMembershipError(t, err, 403, "M_FORBIDDEN") // already invited
			memberOK(bob.JoinRoomByID(ctx, rid))(t)
			_, err = bob.KnockRoom(ctx, roomID, nil)
			wantMembershipError(t, err, 403, "M_FORBIDDEN") // already joined
		}

		// A knock retracted by leaving; a knock refused by a kick.
		roomID := h.createRoom(alice, map[string]any{"preset": "private_chat", "initial_state": knockRule})
		rid := id.RoomID(roomID)
		carol := h.user("carol")
		memberOK(carol.KnockRoom(ctx, roomID, nil))(t)
		memberOK(carol.LeaveRoom(ctx, rid))(t)
		if m := h.membership(alice, roomID, carol.UserID); m != "leave" {
			t.Fatalf("after retracting: %q", m)
		}
		memberOK(carol.KnockRoom(ctx, roomID, nil))(t)
		memberOK(alice.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: carol.UserID}))(t)
		memberOK(alice.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: carol.UserID}))(t)
		_, err := carol.KnockRoom(ctx, roomID, nil)
		wantMembershipError(t, err, 403, "M_FORBIDDEN") // banned

		// Rooms whose join rule is not knock.
		for _, preset := range []string{"private_chat", "public_chat"} {
			other := h.createRoom(alice, map[string]any{"preset": preset})
			_, err := bob.KnockRoom(ctx, other, nil)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
		}
		// Room versions before 7 have no knocking, whatever the join rule.
		v6 := h.createRoom(alice, map[string]any{"preset": "private_chat", "room_version": "6", "initial_state": knockRule})
		_, err = bob.KnockRoom(ctx, v6, nil)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		if m := h.membership(alice, v6, bob.UserID); m != "" {
			t.Fatalf("knock on v6 left membership %q", m)
		}

		_, err = bob.KnockRoom(ctx, "!unknown:"+h.srv.Config.ServerName, nil)
		wantMembershipError(t, err, 404, "M_NOT_FOUND")
		guest := testclient.RegisterGuest(t, h.srv.ClientURL)
		_, err = guest.KnockRoom(ctx, roomID, nil)
		wantMembershipError(t, err, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

// TestRestrictedJoin checks the restricted and knock_restricted join
// rules (spec: "Restricted rooms"; room versions 8+, knock_restricted 10+).
func TestRestrictedJoin(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie := h.user("alice"), h.user("bob"), h.user("charlie")
		space := h.createRoom(alice, map[string]any{"preset": "public_chat"})
		memberOK(bob.JoinRoomByID(ctx, id.RoomID(space)))(t)
		restricted := func(version, rule string) string {
			return h.createRoom(alice, map[string]any{"preset": "private_chat", "room_version": version,
				"initial_state": []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{
					"join_rule": rule, "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space}},
				}}}})
		}

		for _, version := range []string{"8", "9", "10", "11", "12"} {
			roomID := restricted(version, "restricted")
			rid := id.RoomID(roomID)
			// bob is in the allowed room: the server authorises his join
			// through alice, the member who may invite.
			memberOK(bob.JoinRoomByID(ctx, rid))(t)
			c := h.member(alice, roomID, bob.UserID)["content"].(map[string]any)
			if c["membership"] != "join" || c["join_authorised_via_users_server"] != string(alice.UserID) {
				t.Fatalf("v%s: restricted join content %v", version, c)
			}
			// charlie is not: 403.
			_, err := charlie.JoinRoomByID(ctx, rid)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			// An invite overrides the conditions; no authoriser then.
			memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: charlie.UserID}))(t)
			memberOK(charlie.JoinRoomByID(ctx, rid))(t)
			if c := h.member(alice, roomID, charlie.UserID)["content"].(map[string]any); c["join_authorised_via_users_server"] != nil {
				t.Fatalf("v%s: invited join names an authoriser: %v", version, c)
			}
		}

		for _, version := range []string{"10", "12"} {
			roomID := restricted(version, "knock_restricted")
			rid := id.RoomID(roomID)
			memberOK(bob.JoinRoomByID(ctx, rid))(t)
			dave := h.user("dave" + version)
			_, err := dave.JoinRoomByID(ctx, rid)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			memberOK(dave.KnockRoom(ctx, roomID, nil))(t)
		}

		// Room version 7 does not know the restricted rule, nor versions 8
		// and 9 knock_restricted: unknown join rules let only the invited in.
		v7 := restricted("7", "restricted")
		_, err := bob.JoinRoomByID(ctx, id.RoomID(v7))
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		for _, version := range []string{"8", "9"} {
			roomID := restricted(version, "knock_restricted")
			_, err := bob.JoinRoomByID(ctx, id.RoomID(roomID))
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			_, err = charlie.KnockRoom(ctx, roomID, nil)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
		}

		// Nobody left who may invite: nobody can authorise the join.
		lonely := h.createRoom(alice, map[string]any{"preset": "private_chat", "room_version": "10",
			"power_level_content_override": map[string]any{"invite": 100, "users": map[string]any{string(alice.UserID): 100}},
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{
				"join_rule": "restricted", "allow": []any{map[string]any{"type": "m.room_membership", "room_id": space}},
			}}}})
		eve := h.user("eve")
		memberOK(eve.JoinRoomByID(ctx, id.RoomID(space)))(t)
		memberOK(bob.JoinRoomByID(ctx, id.RoomID(lonely)))(t)
		memberOK(alice.LeaveRoom(ctx, id.RoomID(lonely)))(t)
		_, err = eve.JoinRoomByID(ctx, id.RoomID(lonely))
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
	})
}

func TestGuestJoin(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice := h.user("alice")
		guest := testclient.RegisterGuest(t, h.srv.ClientURL)
		// private_chat sets m.room.guest_access to can_join (Synapse's
		// presets); open the join rule too.
		open := id.RoomID(h.createRoom(alice, map[string]any{"preset": "private_chat", "initial_state": []any{
			map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}},
		}}))
		memberOK(guest.JoinRoomByID(ctx, open))(t)
		memberOK(guest.LeaveRoom(ctx, open))(t)
		// Rooms without guest access, or with it forbidden: 403 M_FORBIDDEN (Synapse).
		for _, closed := range []string{
			h.createRoom(alice, map[string]any{"preset": "public_chat"}),
			h.createRoom(alice, map[string]any{"preset": "public_chat", "initial_state": []any{
				map[string]any{"type": "m.room.guest_access", "content": map[string]any{"guest_access": "forbidden"}},
			}}),
		} {
			_, err := guest.JoinRoomByID(ctx, id.RoomID(closed))
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
		}
		var err error
		// Guests may only join and leave.
		_, err = guest.InviteUser(ctx, open, &mautrix.ReqInviteUser{UserID: alice.UserID})
		wantMembershipError(t, err, 403, "M_GUEST_ACCESS_FORBIDDEN")
		_, err = guest.ForgetRoom(ctx, open)
		wantMembershipError(t, err, 403, "M_GUEST_ACCESS_FORBIDDEN")
		_, err = guest.KickUser(ctx, open, &mautrix.ReqKickUser{UserID: alice.UserID})
		wantMembershipError(t, err, 403, "M_GUEST_ACCESS_FORBIDDEN")
	})
}

func TestMembersAndJoinedMembers(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie, dave := h.user("alice"), h.user("bob"), h.user("charlie"), h.user("dave")
		if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
			t.Fatal(err)
		}
		roomID := h.createRoom(alice, map[string]any{"preset": "public_chat"})
		rid := id.RoomID(roomID)
		memberOK(bob.JoinRoomByID(ctx, rid))(t)

		// Strangers see nothing; unknown rooms look the same.
		_, err := charlie.Members(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = charlie.JoinedMembers(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		_, err = charlie.Members(ctx, id.RoomID("!unknown:"+h.srv.Config.ServerName))
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		jm := memberOK(bob.JoinedMembers(ctx, rid))(t)
		if len(jm.Joined) != 2 || jm.Joined[alice.UserID].DisplayName != "Alice" {
			t.Fatalf("joined_members %+v", jm.Joined)
		}
		if _, ok := jm.Joined[bob.UserID]; !ok {
			t.Fatalf("joined_members misses bob: %+v", jm.Joined)
		}

		// bob leaves; dave joins afterwards; an invite for charlie.
		memberOK(bob.LeaveRoom(ctx, rid))(t)
		leavePos := h.streamPos(h.member(alice, roomID, bob.UserID)["event_id"].(string))
		memberOK(dave.JoinRoomByID(ctx, rid))(t)
		memberOK(alice.InviteUser(ctx, rid, &mautrix.ReqInviteUser{UserID: charlie.UserID}))(t)

		names := func(resp *mautrix.RespMembers) map[string]string {
			out := map[string]string{}
			for _, ev := range resp.Chunk {
				if ev.RoomID == "" || ev.ID == "" || ev.Sender == "" || ev.Type.Type != event.StateMember.Type || ev.StateKey == nil {
					t.Fatalf("not a client event: %+v", ev)
				}
				out[*ev.StateKey] = string(ev.Content.AsMember().Membership)
			}
			return out
		}
		want := func(got, want map[string]string) {
			t.Helper()
			if len(got) != len(want) {
				t.Fatalf("members %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Fatalf("members %v, want %v", got, want)
				}
			}
		}
		a, b, c, d := string(alice.UserID), string(bob.UserID), string(charlie.UserID), string(dave.UserID)
		want(names(memberOK(alice.Members(ctx, rid))(t)), map[string]string{a: "join", b: "leave", c: "invite", d: "join"})
		// A member who left sees the members as they were when they left.
		want(names(memberOK(bob.Members(ctx, rid))(t)), map[string]string{a: "join", b: "leave"})
		_, err = bob.JoinedMembers(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		// An invited user is not a member yet.
		_, err = charlie.Members(ctx, rid)
		wantMembershipError(t, err, 403, "M_FORBIDDEN")

		// Filters; both together are an "or" (spec).
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{Membership: "join"}))(t)), map[string]string{a: "join", d: "join"})
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{NotMembership: "join"}))(t)), map[string]string{b: "leave", c: "invite"})
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{Membership: "leave", NotMembership: "join"}))(t)),
			map[string]string{b: "leave", c: "invite"})
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{Membership: "ban", NotMembership: "invite"}))(t)),
			map[string]string{a: "join", b: "leave", d: "join"})
		h.call("GET", memberRoomPath(roomID, "/members?membership=member"), alice, nil).expectError(t, 400, "M_INVALID_PARAM")
		h.call("GET", memberRoomPath(roomID, "/members?not_membership=x"), alice, nil).expectError(t, 400, "M_INVALID_PARAM")

		// ?at: a position in the room stream.
		h.call("GET", memberRoomPath(roomID, "/members?at=notatoken"), alice, nil).expectError(t, 400, "M_INVALID_PARAM")
		h.call("GET", memberRoomPath(roomID, "/members?at=0"), alice, nil).expectError(t, 403, "M_FORBIDDEN")
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{At: "9999999"}))(t)), map[string]string{a: "join", b: "leave", c: "invite", d: "join"})
		// At bob's leave, dave had not joined, nor charlie been invited.
		at := strconv.FormatInt(leavePos, 10)
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{At: at}))(t)), map[string]string{a: "join", b: "leave"})
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{At: "s" + at + "_1_2"}))(t)), map[string]string{a: "join", b: "leave"})
		// Just before it, bob was still there.
		want(names(memberOK(alice.Members(ctx, rid, mautrix.ReqMembers{At: strconv.FormatInt(leavePos-1, 10)}))(t)), map[string]string{a: "join", b: "join"})
		// dave joined after bob left: with shared history he sees the room
		// at that point (spec: history visibility).
		want(names(memberOK(dave.Members(ctx, rid, mautrix.ReqMembers{At: at}))(t)), map[string]string{a: "join", b: "leave"})
		// bob, gone, may not look at the room after he left.
		h.call("GET", memberRoomPath(roomID, "/members?at=9999999"), bob, nil).expectError(t, 403, "M_FORBIDDEN")
		// A world-readable room shows its members to anyone.
		readable := h.createRoom(alice, map[string]any{"preset": "public_chat", "initial_state": []any{
			map[string]any{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}},
		}})
		want(names(memberOK(charlie.Members(ctx, id.RoomID(readable)))(t)), map[string]string{a: "join"})
		_, err = charlie.JoinedMembers(ctx, id.RoomID(readable))
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
	})
}

// TestMembershipAuthRulesByVersion runs the moderation rules through each
// family of room versions: v1 (the create event's creator field), v6
// (power levels as strings still allowed), v10 (integers only), v11, and
// v12 (privileged creators).
func TestMembershipAuthRulesByVersion(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, charlie := h.user("alice"), h.user("bob"), h.user("charlie")
		a, b := string(alice.UserID), string(bob.UserID)

		for _, version := range []string{"1", "6", "10", "11", "12"} {
			users := map[string]any{a: 100, b: 50}
			if version == "12" {
				users = map[string]any{b: 50} // creators are not listed
			}
			roomID := h.createRoom(alice, map[string]any{"preset": "public_chat", "room_version": version,
				"power_level_content_override": map[string]any{"users": users}})
			rid := id.RoomID(roomID)
			var create map[string]any
			h.call("GET", memberRoomPath(roomID, "/state/m.room.create/"), alice, nil).expect(t, 200).JSON(t, &create)
			if hasCreator := create["creator"] != nil; hasCreator != (version == "1" || version == "6" || version == "10") {
				t.Fatalf("v%s: create content %v", version, create)
			}
			memberOK(bob.JoinRoomByID(ctx, rid))(t)
			memberOK(charlie.JoinRoomByID(ctx, rid))(t)
			// bob (50) may kick and ban charlie (0), not alice (100 or creator).
			_, err := charlie.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: bob.UserID})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			_, err = bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: alice.UserID})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			_, err = bob.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: alice.UserID})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			memberOK(bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: charlie.UserID}))(t)
			memberOK(bob.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: charlie.UserID}))(t)
			_, err = charlie.JoinRoomByID(ctx, rid)
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			memberOK(bob.UnbanUser(ctx, rid, &mautrix.ReqUnbanUser{UserID: charlie.UserID}))(t)
			memberOK(charlie.JoinRoomByID(ctx, rid))(t)
			// Nobody may ban themselves.
			_, err = bob.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: bob.UserID})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
		}

		// Up to v9 the auth rules read power levels given as strings; from
		// v10 they must be integers (rooms v10: "power levels must be integers").
		stringLevels := map[string]any{"users": map[string]any{a: 100, b: "60"}, "kick": "60"}
		v6 := h.createRoom(alice, map[string]any{"preset": "public_chat", "room_version": "6", "power_level_content_override": stringLevels})
		memberOK(bob.JoinRoomByID(ctx, id.RoomID(v6)))(t)
		memberOK(charlie.JoinRoomByID(ctx, id.RoomID(v6)))(t)
		memberOK(bob.KickUser(ctx, id.RoomID(v6), &mautrix.ReqKickUser{UserID: charlie.UserID}))(t)
		r := h.call("POST", "/createRoom", alice, map[string]any{"preset": "public_chat", "room_version": "10", "power_level_content_override": stringLevels})
		if r.Status != 400 {
			t.Fatalf("v10 room with string power levels: %d %s", r.Status, r.Body)
		}
	})
}

// TestPrivilegedCreators checks room version 12's creators: the creator
// and additional_creators have unlimited power, so nobody can kick, ban or
// demote them, and they outrank any listed level.
func TestPrivilegedCreators(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, bob, mod, eve := h.user("alice"), h.user("bob"), h.user("mod"), h.user("eve")
		roomID := h.createRoom(alice, map[string]any{"preset": "public_chat", "room_version": "12",
			"creation_content":             map[string]any{"additional_creators": []string{string(bob.UserID)}},
			"power_level_content_override": map[string]any{"users": map[string]any{string(mod.UserID): 100}}})
		rid := id.RoomID(roomID)
		for _, c := range []*mautrix.Client{bob, mod, eve} {
			memberOK(c.JoinRoomByID(ctx, rid))(t)
		}
		// mod (100) cannot touch the creators.
		for _, creator := range []id.UserID{alice.UserID, bob.UserID} {
			_, err := mod.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: creator})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
			_, err = mod.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: creator})
			wantMembershipError(t, err, 403, "M_FORBIDDEN")
		}
		// Nor demote them: v12 power levels may not list creators.
		r := h.call("PUT", memberRoomPath(roomID, "/state/m.room.power_levels/"), mod, map[string]any{
			"users": map[string]any{string(mod.UserID): 100, string(alice.UserID): 0},
		})
		if r.Status != 403 && r.Status != 400 {
			t.Fatalf("demoting a creator: %d %s", r.Status, r.Body)
		}
		// Creators are equals: neither can kick the other.
		_, err := alice.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: bob.UserID})
		wantMembershipError(t, err, 403, "M_FORBIDDEN")
		// The additional creator outranks mod.
		memberOK(bob.KickUser(ctx, rid, &mautrix.ReqKickUser{UserID: mod.UserID}))(t)
		memberOK(bob.BanUser(ctx, rid, &mautrix.ReqBanUser{UserID: eve.UserID}))(t)
		// A creator who left can come back to a public room and is still one.
		memberOK(alice.LeaveRoom(ctx, rid))(t)
		memberOK(alice.JoinRoomByID(ctx, rid))(t)
		memberOK(alice.UnbanUser(ctx, rid, &mautrix.ReqUnbanUser{UserID: eve.UserID}))(t)
	})
}

// TestInviteBlockingEverywhere: a user who blocks invites (spec v1.18,
// Invite permission, "Server behaviour") is refused on createRoom's invite
// list and on a PUT of an invite member event, as on /invite, and /sync
// does not serve invites already in the database while the block holds.
func TestInviteBlockingEverywhere(t *testing.T) {
	forEachMembershipServer(t, func(t *testing.T, h mhs) {
		ctx := context.Background()
		alice, dave := h.user("alice"), h.user("dave")
		roomID := h.createRoom(alice, map[string]any{"preset": "private_chat"})
		// An invite from before the block.
		memberOK(alice.InviteUser(ctx, id.RoomID(roomID), &mautrix.ReqInviteUser{UserID: dave.UserID}))(t)
		if err := dave.SetAccountData(ctx, view.InvitePermissionType, map[string]any{"default_action": "block"}); err != nil {
			t.Fatal(err)
		}

		before := len(h.joinedRooms(alice))
		h.call("POST", "/createRoom", alice, map[string]any{"invite": []string{string(dave.UserID)}}).
			expectError(t, 403, "M_INVITE_BLOCKED")
		if after := len(h.joinedRooms(alice)); after != before {
			t.Fatalf("a refused createRoom made a room: %d rooms, had %d", after, before)
		}
		other := h.createRoom(alice, map[string]any{"preset": "private_chat"})
		h.call("PUT", memberRoomPath(other, "/state/m.room.member/"+url.PathEscape(string(dave.UserID))), alice,
			map[string]any{"membership": "invite"}).expectError(t, 403, "M_INVITE_BLOCKED")
		if m := h.membership(alice, other, dave.UserID); m != "" {
			t.Fatalf("blocked state invite left membership %q", m)
		}

		resp, err := dave.SyncRequest(ctx, 0, "", "", true, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Rooms.Invite) != 0 {
			t.Fatalf("sync served invites while blocked: %v", resp.Rooms.Invite)
		}
		// Lifting the block serves the invite again.
		if err := dave.SetAccountData(ctx, view.InvitePermissionType, map[string]any{}); err != nil {
			t.Fatal(err)
		}
		resp, err = dave.SyncRequest(ctx, 0, "", "", true, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := resp.Rooms.Invite[id.RoomID(roomID)]; !ok || len(resp.Rooms.Invite) != 1 {
			t.Fatalf("sync after lifting the block: invites %v", resp.Rooms.Invite)
		}
	})
}

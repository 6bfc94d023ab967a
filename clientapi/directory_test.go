package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// dirEnv is a whole test homeserver with the helpers the directory tests
// share.
type dirEnv struct {
	t      *testing.T
	srv    *hstest.Server
	hs     hsClient
	server string
}

func startDirEnv(t *testing.T, engine config.Engine) dirEnv {
	cfg := hstest.Config(t, engine)
	cfg.Registration.AllowGuests = true
	srv := hstest.Start(t, cfg)
	return dirEnv{t: t, srv: srv, hs: hsClient{t: t, url: srv.ClientURL}, server: srv.Config.ServerName}
}

func (e dirEnv) user(localpart string) *mautrix.Client {
	return testclient.Register(e.t, e.srv.ClientURL, localpart)
}

// admin registers a server admin with shared-secret registration (the
// HMAC computed here, as Synapse's register_new_matrix_user does).
func (e dirEnv) admin(localpart string) *mautrix.Client {
	t := e.t
	t.Helper()
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	e.hs.do("GET", "/_synapse/admin/v1/register", "", nil).expect(t, 200).JSON(t, &nonce)
	mac := hmac.New(sha1.New, []byte("test-secret"))
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00password\x00admin"))
	var reg struct {
		UserID      id.UserID `json:"user_id"`
		AccessToken string    `json:"access_token"`
	}
	e.hs.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce.Nonce, "username": localpart,
		"password": "password", "admin": true, "mac": hex.EncodeToString(mac.Sum(nil))}).expect(t, 200).JSON(t, &reg)
	cli, err := mautrix.NewClient(e.srv.ClientURL, reg.UserID, reg.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func (e dirEnv) guestToken() string {
	return testclient.RegisterGuest(e.t, e.srv.ClientURL).AccessToken
}

func (e dirEnv) createRoom(cli *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	e.t.Helper()
	resp, err := cli.CreateRoom(context.Background(), req)
	if err != nil {
		e.t.Fatalf("createRoom: %v", err)
	}
	return resp.RoomID
}

func (e dirEnv) join(cli *mautrix.Client, room id.RoomID) {
	e.t.Helper()
	if _, err := cli.JoinRoomByID(context.Background(), room); err != nil {
		e.t.Fatalf("%s joins %s: %v", cli.UserID, room, err)
	}
}

func (e dirEnv) alias(localpart string) string { return "#" + localpart + ":" + e.server }

func aliasPath(alias string) string { return "/directory/room/" + url.PathEscape(alias) }

// wantMatrixError fails unless err is the Matrix error code with status.
func wantMatrixError(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.RespError == nil {
		t.Fatalf("%s: %v, want %d %s", what, err, status, code)
	}
	if he.Response.StatusCode != status || he.RespError.ErrCode != code {
		t.Fatalf("%s: %d %s (%s), want %d %s", what, he.Response.StatusCode, he.RespError.ErrCode, he.RespError.Err, status, code)
	}
}

// TestRoomAliases covers PUT, GET and DELETE /directory/room/{roomAlias}
// and GET /rooms/{roomId}/aliases with mautrix, and their error paths with
// raw requests.
func TestRoomAliases(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			ctx := context.Background()
			alice, bob, admin := e.user("alice"), e.user("bob"), e.admin("boss")
			room := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			other := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})

			// Create and resolve.
			hq := e.alias("hq")
			if _, err := alice.CreateAlias(ctx, id.RoomAlias(hq), room); err != nil {
				t.Fatal(err)
			}
			res, err := alice.ResolveAlias(ctx, id.RoomAlias(hq))
			if err != nil {
				t.Fatal(err)
			}
			if res.RoomID != room || !slices.Equal(res.Servers, []string{e.server}) {
				t.Fatalf("resolve = %+v, want %s on [%s]", res, room, e.server)
			}
			// Resolving needs no access token (directory.yaml: no security).
			var anon struct {
				RoomID string `json:"room_id"`
			}
			e.hs.do("GET", aliasPath(hq), "", nil).expect(t, 200).JSON(t, &anon)
			if anon.RoomID != string(room) {
				t.Fatalf("anonymous resolve = %q", anon.RoomID)
			}

			// A taken alias: 409 M_UNKNOWN, as directory.yaml shows, for
			// the same room and for another.
			_, err = alice.CreateAlias(ctx, id.RoomAlias(hq), other)
			wantMatrixError(t, "taken alias", err, 409, "M_UNKNOWN")
			_, err = alice.CreateAlias(ctx, id.RoomAlias(hq), room)
			wantMatrixError(t, "taken alias, same room", err, 409, "M_UNKNOWN")
			if res, _ := alice.ResolveAlias(ctx, id.RoomAlias(hq)); res == nil || res.RoomID != room {
				t.Fatalf("a refused PUT moved the alias: %+v", res)
			}

			// Bad aliases and bodies.
			tok := alice.AccessToken
			for _, bad := range []string{"hq:" + e.server, "#hq", "#hq:bad server", "#hq:" + e.server + ":x:y", "#hq\x00:" + e.server,
				"#" + strings.Repeat("a", 255-len(":"+e.server)) + ":" + e.server, "#a b:" + e.server, "#x:elsewhere.example"} {
				e.hs.do("PUT", aliasPath(bad), tok, map[string]any{"room_id": room}).expectError(t, 400, "M_INVALID_PARAM")
			}
			for _, bad := range []string{"hq:" + e.server, "#hq", "#hq:bad server"} {
				e.hs.do("GET", aliasPath(bad), "", nil).expectError(t, 400, "M_INVALID_PARAM")
				e.hs.do("DELETE", aliasPath(bad), tok, nil).expectError(t, 400, "M_INVALID_PARAM")
			}
			// Exactly 255 bytes is allowed (the list above had 256).
			long := "#" + strings.Repeat("a", 255-1-len(":"+e.server)) + ":" + e.server
			e.hs.do("PUT", aliasPath(long), tok, map[string]any{"room_id": room}).expect(t, 200)
			fresh := e.alias("fresh")
			e.hs.do("PUT", aliasPath(fresh), tok, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
			e.hs.do("PUT", aliasPath(fresh), tok, map[string]any{"room_id": 7}).expectError(t, 400, "M_BAD_JSON")
			e.hs.do("PUT", aliasPath(fresh), tok, "{nope").expectError(t, 400, "M_NOT_JSON")
			e.hs.do("PUT", aliasPath(fresh), tok, map[string]any{"room_id": "not-a-room"}).expectError(t, 400, "M_INVALID_PARAM")
			// An unknown room: Synapse's 400 "Room does not exist" (the
			// spec names no error for it).
			e.hs.do("PUT", aliasPath(fresh), tok, map[string]any{"room_id": "!unknown:" + e.server}).expectError(t, 400, "M_UNKNOWN")
			e.hs.do("PUT", aliasPath(fresh), "", map[string]any{"room_id": room}).expectError(t, 401, "M_MISSING_TOKEN")
			e.hs.do("PUT", aliasPath(fresh), "nonsense", map[string]any{"room_id": room}).expectError(t, 401, "M_UNKNOWN_TOKEN")
			e.hs.do("PUT", aliasPath(fresh), e.guestToken(), map[string]any{"room_id": room}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
			// Only members make aliases (Synapse's require_membership_for_aliases),
			// server admins excepted.
			_, err = bob.CreateAlias(ctx, id.RoomAlias(fresh), room)
			wantMatrixError(t, "alias by a non-member", err, 403, "M_FORBIDDEN")
			if _, err := admin.CreateAlias(ctx, id.RoomAlias(e.alias("byadmin")), other); err != nil {
				t.Fatalf("admin outside the room: %v", err)
			}

			// Resolve errors.
			_, err = alice.ResolveAlias(ctx, id.RoomAlias(fresh))
			wantMatrixError(t, "unknown alias", err, 404, "M_NOT_FOUND")
			// Another server's alias is asked of it; one that cannot be
			// reached is 502, as in Synapse.
			_, err = alice.ResolveAlias(ctx, id.RoomAlias("#hq:elsewhere.example"))
			wantMatrixError(t, "alias of an unreachable server", err, 502, "M_UNKNOWN")

			// servers lists this server first, then the joined members'.
			e.join(bob, room)
			if res, err := alice.ResolveAlias(ctx, id.RoomAlias(hq)); err != nil || !slices.Equal(res.Servers, []string{e.server}) {
				t.Fatalf("resolve with two local members = %+v, %v", res, err)
			}

			// Listing a room's aliases: members, admins, world_readable rooms.
			list, err := alice.GetAliases(ctx, room)
			if err != nil {
				t.Fatal(err)
			}
			if want := []id.RoomAlias{id.RoomAlias(long), id.RoomAlias(hq)}; !slices.Equal(list.Aliases, want) {
				t.Fatalf("aliases = %v, want %v", list.Aliases, want)
			}
			if list, err := admin.GetAliases(ctx, other); err != nil || len(list.Aliases) != 1 || string(list.Aliases[0]) != e.alias("byadmin") {
				t.Fatalf("admin lists aliases = %+v, %v", list, err)
			}
			_, err = bob.GetAliases(ctx, other)
			wantMatrixError(t, "aliases of a room bob is not in", err, 403, "M_FORBIDDEN")
			_, err = bob.GetAliases(ctx, id.RoomID("!unknown:"+e.server))
			wantMatrixError(t, "aliases of an unknown room", err, 403, "M_FORBIDDEN")
			e.hs.do("GET", "/rooms/not-a-room/aliases", tok, nil).expectError(t, 400, "M_INVALID_PARAM")
			e.hs.do("GET", "/rooms/"+url.PathEscape(string(room))+"/aliases", "", nil).expectError(t, 401, "M_MISSING_TOKEN")
			e.hs.do("GET", "/rooms/"+url.PathEscape(string(room))+"/aliases", e.guestToken(), nil).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
			if _, err := alice.SendStateEvent(ctx, other, event.StateHistoryVisibility, "",
				map[string]any{"history_visibility": "world_readable"}); err != nil {
				t.Fatal(err)
			}
			if list, err := bob.GetAliases(ctx, other); err != nil || len(list.Aliases) != 1 {
				t.Fatalf("aliases of a world_readable room = %+v, %v", list, err)
			}
			// A room without aliases lists none, as an empty list.
			bare := e.createRoom(alice, &mautrix.ReqCreateRoom{})
			var raw map[string]any
			e.hs.do("GET", "/rooms/"+url.PathEscape(string(bare))+"/aliases", tok, nil).expect(t, 200).JSON(t, &raw)
			if l, ok := raw["aliases"].([]any); !ok || len(l) != 0 {
				t.Fatalf("aliases of a bare room = %v", raw)
			}

			// Deleting: the creator, a server admin, or a member with the
			// power to send m.room.canonical_alias (Synapse's rule).
			bobs := e.alias("bobs")
			if _, err := bob.CreateAlias(ctx, id.RoomAlias(bobs), room); err != nil {
				t.Fatalf("joined member without power creates an alias: %v", err)
			}
			_, err = bob.DeleteAlias(ctx, id.RoomAlias(hq))
			wantMatrixError(t, "bob deletes alice's alias", err, 403, "M_FORBIDDEN")
			if _, err := bob.DeleteAlias(ctx, id.RoomAlias(bobs)); err != nil {
				t.Fatalf("bob deletes his own alias: %v", err)
			}
			if _, err := bob.CreateAlias(ctx, id.RoomAlias(bobs), room); err != nil {
				t.Fatalf("a deleted alias is free again: %v", err)
			}
			if _, err := alice.DeleteAlias(ctx, id.RoomAlias(bobs)); err != nil {
				t.Fatalf("room admin deletes bob's alias: %v", err)
			}
			// Not in the room at all: 403 even with no power question.
			carol := e.user("carol")
			_, err = carol.DeleteAlias(ctx, id.RoomAlias(hq))
			wantMatrixError(t, "outsider deletes", err, 403, "M_FORBIDDEN")
			if _, err := admin.DeleteAlias(ctx, id.RoomAlias(long)); err != nil {
				t.Fatalf("server admin outside the room deletes: %v", err)
			}
			_, err = alice.DeleteAlias(ctx, id.RoomAlias(long))
			wantMatrixError(t, "delete a deleted alias", err, 404, "M_NOT_FOUND")
			_, err = alice.DeleteAlias(ctx, id.RoomAlias("#hq:elsewhere.example"))
			wantMatrixError(t, "delete an alias of another server", err, 404, "M_NOT_FOUND")
			e.hs.do("DELETE", aliasPath(hq), "", nil).expectError(t, 401, "M_MISSING_TOKEN")
			e.hs.do("DELETE", aliasPath(hq), e.guestToken(), nil).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
			_, err = alice.ResolveAlias(ctx, id.RoomAlias(long))
			wantMatrixError(t, "resolve a deleted alias", err, 404, "M_NOT_FOUND")
			// Bob, given the power to send m.room.canonical_alias, may
			// delete others' aliases.
			var pl map[string]any
			if err := alice.StateEvent(ctx, room, event.StatePowerLevels, "", &pl); err != nil {
				t.Fatal(err)
			}
			events, _ := pl["events"].(map[string]any)
			if events == nil {
				events = map[string]any{}
			}
			events["m.room.canonical_alias"] = 0
			pl["events"] = events
			if _, err := alice.SendStateEvent(ctx, room, event.StatePowerLevels, "", pl); err != nil {
				t.Fatal(err)
			}
			spare := e.alias("spare")
			if _, err := alice.CreateAlias(ctx, id.RoomAlias(spare), room); err != nil {
				t.Fatal(err)
			}
			if _, err := bob.DeleteAlias(ctx, id.RoomAlias(spare)); err != nil {
				t.Fatalf("bob with the canonical alias level deletes: %v", err)
			}
		})
	}
}

// TestDeleteAliasUpdatesCanonicalAlias: deleting an alias takes it out of
// m.room.canonical_alias, as Synapse does; when the user may not send that
// event the alias is deleted all the same (directory.yaml).
func TestDeleteAliasUpdatesCanonicalAlias(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			ctx := context.Background()
			alice, admin := e.user("alice"), e.admin("boss")
			room := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			main, alt, other := e.alias("main"), e.alias("alt"), e.alias("other")
			for _, a := range []string{main, alt, other} {
				if _, err := alice.CreateAlias(ctx, id.RoomAlias(a), room); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := alice.SendStateEvent(ctx, room, event.StateCanonicalAlias, "",
				map[string]any{"alias": main, "alt_aliases": []string{main, alt}}); err != nil {
				t.Fatal(err)
			}
			canonical := func() map[string]any {
				t.Helper()
				var c map[string]any
				if err := alice.StateEvent(ctx, room, event.StateCanonicalAlias, "", &c); err != nil {
					t.Fatal(err)
				}
				return c
			}
			if _, err := alice.DeleteAlias(ctx, id.RoomAlias(main)); err != nil {
				t.Fatal(err)
			}
			c := canonical()
			if _, has := c["alias"]; has || !slices.Equal(toStrings(c["alt_aliases"]), []string{alt}) {
				t.Fatalf("canonical alias after deleting %s = %v", main, c)
			}
			// An alias the event does not name leaves it alone.
			if _, err := alice.DeleteAlias(ctx, id.RoomAlias(other)); err != nil {
				t.Fatal(err)
			}
			if c := canonical(); !slices.Equal(toStrings(c["alt_aliases"]), []string{alt}) {
				t.Fatalf("canonical alias after deleting an unlisted alias = %v", c)
			}
			// The admin is not in the room, so cannot send the update: the
			// alias goes anyway and the event keeps naming it.
			if _, err := admin.DeleteAlias(ctx, id.RoomAlias(alt)); err != nil {
				t.Fatalf("admin delete: %v", err)
			}
			_, err := alice.ResolveAlias(ctx, id.RoomAlias(alt))
			wantMatrixError(t, "alias deleted by the admin", err, 404, "M_NOT_FOUND")
			if c := canonical(); !slices.Equal(toStrings(c["alt_aliases"]), []string{alt}) {
				t.Fatalf("canonical alias after a delete by a non-member = %v", c)
			}
		})
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestRoomDirectoryVisibility covers GET and PUT
// /directory/list/room/{roomId}.
func TestRoomDirectoryVisibility(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			ctx := context.Background()
			alice, bob, carol, admin := e.user("alice"), e.user("bob"), e.user("carol"), e.admin("boss")
			room := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			e.join(bob, room)
			path := "/directory/list/room/" + url.PathEscape(string(room))
			visibility := func() string {
				t.Helper()
				// No access token needed (list_public_rooms.yaml).
				var v struct {
					Visibility string `json:"visibility"`
				}
				e.hs.do("GET", path, "", nil).expect(t, 200).JSON(t, &v)
				return v.Visibility
			}
			if v := visibility(); v != "private" {
				t.Fatalf("new room visibility = %q", v)
			}
			e.hs.do("PUT", path, alice.AccessToken, map[string]any{"visibility": "public"}).expect(t, 200)
			if v := visibility(); v != "public" {
				t.Fatalf("after publishing: %q", v)
			}
			e.hs.do("PUT", path, alice.AccessToken, map[string]any{"visibility": "private"}).expect(t, 200)
			if v := visibility(); v != "private" {
				t.Fatalf("after unpublishing: %q", v)
			}
			// visibility defaults to public.
			e.hs.do("PUT", path, alice.AccessToken, map[string]any{}).expect(t, 200)
			if v := visibility(); v != "public" {
				t.Fatalf("after an empty PUT: %q", v)
			}
			// Synapse: a member without the canonical alias level, or a
			// non-member, may not; a server admin may.
			e.hs.do("PUT", path, bob.AccessToken, map[string]any{"visibility": "private"}).expectError(t, 403, "M_FORBIDDEN")
			e.hs.do("PUT", path, carol.AccessToken, map[string]any{"visibility": "private"}).expectError(t, 403, "M_FORBIDDEN")
			e.hs.do("PUT", path, e.guestToken(), map[string]any{"visibility": "private"}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
			if v := visibility(); v != "public" {
				t.Fatalf("refused PUTs changed the visibility: %q", v)
			}
			e.hs.do("PUT", path, admin.AccessToken, map[string]any{"visibility": "private"}).expect(t, 200)
			if v := visibility(); v != "private" {
				t.Fatalf("after the admin's PUT: %q", v)
			}
			// Errors.
			e.hs.do("PUT", path, alice.AccessToken, map[string]any{"visibility": "secret"}).expectError(t, 400, "M_INVALID_PARAM")
			e.hs.do("PUT", path, alice.AccessToken, map[string]any{"visibility": true}).expectError(t, 400, "M_BAD_JSON")
			e.hs.do("PUT", path, alice.AccessToken, "nope").expectError(t, 400, "M_NOT_JSON")
			e.hs.do("PUT", path, "", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
			unknown := "/directory/list/room/" + url.PathEscape("!unknown:"+e.server)
			e.hs.do("GET", unknown, "", nil).expectError(t, 404, "M_NOT_FOUND")
			e.hs.do("PUT", unknown, alice.AccessToken, map[string]any{}).expectError(t, 404, "M_NOT_FOUND")
			e.hs.do("GET", "/directory/list/room/nope", "", nil).expectError(t, 400, "M_INVALID_PARAM")
			e.hs.do("PUT", "/directory/list/room/nope", alice.AccessToken, map[string]any{}).expectError(t, 400, "M_INVALID_PARAM")

			// createRoom's visibility lands in the same directory.
			published := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public"})
			var v struct {
				Visibility string `json:"visibility"`
			}
			e.hs.do("GET", "/directory/list/room/"+url.PathEscape(string(published)), "", nil).expect(t, 200).JSON(t, &v)
			if v.Visibility != "public" {
				t.Fatalf("room created with visibility public: %q", v.Visibility)
			}
			_ = ctx
		})
	}
}

package clientapi_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

func presencePath(userID string) string {
	return "/presence/" + url.PathEscape(userID) + "/status"
}

// presenceBody is GET /presence/{userId}/status (spec: presence.yaml).
type presenceBody struct {
	Presence        string  `json:"presence"`
	LastActiveAgo   *int64  `json:"last_active_ago"`
	StatusMsg       *string `json:"status_msg"`
	CurrentlyActive *bool   `json:"currently_active"`
}

// shareRoom makes a room of a's that b joins.
func shareRoom(t *testing.T, a, b *testUser) {
	t.Helper()
	ctx := context.Background()
	resp, err := a.Client.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.JoinRoomByID(ctx, resp.RoomID); err != nil {
		t.Fatal(err)
	}
}

func TestPresenceStatus(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		bob := s.newUser(t, "bob")
		carol := s.newUser(t, "carol")
		shareRoom(t, alice, bob)

		// Nobody set anything yet: offline, with nothing else.
		var got presenceBody
		s.call(t, "GET", presencePath(alice.UserID), alice.Token, nil).expect(t, 200).JSON(t, &got)
		if got.Presence != "offline" || got.LastActiveAgo != nil || got.StatusMsg != nil || got.CurrentlyActive != nil {
			t.Fatalf("default presence %+v", got)
		}

		s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"online","status_msg":"Making cupcakes"}`).expect(t, 200)
		for _, viewer := range []*testUser{alice, bob} {
			got = presenceBody{}
			s.call(t, "GET", presencePath(alice.UserID), viewer.Token, nil).expect(t, 200).JSON(t, &got)
			if got.Presence != "online" || got.StatusMsg == nil || *got.StatusMsg != "Making cupcakes" ||
				got.LastActiveAgo == nil || *got.LastActiveAgo < 0 || got.CurrentlyActive == nil || !*got.CurrentlyActive {
				t.Fatalf("%s reads %+v", viewer.Localpart, got)
			}
		}
		// carol shares no room with alice (Synapse's is_visible).
		s.call(t, "GET", presencePath(alice.UserID), carol.Token, nil).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "GET", presencePath(carol.UserID), alice.Token, nil).expectError(t, 403, "M_FORBIDDEN")
		// Unknown local user; a remote one alice shares nothing with.
		s.call(t, "GET", presencePath("@nobody:test.local"), alice.Token, nil).expectError(t, 404, "M_NOT_FOUND")
		s.call(t, "GET", presencePath("@someone:elsewhere.example"), alice.Token, nil).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "GET", presencePath("not-a-user"), alice.Token, nil).expectError(t, 400, "M_INVALID_PARAM")

		// No status_msg clears it; unavailable has no currently_active.
		s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"unavailable"}`).expect(t, 200)
		got = presenceBody{}
		s.call(t, "GET", presencePath(alice.UserID), bob.Token, nil).expect(t, 200).JSON(t, &got)
		if got.Presence != "unavailable" || got.StatusMsg != nil || got.CurrentlyActive != nil || got.LastActiveAgo == nil {
			t.Fatalf("after unavailable: %+v", got)
		}

		// mautrix's own calls agree.
		ctx := context.Background()
		if err := bob.Client.SetPresence(ctx, mautrix.ReqPresence{Presence: "online", StatusMsg: "hi"}); err != nil {
			t.Fatal(err)
		}
		p, err := alice.Client.GetPresence(ctx, bob.Client.UserID)
		if err != nil || p.Presence != "online" || p.StatusMsg != "hi" {
			t.Fatalf("mautrix GetPresence %+v, %v", p, err)
		}
	})
}

func TestPresenceStatusErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		bob := s.newUser(t, "bob")
		own := presencePath(alice.UserID)
		// Only oneself, checked before the body.
		s.call(t, "PUT", presencePath(bob.UserID), alice.Token, `{"presence":"online"}`).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "PUT", presencePath(bob.UserID), alice.Token, `nonsense`).expectError(t, 403, "M_FORBIDDEN")
		for _, c := range []struct {
			body, code string
		}{
			{`{"presence":"busy"}`, "M_INVALID_PARAM"},
			{`{"presence":"ONLINE"}`, "M_INVALID_PARAM"},
			{`{"presence":3}`, "M_BAD_JSON"},
			{`{"status_msg":"hi"}`, "M_MISSING_PARAM"},
			{`{"presence":"online","status_msg":5}`, "M_BAD_JSON"},
			{`{"presence":"online","status_msg":null}`, "M_BAD_JSON"},
			{`{"presence":"online","last_active_ago":5}`, "M_BAD_JSON"}, // Synapse refuses other keys
			{`["online"]`, "M_BAD_JSON"},
			{`{"presence":`, "M_NOT_JSON"},
		} {
			r := s.call(t, "PUT", own, alice.Token, c.body)
			t.Run(c.body, func(t *testing.T) { r.expectError(t, 400, c.code) })
		}
		// None of them stored anything.
		var got presenceBody
		s.call(t, "GET", own, alice.Token, nil).expect(t, 200).JSON(t, &got)
		if got.Presence != "offline" {
			t.Fatalf("after refused bodies: %+v", got)
		}
		s.call(t, "GET", own, "", nil).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "PUT", own, "", `{"presence":"online"}`).expectError(t, 401, "M_MISSING_TOKEN")
		// Guests may use presence (spec: Guest access).
		guest := s.newGuest(t, "guest")
		s.call(t, "PUT", presencePath(guest.UserID), guest.Token, `{"presence":"online"}`).expect(t, 200)
	})
}

// TestPresenceDisabled: with presence off, GET answers offline for
// anyone and PUT accepts and drops, as Synapse does.
func TestPresenceDisabled(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := config.Local()
			cfg.ServerName = testServerName
			cfg.Auth.BcryptCost = 4
			cfg.RateLimits.Enabled = false
			cfg.Presence.Enabled = false
			db, err := sql.Open(context.Background(), sqltest.URL(t, e), 10)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			log := slog.New(slog.DiscardHandler)
			users, err := userapi.New(db, cfg.ServerName, cfg.Auth, nil, log)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { users.Close() })
			router := mxhttp.NewRouter()
			clientapi.New(cfg, users, db, startRooms(t, db, cfg.ServerName, log), log).Routes(router)
			srv := httptest.NewServer(mxhttp.Stack{Log: log, MaxBodyBytes: cfg.Client.MaxBodyBytes}.Wrap(router))
			t.Cleanup(srv.Close)
			s := &testServer{URL: srv.URL, Config: cfg, DB: db, Users: users}

			alice := s.newUser(t, "alice")
			s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"online","status_msg":"x"}`).expect(t, 200)
			for _, who := range []string{alice.UserID, "@nobody:test.local"} {
				r := s.call(t, "GET", presencePath(who), alice.Token, nil).expect(t, 200)
				if string(r.Body) != `{"presence":"offline"}` {
					t.Fatalf("GET %s with presence off: %s", who, r.Body)
				}
			}
			if _, err := db.PresenceOf(context.Background(), alice.UserID); err != sql.ErrNotFound {
				t.Fatalf("presence stored with presence off: %v", err)
			}
			// Still only for oneself, and still checked.
			s.call(t, "PUT", presencePath("@bob:test.local"), alice.Token, `{"presence":"online"}`).expectError(t, 403, "M_FORBIDDEN")
			s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"away"}`).expectError(t, 400, "M_INVALID_PARAM")
		})
	}
}

// TestPresenceActivity: sending an event or starting to type is activity
// (spec: Presence, "Last active ago"): an unavailable user turns online
// and currently active.
func TestPresenceActivity(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice := s.newUser(t, "alice")
		room, err := alice.Client.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatal(err)
		}
		read := func() presenceBody {
			var got presenceBody
			s.call(t, "GET", presencePath(alice.UserID), alice.Token, nil).expect(t, 200).JSON(t, &got)
			return got
		}
		// Online first: a user who never synced nor acted is offline.
		s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"online"}`).expect(t, 200)
		s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"unavailable"}`).expect(t, 200)
		if got := read(); got.Presence != "unavailable" {
			t.Fatalf("after PUT unavailable: %+v", got)
		}
		if _, err := alice.Client.SendText(ctx, room.RoomID, "back"); err != nil {
			t.Fatal(err)
		}
		if got := read(); got.Presence != "online" || got.CurrentlyActive == nil || !*got.CurrentlyActive {
			t.Fatalf("after sending a message: %+v", got)
		}

		s.call(t, "PUT", presencePath(alice.UserID), alice.Token, `{"presence":"unavailable"}`).expect(t, 200)
		if _, err := alice.Client.UserTyping(ctx, room.RoomID, true, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := read(); got.Presence != "online" {
			t.Fatalf("after starting to type: %+v", got)
		}
	})
}

package clientapi_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/weft-chat/weft/clientapi"
)

// typingNow is who the database lists as typing in room for u (joined),
// at the latest typing position, and that position.
func typingNow(t *testing.T, s *testServer, u *testUser, roomID string) ([]string, int64) {
	t.Helper()
	ctx := context.Background()
	pos, err := s.DB.SyncPositions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nid, err := s.DB.JoinedRoomNID(ctx, roomID, u.UserID)
	if err != nil {
		t.Fatal(err)
	}
	lists, err := s.DB.SyncTyping(ctx, u.UserID, 0, pos.Typing, time.Now().UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	return lists[nid], pos.Typing
}

func TestTypingErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob, eve := s.newUser(t, "alice"), s.newUser(t, "bob"), s.newUser(t, "eve")
		guest := s.newGuest(t, "guest")
		room := ephemeralRoom(t, alice, nil, bob)
		path := func(roomID, userID string) string {
			return "/rooms/" + pathEsc(roomID) + "/typing/" + pathEsc(userID)
		}
		for _, c := range []struct {
			name, token, path string
			body              any
			status            int
			code              string
		}{
			{"no token", "", path(room, bob.UserID), `{"typing": true}`, 401, "M_MISSING_TOKEN"},
			{"another user", bob.Token, path(room, alice.UserID), `{"typing": true}`, 403, "M_FORBIDDEN"},
			{"not joined", eve.Token, path(room, eve.UserID), `{"typing": true}`, 403, "M_FORBIDDEN"},
			{"unknown room", bob.Token, path("!nope:test.local", bob.UserID), `{"typing": true}`, 403, "M_FORBIDDEN"},
			{"guest", guest.Token, path(room, guest.UserID), `{"typing": true}`, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"not a room id", bob.Token, path("nope", bob.UserID), `{"typing": true}`, 400, "M_INVALID_PARAM"},
			{"not json", bob.Token, path(room, bob.UserID), `{`, 400, "M_NOT_JSON"},
			{"no body", bob.Token, path(room, bob.UserID), nil, 400, "M_NOT_JSON"},
			{"typing missing", bob.Token, path(room, bob.UserID), `{"timeout": 1000}`, 400, "M_MISSING_PARAM"},
			{"typing not a bool", bob.Token, path(room, bob.UserID), `{"typing": "yes"}`, 400, "M_BAD_JSON"},
			{"timeout not a number", bob.Token, path(room, bob.UserID), `{"typing": true, "timeout": "1"}`, 400, "M_BAD_JSON"},
			{"negative timeout", bob.Token, path(room, bob.UserID), `{"typing": true, "timeout": -1}`, 400, "M_INVALID_PARAM"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, "PUT", c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
		if users, pos := typingNow(t, s, alice, room); len(users) != 0 || pos != 0 {
			t.Fatalf("failed requests left typing %v at %d", users, pos)
		}
	})
}

// TestTypingExpires: a timeout ends the typing on this process's timer,
// as a change the room's members get (a new position, nobody typing).
func TestTypingExpires(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		room := ephemeralRoom(t, alice, nil, bob)
		path := "/rooms/" + pathEsc(room) + "/typing/" + pathEsc(bob.UserID)
		s.call(t, "PUT", path, bob.Token, `{"typing": true, "timeout": 30000}`).expect(t, 200)
		users, p1 := typingNow(t, s, alice, room)
		if !slices.Equal(users, []string{bob.UserID}) {
			t.Fatalf("typing = %v", users)
		}
		// A renewal with a short timeout: no change now, an expiry soon.
		s.call(t, "PUT", path, bob.Token, `{"typing": true, "timeout": 300}`).expect(t, 200)
		if _, p := typingNow(t, s, alice, room); p != p1 {
			t.Fatalf("a renewal moved the typing stream from %d to %d", p1, p)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			users, p := typingNow(t, s, alice, room)
			if p > p1 {
				if len(users) != 0 {
					t.Fatalf("after the expiry: %v", users)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the typing did not expire")
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Stopping when not typing changes nothing.
		_, p2 := typingNow(t, s, alice, room)
		s.call(t, "PUT", path, bob.Token, `{"typing": false}`).expect(t, 200)
		if _, p := typingNow(t, s, alice, room); p != p2 {
			t.Fatalf("a stop of nobody moved the typing stream from %d to %d", p2, p)
		}
	})
}

// TestTypingSweep: typing left by a process that stopped (no timer of its
// own will fire) is expired by another process's sweep at start-up.
func TestTypingSweep(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		ctx := context.Background()
		alice, bob := s.newUser(t, "alice"), s.newUser(t, "bob")
		room := ephemeralRoom(t, alice, nil, bob)
		nid, err := s.DB.JoinedRoomNID(ctx, room, bob.UserID)
		if err != nil {
			t.Fatal(err)
		}
		// Written straight to the database: no process holds a timer.
		now := time.Now().UnixMilli()
		if _, err := s.DB.SetTyping(ctx, nid, bob.UserID, now-2000, now-1000); err != nil {
			t.Fatal(err)
		}
		_, p1 := typingNow(t, s, alice, room)
		other := clientapi.New(s.Config, s.Users, s.DB, nil, slog.New(slog.DiscardHandler))
		stop := other.StartTypingExpiry()
		defer stop()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, p := typingNow(t, s, alice, room); p > p1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the sweep did not expire the typing")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if rows, err := s.DB.ExpiredTyping(ctx, time.Now().UnixMilli()); err != nil || len(rows) != 0 {
			t.Fatalf("rows left after the sweep: %v %v", rows, err)
		}
	})
}

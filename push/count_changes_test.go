package push_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestCounterNotesCountChanges checks that every change of a user's counts
// takes a position of the notifications stream (what tells their next
// /sync to send the counts again), and that nothing else does.
func TestCounterNotesCountChanges(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			h := startCountsHS(t, e)
			ctx := context.Background()
			alice, bob := testclient.Register(t, h.srv.ClientURL, "alice"), testclient.Register(t, h.srv.ClientURL, "bob")
			carol := testclient.Register(t, h.srv.ClientURL, "carol")
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
			if err != nil {
				t.Fatal(err)
			}
			room := created.RoomID
			if _, err := bob.JoinRoomByID(ctx, room); err != nil {
				t.Fatal(err)
			}
			h.text(alice, room, "settle", nil)
			var last int64
			// step runs f and returns whose counts changed meanwhile.
			step := func(f func()) (users []string) {
				t.Helper()
				pos, err := h.db.SyncPositions(ctx)
				if err != nil {
					t.Fatal(err)
				}
				last = pos.Notifications
				f()
				for _, c := range []*mautrix.Client{alice, bob, carol} {
					// The changes since last, as a sync's head reads them.
					heads, err := h.db.SyncHeads(ctx, []sql.SyncHeadRequest{{UserID: c.UserID.String(), CountsSince: last, WantCountChanges: true}})
					if err != nil {
						t.Fatal(err)
					}
					if slices.Contains(heads[0].CountChanges, room.String()) {
						users = append(users, c.UserID.String())
					}
				}
				return users
			}
			a, b := alice.UserID.String(), bob.UserID.String()
			var msg id.EventID
			if got := step(func() { msg = h.text(alice, room, "hello", nil) }); !slices.Equal(got, []string{b}) {
				t.Errorf("a message notifying bob changed the counts of %v", got)
			}
			if got := step(func() { h.text(alice, room, "more", nil) }); !slices.Equal(got, []string{b}) {
				t.Errorf("alice's second message changed the counts of %v (she had nothing unread)", got)
			}
			if got := step(func() {
				red, err := alice.RedactEvent(ctx, room, msg)
				if err != nil {
					t.Fatal(err)
				}
				h.counted(room, red.EventID)
			}); !slices.Equal(got, []string{b}) {
				t.Errorf("the redaction changed the counts of %v", got)
			}
			h.expect("after redaction", bob, room, want{2, 0}, want{2, 0}, nil)
			if got := step(func() { h.text(bob, room, "read", nil) }); !slices.Equal(got, []string{a, b}) {
				t.Errorf("bob's message changed the counts of %v, want alice's (notified) and bob's (read)", got)
			}
			h.expect("bob read", bob, room, want{0, 0}, want{0, 0}, nil)
			// A notice notifies nobody, and bob has nothing left to read.
			if got := step(func() {
				h.send(bob, room, event.EventMessage, map[string]any{"msgtype": "m.notice", "body": "bot", "m.mentions": map[string]any{}})
			}); len(got) != 0 {
				t.Errorf("bob's notice changed the counts of %v", got)
			}
			// The invite notifies carol; her join reads it, which the
			// counts /sync serves show from the join's commit on, so the
			// counter has nothing to send again.
			memberCounted := func() {
				ev, err := h.db.CurrentStateEvent(ctx, room.String(), sql.StateKey{Type: "m.room.member", StateKey: carol.UserID.String()})
				if err != nil {
					t.Fatal(err)
				}
				h.counted(room, id.EventID(ev.EventID))
			}
			if got := step(func() {
				if _, err := alice.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: carol.UserID}); err != nil {
					t.Fatal(err)
				}
				memberCounted()
			}); !slices.Equal(got, []string{a, carol.UserID.String()}) {
				// Alice's invite is her event too: it reads bob's "read".
				t.Errorf("the invite changed the counts of %v, want alice's and carol's", got)
			}
			h.expect("invited", carol, room, want{1, 0}, want{1, 0}, nil)
			if got := step(func() {
				if _, err := carol.JoinRoomByID(ctx, room); err != nil {
					t.Fatal(err)
				}
				memberCounted()
			}); len(got) != 0 {
				t.Errorf("carol's join changed the counts of %v", got)
			}
			h.expect("joined", carol, room, want{0, 0}, want{0, 0}, nil)
		})
	}
}

package presence

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// sentPresence records what a Service hands to federation.
type sentPresence struct{ updates []Update }

func (s *sentPresence) SendPresence(_ context.Context, u []Update) {
	s.updates = append(s.updates, u...)
}

// TestRemotePresence: a remote user's reported presence is stored as
// reported and then follows the rules their own server applies (idle
// after five minutes without activity); without a new report they go
// offline FederationTimeout after the last one, as in Synapse. Every
// change is handed to federation, which keeps only local users'.
func TestRemotePresence(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		clk := &clock{now: time.UnixMilli(1_700_000_000_000)}
		fed := &sentPresence{}
		s := New(db, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), WithClock(clk.Now), WithFederation(fed))
		const bob, carol = "@bob:remote.example", "@carol:remote.example"
		if err := s.ApplyRemote(ctx, []RemoteUpdate{
			{UserID: bob, State: Online, StatusMsg: "here"},
			{UserID: carol, State: Unavailable, LastActiveAgo: 10 * time.Minute},
		}); err != nil {
			t.Fatal(err)
		}
		state := func(user string) Content {
			t.Helper()
			c, err := s.Get(ctx, user)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		if c := state(bob); c.Presence != Online || c.StatusMsg != "here" || c.CurrentlyActive == nil || !*c.CurrentlyActive || *c.LastActiveAgo != 0 {
			t.Fatalf("bob %+v", c)
		}
		if c := state(carol); c.Presence != Unavailable || *c.LastActiveAgo != (10*time.Minute).Milliseconds() {
			t.Fatalf("carol %+v", c)
		}
		if len(fed.updates) != 2 {
			t.Fatalf("handed to federation: %+v", fed.updates)
		}

		// Bob's server says nothing more: idle after five minutes...
		clk.advance(IdleTimeout + time.Second)
		if _, err := s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if c := state(bob); c.Presence != Unavailable {
			t.Fatalf("bob after the idle timeout %+v", c)
		}
		// ...still there until the federation timeout, then offline.
		clk.set(time.UnixMilli(1_700_000_000_000).Add(FederationTimeout - time.Second))
		if _, err := s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if c := state(bob); c.Presence != Unavailable {
			t.Fatalf("bob before the federation timeout %+v", c)
		}
		// A new report restarts the federation timeout.
		if err := s.ApplyRemote(ctx, []RemoteUpdate{{UserID: carol, State: Unavailable, LastActiveAgo: time.Minute}}); err != nil {
			t.Fatal(err)
		}
		clk.advance(2 * time.Second)
		if _, err := s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if c := state(bob); c.Presence != Offline {
			t.Fatalf("bob after the federation timeout %+v", c)
		}
		if c := state(carol); c.Presence != Unavailable {
			t.Fatalf("carol, reported again %+v", c)
		}
		// Offline as reported: no timer left.
		if err := s.ApplyRemote(ctx, []RemoteUpdate{{UserID: carol, State: Offline}}); err != nil {
			t.Fatal(err)
		}
		p, err := db.PresenceOf(ctx, carol)
		if err != nil || p.State != Offline || p.TimerTS != 0 {
			t.Fatalf("carol offline %+v %v", p, err)
		}
	})
}

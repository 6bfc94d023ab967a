package federation

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// queuedFor takes what waits in the queue for dest (the queue is not
// started, so nothing is sent): the event ids of its PDUs, in order.
func queuedFor(t *testing.T, db *sql.DB, dest spec.ServerName) []string {
	t.Helper()
	ctx := context.Background()
	txnID, items, err := db.FederationBatch(ctx, string(dest), newTxnID(), MaxTransactionPDUs, MaxTransactionEDUs)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) == 0 {
		return nil
	}
	if _, err := db.DeleteFederationBatch(ctx, string(dest), txnID); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range items {
		out = append(out, it.EventID)
	}
	return out
}

// TestSenderDestinations: an event of a local user is queued for every
// other server with a user joined in the state before it, and for the
// server of a membership event's target; a server the room's ACL denies
// gets nothing.
func TestSenderDestinations(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		fed := newFedEnv(t, db)
		key, _ := serverkey.Generate()
		q, err := NewQueue(QueueConfig{DB: db, Client: testClient(t, key), Key: key, Origin: ours, PDUs: StoredPDUs(db)})
		if err != nil {
			t.Fatal(err)
		}
		s := NewSender(db, q, ours, nil)
		const (
			carol = "@carol:other.example"
			dave  = "@dave:third.example"
		)
		// expect checks the servers the event goes to.
		expect := func(name, eventID string, dests ...spec.ServerName) {
			t.Helper()
			ev, err := db.EventByID(ctx, eventID)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.destinations(ctx, ev)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			slices.Sort(dests)
			if !slices.Equal(got, dests) {
				t.Errorf("%s: sent to %v, want %v", name, got, dests)
			}
		}
		roomID, created := fed.createRoom("10", "shared")
		for _, id := range created {
			expect("creation", id)
		}
		fed.member(roomID, fedBob, fedBob, "join")
		fed.member(roomID, carol, carol, "join")
		expect("message", fed.message(roomID, fedAlice, "hello"), fedRemote, "other.example")
		// Servers that join after an event do not get it; a server with a
		// user joined before does, even when the user looked at first (the
		// newest membership) has left.
		fed.member(roomID, "@b:fifth.example", "@b:fifth.example", "join")
		fed.member(roomID, "@a:fifth.example", "@a:fifth.example", "join")
		fed.member(roomID, "@a:fifth.example", "@a:fifth.example", "leave")
		early := fed.message(roomID, fedAlice, "before the joins")
		fed.member(roomID, "@erin:fourth.example", "@erin:fourth.example", "join")
		expect("message before a later join", early, fedRemote, "other.example", "fifth.example")
		fed.member(roomID, "@erin:fourth.example", "@erin:fourth.example", "leave")
		fed.member(roomID, "@b:fifth.example", "@b:fifth.example", "leave")
		// A server whose last user is kicked gets the kick, and the events
		// before it.
		late := fed.message(roomID, fedAlice, "before the kick")
		kick := fed.member(roomID, fedAlice, carol, "leave")
		expect("message before a kick", late, fedRemote, "other.example")
		expect("kick of the last user of a server", kick, fedRemote, "other.example")
		expect("message after the kick", fed.message(roomID, fedAlice, "after the kick"), fedRemote)
		expect("invite of a user of a server not in the room", fed.member(roomID, fedAlice, "@frank:fourth.example", "invite"), fedRemote)
		expect("ban of a user of a server not in the room", fed.member(roomID, fedAlice, dave, "ban"), fedRemote, "third.example")
		fed.member(roomID, carol, carol, "join")
		expect("ACL denying remote.example", fed.state(roomID, fedAlice, "m.room.server_acl", "",
			map[string]any{"allow": []string{"*"}, "deny": []string{string(fedRemote)}}), "other.example")
		expect("message after the ACL", fed.message(roomID, fedAlice, "not for remote"), "other.example")
		expect("ban of a user of a denied server", fed.member(roomID, fedAlice, fedBob, "ban"), "other.example")

		// Room version 12 senders are user ids too.
		v12, _ := fed.createRoom("12", "shared")
		fed.member(v12, fedBob, fedBob, "join")
		expect("v12 message", fed.message(v12, fedAlice, "hello"), fedRemote)
	})
}

// TestSenderCatchUp: the sender queues from the database, after the
// position it recorded: local events whose room.output message never
// came (the test's roomserver publishes nothing) are queued in order;
// other servers' events are not queued, nothing is queued twice, and a
// second process that lost the race for the position queues nothing.
func TestSenderCatchUp(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		fed := newFedEnv(t, db)
		key, _ := serverkey.Generate()
		q, err := NewQueue(QueueConfig{DB: db, Client: testClient(t, key), Key: key, Origin: ours, PDUs: StoredPDUs(db)})
		if err != nil {
			t.Fatal(err)
		}
		s := NewSender(db, q, ours, nil)
		catchUp := func(s *Sender) {
			t.Helper()
			if err := s.CatchUp(ctx); err != nil {
				t.Fatal(err)
			}
		}
		expect := func(name string, want ...string) {
			t.Helper()
			if got := queuedFor(t, db, fedRemote); !slices.Equal(got, want) {
				t.Errorf("%s: queued %v, want %v", name, got, want)
			}
		}
		roomID, _ := fed.createRoom("10", "shared")
		fed.member(roomID, fedBob, fedBob, "join")
		catchUp(s)
		expect("remote join")

		one := fed.message(roomID, fedAlice, "one")
		fed.message(roomID, fedBob, "from remote")
		two := fed.message(roomID, fedAlice, "two")
		catchUp(s)
		expect("local messages around a remote one", one, two)
		catchUp(s)
		expect("caught up again")

		// Another process read the position before this one moved it.
		other := NewSender(db, q, ours, nil)
		catchUp(other)
		three := fed.message(roomID, fedAlice, "three")
		catchUp(s)
		expect("three", three)
		catchUp(other)
		expect("after the other process caught up")
		stored, err := db.EventByID(ctx, three)
		if err != nil {
			t.Fatal(err)
		}
		if pos, err := db.ConsumerPosition(ctx, SenderConsumer); err != nil || pos != stored.StreamPos {
			t.Errorf("position %d, %v; want the third message's, %d", pos, err, stored.StreamPos)
		}

		// Events that go nowhere (a room of local users) move the stored
		// position only senderLag positions at a time; a new process
		// reads them again and queues nothing.
		local, _ := fed.createRoom("10", "local")
		var last int64
		for i := range 3 {
			ev, err := db.EventByID(ctx, fed.message(local, fedAlice, fmt.Sprint("local ", i)))
			if err != nil {
				t.Fatal(err)
			}
			last = ev.StreamPos
		}
		catchUp(s)
		if pos, err := db.ConsumerPosition(ctx, SenderConsumer); err != nil || pos != stored.StreamPos {
			t.Errorf("after events that go nowhere: stored position %d, %v; want %d", pos, err, stored.StreamPos)
		}
		if s.pos.Load() != last {
			t.Errorf("after events that go nowhere: position %d, want %d", s.pos.Load(), last)
		}
		catchUp(NewSender(db, q, ours, nil))
		expect("events that go nowhere, read again")
		four := fed.message(roomID, fedAlice, "four")
		catchUp(s)
		expect("four, past the events that went nowhere", four)
		stored, err = db.EventByID(ctx, four)
		if err != nil {
			t.Fatal(err)
		}
		if pos, err := db.ConsumerPosition(ctx, SenderConsumer); err != nil || pos != stored.StreamPos {
			t.Errorf("position %d, %v; want the fourth message's, %d", pos, err, stored.StreamPos)
		}

		// A backlog longer than a batch comes whole, in order.
		var backlog []string
		for i := range senderBatch + 5 {
			backlog = append(backlog, fed.message(roomID, fedAlice, fmt.Sprint("backlog ", i)))
		}
		catchUp(NewSender(db, q, ours, nil))
		var got []string
		for {
			batch := queuedFor(t, db, fedRemote)
			if batch == nil {
				break
			}
			got = append(got, batch...)
		}
		if !slices.Equal(got, backlog) {
			t.Errorf("backlog: queued %d events, want %d in order", len(got), len(backlog))
		}
	})
}

// TestSenderDelivers: through room.output and the queue, real HTTPS
// destinations get a local user's events as stored and signed, in
// order; events committed while no sender runs, whose room.output
// messages are lost with the NATS store, are sent when one starts again,
// and none twice (the sender's position in the database).
func TestSenderDelivers(t *testing.T) {
	ctx := context.Background()
	db := sqltest.Open(t, config.SQLite)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	natsDir := t.TempDir()
	openBus := func() *bus.Bus {
		b, err := bus.Open(ctx, bus.Config{StoreDir: natsDir}, log)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	key, _ := serverkey.Generate()
	fed := newFedEnv(t, db)
	dest1, dest2 := newFakeDest(t), newFakeDest(t)
	q, _ := newTestQueue(t, db, func(c *QueueConfig) { c.PDUs = StoredPDUs(db) })
	// start runs a roomserver and a sender on b, as a process would.
	start := func(b *bus.Bus) func() {
		fed.rs = roomserver.New(db, b, string(ours), key, log)
		stop, err := NewSender(db, q, ours, log).Serve(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		return stop
	}

	b := openBus()
	stop := start(b)
	roomID, _ := fed.createRoom("10", "shared")
	for _, d := range []spec.ServerName{dest1.name, dest2.name} {
		user := "@u:" + string(d)
		fed.member(roomID, user, user, "join")
	}
	var sent []string
	for _, body := range []string{"one", "two", "three"} {
		sent = append(sent, fed.message(roomID, fedAlice, body))
	}
	waitPDUs(t, dest1, sent)

	// A restart on an empty NATS store (a lost JetStream volume), with
	// two events committed while no sender ran and published nowhere:
	// the database alone has them.
	stop()
	b.Close()
	natsDir = t.TempDir()
	b = openBus()
	t.Cleanup(func() { b.Close() })
	fed.rs = roomserver.New(db, nil, string(ours), key, log)
	for _, body := range []string{"four", "five"} {
		sent = append(sent, fed.message(roomID, fedAlice, body))
	}
	time.Sleep(100 * time.Millisecond)
	if got := pdusOf(t, dest1); len(got) != 3 {
		t.Fatalf("%d PDUs sent while no sender ran", len(got))
	}
	defer start(b)()
	for _, d := range []*fakeDest{dest1, dest2} {
		waitPDUs(t, d, sent)
	}
	// Sent as stored: the PDU is the event this server signed.
	raw := dest2.all()[0].pdus[0]
	ev, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventFromUntrustedJSON([]byte(raw))
	if err != nil || ev.EventID() != sent[0] || ev.Redacted() {
		t.Fatalf("PDU %s: %v", raw, err)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, fed.verifier(key), userIDForSender); err != nil {
		t.Fatalf("PDU signature: %v", err)
	}
}

// verifier checks signatures of ours with key.
func (e *fedEnv) verifier(key serverkey.Key) gomatrixserverlib.JSONVerifier {
	return NewKeyRing(KeyRingConfig{DB: e.db, ServerName: ours, Key: key})
}

// pdusOf is the event ids of the PDUs a destination accepted, in order.
func pdusOf(t *testing.T, d *fakeDest) []string {
	t.Helper()
	var out []string
	for _, a := range d.all() {
		if a.status != 200 {
			continue
		}
		for _, raw := range a.pdus {
			ev, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventFromUntrustedJSON([]byte(raw))
			if err != nil {
				t.Fatalf("PDU %s: %v", raw, err)
			}
			out = append(out, ev.EventID())
		}
	}
	return out
}

// waitPDUs waits until d has accepted exactly want, in order.
func waitPDUs(t *testing.T, d *fakeDest, want []string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		got := pdusOf(t, d)
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) {
			t.Fatalf("%s got %v, want %v", d.name, got, want)
		}
		select {
		case <-d.arrived:
		case <-deadline:
			t.Fatalf("%s got %v, want %v", d.name, got, want)
		}
	}
}

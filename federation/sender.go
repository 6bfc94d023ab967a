package federation

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// SenderConsumer names the sender's row in consumer_positions.
const SenderConsumer = "federation-sender"

// senderBatch bounds the events read and queued in one transaction.
const senderBatch = 100

// Sender sends the events of this server's users to the other servers in
// their rooms (DESIGN.md: "the federation sender"). It runs behind the
// commits, so sending never holds up room input, and hands each event to
// the Queue, which delivers it to each destination on its own (one slow
// or dead server delays no other).
//
// The database, not NATS, says what is to be sent: the sender's position
// (the last events stream position it queued, in consumer_positions)
// moves in the transaction that queues the events up to it, and a
// room.output message only wakes the sender to read the local events
// after its position. So nothing committed is missed: not while no
// process sends (the next start catches up), not when a publish is lost
// (the next local event, or the next start, catches up), and not when a
// process dies between queueing and moving the position (both or
// neither committed). Events that go to no other server (a server with no
// peers, a room of local users) move it only in memory, for up to
// senderLag positions: a process that dies reads them again at its start,
// and they go nowhere again, at the cost of a read but not of a write
// per event. The wake-ups come from an ephemeral tail of
// room.output, with no acknowledgements: a durable consumer would hold
// the messages a dead process had taken until their ack wait ran out,
// and the sends behind them with it.
type Sender struct {
	db         *sql.DB
	queue      *Queue
	serverName spec.ServerName
	log        *slog.Logger
	joined     snapshotServers

	// kick wakes the goroutine of Serve (one wake-up pending at most:
	// one catch-up covers any number of events).
	kick chan struct{}
	// mu serializes catch-ups in this process (other processes are kept
	// out by the position's compare-and-set). It is held during database
	// I/O; no other lock is taken while holding it.
	mu sync.Mutex
	// pos is the sender's position as last read or moved here; -1 until
	// read. Another process may have moved it further. Written under mu;
	// read without it by the wake-ups, which only skip what it covers.
	pos atomic.Int64
	// stored is the position as last read from or written to the
	// database (under mu): pos runs ahead of it over events that went
	// nowhere.
	stored int64
}

// senderLag is how far the sender's position may run ahead of the one
// stored over events that go to no other server.
const senderLag = 1000

// NewSender makes a sender of serverName's events through queue.
func NewSender(db *sql.DB, queue *Queue, serverName spec.ServerName, log *slog.Logger) *Sender {
	log = logOr(log)
	s := &Sender{db: db, queue: queue, serverName: serverName, log: log, kick: make(chan struct{}, 1)}
	s.pos.Store(-1)
	return s
}

// Serve catches up at once on what was committed while no sender ran
// (or whose room.output message was lost), then again whenever
// room.output announces an event of a local user not queued yet. It
// runs until ctx ends or stop is called.
func (s *Sender) Serve(ctx context.Context, b *bus.Bus) (stop func(), err error) {
	stopTail, err := bus.Tail(ctx, b, bus.StreamRoomOutput, bus.RoomOutputSubjects, func(_ context.Context, o roomserver.OutputEvent) {
		if sender, _ := serverOf(o.Sender); sender == s.serverName && o.StreamPos > s.pos.Load() {
			s.wake()
		}
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s.wake()
	go func() {
		defer close(done)
		s.run(ctx)
	}()
	return func() {
		cancel()
		<-done
		stopTail()
	}, nil
}

func (s *Sender) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run catches up each time it is woken, retrying while the database
// fails: the next wake-up may be long in coming.
func (s *Sender) run(ctx context.Context) {
	wait := time.Second
	for {
		select {
		case <-s.kick:
		case <-ctx.Done():
			return
		}
		if err := s.CatchUp(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.WarnContext(ctx, "federation sender: catching up", "err", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
			wait = min(2*wait, time.Minute)
			s.wake()
			continue
		}
		wait = time.Second
	}
}

// CatchUp queues the local users' events after the sender's position for
// the servers that should get them, in stream order. Outliers
// (out-of-band memberships, events fetched from others) and rejected
// events are not sent, as in Synapse.
func (s *Sender) CatchUp(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pos.Load() < 0 {
		if err := s.readPosition(ctx); err != nil {
			return err
		}
	}
	for {
		evs, err := s.db.ServerEventsAfter(ctx, s.pos.Load(), string(s.serverName), senderBatch)
		if err != nil {
			return fmt.Errorf("federation sender: read events after %d: %w", s.pos.Load(), err)
		}
		if len(evs) == 0 {
			return nil
		}
		if err := s.queueEvents(ctx, evs); errors.Is(err, sql.ErrConsumerMoved) {
			// Another process queued them: go on from where it is.
			if err := s.readPosition(ctx); err != nil {
				return err
			}
			continue
		} else if err != nil {
			return err
		}
		if len(evs) < senderBatch {
			return nil // every local event committed so far is queued
		}
	}
}

func (s *Sender) readPosition(ctx context.Context) error {
	pos, err := s.db.ConsumerPosition(ctx, SenderConsumer)
	if err != nil {
		return fmt.Errorf("federation sender: read position: %w", err)
	}
	s.pos.Store(pos)
	s.stored = pos
	return nil
}

// queueEvents queues evs, in order, and moves the position to the last
// one's in the same transaction (in memory only when none goes anywhere,
// up to senderLag).
func (s *Sender) queueEvents(ctx context.Context, evs []sql.Event) error {
	type item struct {
		eventID string
		dests   []spec.ServerName
	}
	var items []item
	var woken []spec.ServerName
	for _, ev := range evs {
		// The query matched the sender's server name by suffix (and
		// without case on SQLite): check it exactly.
		if sender, _ := serverOf(ev.Sender); sender != s.serverName {
			continue
		}
		dests, err := s.destinations(ctx, ev)
		if err != nil {
			return fmt.Errorf("destinations of %s: %w", ev.EventID, err)
		}
		if len(dests) > 0 {
			items = append(items, item{ev.EventID, dests})
			woken = append(woken, dests...)
		}
	}
	last := evs[len(evs)-1].StreamPos
	if len(items) == 0 && last-s.stored < senderLag {
		s.pos.Store(last)
		return nil
	}
	err := s.db.WithTx(ctx, func(tx *sql.Queries) error {
		// First: on PostgreSQL the position's row lock keeps another
		// process's catch-up waiting until this one commits.
		if err := tx.AdvanceConsumer(ctx, SenderConsumer, s.stored, last); err != nil {
			return err
		}
		for _, it := range items {
			if err := s.queue.StorePDU(ctx, tx, it.dests, it.eventID); err != nil {
				return fmt.Errorf("queue %s: %w", it.eventID, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.pos.Store(last)
	s.stored = last
	slices.Sort(woken)
	s.queue.Wake(slices.Compact(woken)...)
	return nil
}

// destinations are the servers that get an event: every other server
// with a user joined to the room in the state before the event (as
// Synapse: a server whose last user the event kicks still gets it, one
// that joins after it does not, however late the event is handled), and,
// for a membership event, the target's server, so that a kick, ban or
// leave reaches the server it concerns even when none of its users is
// joined. An invite has reached the invitee's server through /invite
// already: sent again in a transaction, it reads there as an event of a
// room that server is not in (Dendrite then asks for its history and is
// refused). A server the room's current server ACL denies gets nothing
// (spec: "Server Access Control Lists").
func (s *Sender) destinations(ctx context.Context, ev sql.Event) ([]spec.ServerName, error) {
	joined, err := s.joinedAt(ctx, ev.StateBeforeNID)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(joined)
	if ev.Type == spec.MRoomMember && ev.StateKey != nil && contentString(ev.JSON, "membership") != spec.Invite {
		for _, d := range serversOf([]string{*ev.StateKey}, s.serverName) {
			if !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	out, err = withoutDenied(ctx, &s.db.Queries, ev.RoomID, out)
	slices.Sort(out)
	return out, err
}

// joinedAt returns the other servers with a user joined in a state
// snapshot. Snapshots never change, and the messages of a room share the
// snapshot of its last state change, so the answer is cached: a room's
// state is read once per state change, not once per message. The member
// events are read one per server first, which settles every server whose
// user picked is joined; the other users of the servers left are read
// next.
func (s *Sender) joinedAt(ctx context.Context, snapshot int64) ([]spec.ServerName, error) {
	if snapshot == 0 {
		return nil, nil
	}
	if servers, ok := s.joined.get(snapshot); ok {
		return servers, nil
	}
	state, err := s.db.Snapshot(ctx, snapshot)
	if err != nil {
		return nil, err
	}
	pending := make(map[spec.ServerName][]int64)
	for k, nid := range state {
		if k.Type != spec.MRoomMember {
			continue
		}
		if d, ok := serverOf(k.StateKey); ok && d != s.serverName {
			if _, _, valid := spec.ParseAndValidateServerName(d); valid {
				pending[d] = append(pending[d], nid)
			}
		}
	}
	for _, ns := range pending {
		// Newest membership first, and the same order every time.
		slices.SortFunc(ns, func(a, b int64) int { return cmp.Compare(b, a) })
	}
	var out []spec.ServerName
	for round := 0; len(pending) > 0; round++ {
		var nids []int64
		for _, ns := range pending {
			if round == 0 {
				nids = append(nids, ns[0])
			} else {
				nids = append(nids, ns[1:]...)
			}
		}
		joined := make(map[spec.ServerName]bool)
		for chunk := range slices.Chunk(nids, idsPerQuery) {
			evs, err := s.db.EventsByNID(ctx, chunk)
			if err != nil {
				return nil, err
			}
			for _, ev := range evs {
				if d, ok := serverOf(*ev.StateKey); ok && contentString(ev.JSON, "membership") == spec.Join {
					joined[d] = true
				}
			}
		}
		next := make(map[spec.ServerName][]int64)
		for d, ns := range pending {
			switch {
			case joined[d]:
				out = append(out, d)
			case round == 0 && len(ns) > 1:
				next[d] = ns
			}
		}
		pending = next
	}
	slices.Sort(out)
	s.joined.put(snapshot, out)
	return out, nil
}

// snapshotServers caches the joined servers of recent snapshots, the
// oldest dropped first.
type snapshotServers struct {
	mu    sync.Mutex
	m     map[int64][]spec.ServerName
	order []int64
}

// snapshotCacheSize bounds the snapshots cached: one per room with recent
// local activity is enough.
const snapshotCacheSize = 1024

func (c *snapshotServers) get(snapshot int64) ([]spec.ServerName, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	servers, ok := c.m[snapshot]
	return servers, ok
}

func (c *snapshotServers) put(snapshot int64, servers []spec.ServerName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[int64][]spec.ServerName)
	}
	if _, ok := c.m[snapshot]; ok {
		return
	}
	if len(c.order) == snapshotCacheSize {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.m[snapshot] = servers
	c.order = append(c.order, snapshot)
}

// StoredPDUs reads events from db as the queue sends them
// (QueueConfig.PDUs): as signed, in their room version's format, without
// the unsigned data this server added (see federationJSON).
func StoredPDUs(db *sql.DB) func(ctx context.Context, eventIDs []string) (map[string]json.RawMessage, error) {
	return func(ctx context.Context, eventIDs []string) (map[string]json.RawMessage, error) {
		out := make(map[string]json.RawMessage, len(eventIDs))
		for chunk := range slices.Chunk(eventIDs, idsPerQuery) {
			evs, err := db.EventsByID(ctx, chunk)
			if err != nil {
				return nil, err
			}
			for _, ev := range evs {
				pdu, err := federationJSON(ev.JSON)
				if err != nil {
					return nil, fmt.Errorf("event %s: %w", ev.EventID, err)
				}
				out[ev.EventID] = pdu
			}
		}
		return out, nil
	}
}

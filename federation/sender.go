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

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// SenderDurable names the durable consumer of room.output that queues
// local events for other servers. Its position survives restarts: events
// committed while no process sent are queued when one starts.
const SenderDurable = "federation-sender"

// Sender sends the events of this server's users to the other servers in
// their rooms (DESIGN.md: "the federation sender"). It follows
// room.output after the commit, so sending never holds up room input,
// and hands each event to the Queue, which delivers it to each
// destination on its own (one slow or dead server delays no other).
type Sender struct {
	db         *sql.DB
	queue      *Queue
	serverName spec.ServerName
	log        *slog.Logger
	joined     snapshotServers
}

// NewSender makes a sender of serverName's events through queue.
func NewSender(db *sql.DB, queue *Queue, serverName spec.ServerName, log *slog.Logger) *Sender {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sender{db: db, queue: queue, serverName: serverName, log: log}
}

// Serve consumes room.output with the durable consumer federation-sender,
// one event at a time in stream order, so that each destination's queue
// holds a room's events in the order they were committed. It runs until
// ctx ends or stop is called.
func (s *Sender) Serve(ctx context.Context, b *bus.Bus) (stop func(), err error) {
	return bus.Consume(ctx, b, bus.StreamRoomOutput, SenderDurable, bus.RoomOutputSubjects, s.Handle, bus.Ordered())
}

// Handle queues one committed event for the servers that should get it,
// when a local user sent it. Outliers (out-of-band memberships, events
// fetched from others) are not sent, as in Synapse. Errors are the
// database's, worth a retry; a redelivered event is queued again, which
// the destination ignores as an event it has.
func (s *Sender) Handle(ctx context.Context, o roomserver.OutputEvent) error {
	if sender, _ := serverOf(o.Sender); o.StreamPos == 0 || sender != s.serverName {
		return nil
	}
	ev, err := s.db.EventByID(ctx, o.EventID)
	if errors.Is(err, sql.ErrNotFound) {
		s.log.WarnContext(ctx, "federation sender: event not found", "event_id", o.EventID)
		return nil
	}
	if err != nil {
		return err
	}
	if ev.Outlier || ev.Rejected {
		return nil
	}
	dests, err := s.destinations(ctx, ev)
	if err != nil {
		return fmt.Errorf("destinations of %s: %w", o.EventID, err)
	}
	if len(dests) == 0 {
		return nil
	}
	if err := s.queue.SendPDU(ctx, dests, o.EventID); err != nil {
		return fmt.Errorf("queue %s: %w", o.EventID, err)
	}
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

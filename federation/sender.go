package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"

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
// Synapse: a server whose last user the event bans still gets it, and
// one that joins after it does not), and, for a membership event, the
// target's server, so that an invite, kick, ban or leave reaches the
// server it concerns even when none of its users is joined. A server the
// room's current server ACL denies gets nothing (spec: "Server Access
// Control Lists").
//
// The candidates are the servers with a user joined now (the membership
// index), each confirmed by one of its users' membership in the state
// before the event, looked up for all servers at once: a handful of
// queries for a room of any size, not a walk of its state. A server
// whose last user left between the event and its handling here (a
// moment, as the sender follows the commits) is missed; it fetches the
// event through the prev_events of later ones if it comes back.
func (s *Sender) destinations(ctx context.Context, ev sql.Event) ([]spec.ServerName, error) {
	members, err := s.db.RoomMembers(ctx, ev.RoomID, spec.Join)
	if err != nil {
		return nil, err
	}
	byServer := make(map[spec.ServerName][]string)
	for _, m := range members {
		if d, ok := serverOf(m); ok && d != s.serverName {
			byServer[d] = append(byServer[d], m)
		}
	}
	joined, err := s.joinedBefore(ctx, ev.StateBeforeNID, byServer)
	if err != nil {
		return nil, err
	}
	if ev.Type == spec.MRoomMember && ev.StateKey != nil {
		if d, ok := serverOf(*ev.StateKey); ok && d != s.serverName && !slices.Contains(joined, d) {
			joined = append(joined, d)
		}
	}
	joined = slices.DeleteFunc(joined, func(d spec.ServerName) bool {
		_, _, ok := spec.ParseAndValidateServerName(d)
		return !ok
	})
	if len(joined) == 0 {
		return nil, nil
	}
	allows, err := roomACL(ctx, s.db, ev.RoomID)
	if err != nil {
		return nil, err
	}
	joined = slices.DeleteFunc(joined, func(d spec.ServerName) bool { return !allows(d) })
	slices.Sort(joined)
	return joined, nil
}

// joinedBefore returns the servers of candidates (each with its users
// joined now) that had a user joined in the snapshot. The first round
// asks about one user per server, which settles every server whose
// users did not join in the meantime; a second asks about the other
// users of the servers left.
func (s *Sender) joinedBefore(ctx context.Context, snapshot int64, candidates map[spec.ServerName][]string) ([]spec.ServerName, error) {
	var out []spec.ServerName
	if snapshot == 0 {
		return nil, nil
	}
	pending := candidates
	for round := 0; len(pending) > 0; round++ {
		var users []string
		for _, us := range pending {
			if round == 0 {
				users = append(users, us[0])
			} else {
				users = append(users, us[1:]...)
			}
		}
		joined, err := s.joinedIn(ctx, snapshot, users)
		if err != nil {
			return nil, err
		}
		next := make(map[spec.ServerName][]string)
		for d, us := range pending {
			switch {
			case slices.ContainsFunc(us, func(u string) bool { return joined[u] }):
				out = append(out, d)
			case round == 0 && len(us) > 1:
				next[d] = us
			}
		}
		pending = next
	}
	return out, nil
}

// joinedIn tells which of users are joined in a state snapshot.
func (s *Sender) joinedIn(ctx context.Context, snapshot int64, users []string) (map[string]bool, error) {
	out := make(map[string]bool)
	for chunk := range slices.Chunk(users, idsPerQuery) {
		keys := make([]sql.StateKey, len(chunk))
		for i, u := range chunk {
			keys[i] = sql.StateKey{Type: spec.MRoomMember, StateKey: u}
		}
		state, err := s.db.SnapshotKeys(ctx, snapshot, keys)
		if err != nil {
			return nil, err
		}
		nids := make([]int64, 0, len(state))
		for _, nid := range state {
			nids = append(nids, nid)
		}
		evs, err := s.db.EventsByNID(ctx, nids)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if ev.StateKey != nil && contentString(ev.JSON, "membership") == spec.Join {
				out[*ev.StateKey] = true
			}
		}
	}
	return out, nil
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

package federation

import (
	"context"
	"encoding/json"
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
// when a local user sent it. Outliers (StreamPos 0: out-of-band
// memberships, events fetched from others) are not sent, as in Synapse.
// Errors are the database's, worth a retry; a redelivered event is queued
// again, which the destination ignores as an event it has.
func (s *Sender) Handle(ctx context.Context, o roomserver.OutputEvent) error {
	if sender, _ := serverOf(o.Sender); o.StreamPos == 0 || sender != s.serverName {
		return nil
	}
	dests, err := s.destinations(ctx, o)
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
// with a user joined to the room when the event is handled, and, for a
// membership event, the target's server, so that an invite, kick, ban or
// leave reaches the server it concerns even when none of its users is
// joined (any more). A server the room's server ACL denies gets nothing
// (spec: "Server Access Control Lists").
//
// The room's joined members are read when the event is handled, right
// after its commit, rather than in the state before it: one query of the
// membership index instead of a walk of the event's state. A server
// whose last user leaves in that instant may miss the event, as one
// joining in it may get it; both fetch what they miss through
// prev_events.
func (s *Sender) destinations(ctx context.Context, o roomserver.OutputEvent) ([]spec.ServerName, error) {
	members, err := s.db.RoomMembers(ctx, o.RoomID, spec.Join)
	if err != nil {
		return nil, err
	}
	if o.Type == spec.MRoomMember && o.StateKey != nil {
		members = append(members, *o.StateKey)
	}
	seen := make(map[spec.ServerName]bool)
	var out []spec.ServerName
	for _, m := range members {
		d, ok := serverOf(m)
		if !ok || seen[d] || d == s.serverName {
			continue
		}
		seen[d] = true
		if _, _, ok := spec.ParseAndValidateServerName(d); ok {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	allows, err := roomACL(ctx, s.db, o.RoomID)
	if err != nil {
		return nil, err
	}
	out = slices.DeleteFunc(out, func(d spec.ServerName) bool { return !allows(d) })
	slices.Sort(out)
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

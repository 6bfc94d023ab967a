package clientapi

import (
	"context"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/sql"
)

// sentMax bounds the events Sent remembers.
const sentMax = 100_000

// Sent is an EventStore that remembers the transaction ids of the events
// this process's clients sent lately, in front of the database's: each
// message wakes its sender's own sync, which then formats it without a
// query. An event it does not know is looked up in the store; one it
// knows has its one sender and device, so it is never looked up.
type Sent struct {
	store EventStore
	sent  *bounded.Map[string, sentEvent]
}

// sentEvent is who sent an event in which transaction.
type sentEvent struct{ userID, deviceID, txnID string }

// NewSent makes a Sent in front of store.
func NewSent(store EventStore) *Sent {
	return &Sent{store: store, sent: bounded.New[string, sentEvent](sentMax)}
}

// add remembers that the device sent eventID in transaction txnID (none:
// nothing to remember).
func (s *Sent) add(eventID, userID, deviceID, txnID string) {
	if txnID != "" {
		s.sent.Put(eventID, sentEvent{userID, deviceID, txnID})
	}
}

// TransactionIDs is EventStore's, from memory where it can.
func (s *Sent) TransactionIDs(ctx context.Context, userID, deviceID string, eventIDs []string) (map[string]string, error) {
	out := make(map[string]string, len(eventIDs))
	var unknown []string
	for _, id := range eventIDs {
		e, ok := s.sent.Get(id)
		if !ok {
			unknown = append(unknown, id)
		} else if e.userID == userID && e.deviceID == deviceID {
			out[id] = e.txnID
		}
	}
	if len(unknown) == 0 {
		return out, nil
	}
	stored, err := s.store.TransactionIDs(ctx, userID, deviceID, unknown)
	if err != nil {
		return nil, err
	}
	for id, txn := range stored {
		out[id] = txn
	}
	return out, nil
}

// Redactions is the store's.
func (s *Sent) Redactions(ctx context.Context, eventIDs []string) (map[string]sql.Event, error) {
	return s.store.Redactions(ctx, eventIDs)
}

var _ EventStore = (*Sent)(nil)

package clientapi

import (
	"context"

	"github.com/weft-chat/weft/sql"
)

// RecentTransactions tells who sent the events this process committed
// lately, from which device and in which client transaction ("" for
// none): roomserver.Roomserver.RecentTransaction.
type RecentTransactions interface {
	RecentTransaction(eventID string) (userID, deviceID, txnID string, ok bool)
}

// Sent is an EventStore that takes the transaction ids of the events this
// process committed lately from the roomserver's memory, in front of the
// database's: each message wakes its sender's own sync, which then
// formats it without a query. An event the memory does not know is
// looked up in the store; one it knows has its one sender and device, so
// it is never looked up.
type Sent struct {
	store  EventStore
	recent RecentTransactions
}

// NewSent makes a Sent in front of store.
func NewSent(store EventStore, recent RecentTransactions) *Sent {
	return &Sent{store: store, recent: recent}
}

// TransactionIDs is EventStore's, from memory where it can.
func (s *Sent) TransactionIDs(ctx context.Context, userID, deviceID string, eventIDs []string) (map[string]string, error) {
	out := make(map[string]string, len(eventIDs))
	var unknown []string
	for _, id := range eventIDs {
		sender, device, txn, ok := s.recent.RecentTransaction(id)
		switch {
		case !ok:
			unknown = append(unknown, id)
		case txn != "" && sender == userID && device == deviceID:
			out[id] = txn
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

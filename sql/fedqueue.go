package sql

import (
	"context"
	"errors"
	"fmt"
)

// The outbound federation queue: the items (EDUs, and PDUs by event id)
// each destination server is still to receive, grouped into transactions
// that keep their id until the destination acknowledges them, and each
// destination's back-off and sending lease. The federation package's
// Queue is the only user.

// FederationEDU is an EDU to queue for one destination.
type FederationEDU struct {
	Destination string
	Type        string
	// Content is the EDU's content, a JSON object.
	Content []byte
}

// FederationItem is a queued EDU or PDU.
type FederationItem struct {
	// QueueID orders a destination's items.
	QueueID int64
	// EDUType and Content are an EDU's; EDUType is "" for a PDU.
	EDUType string
	Content []byte
	// EventID is a PDU's; "" for an EDU.
	EventID string
}

// FederationDestination is a destination's sending state.
type FederationDestination struct {
	Destination string
	// FailureTS is when the current run of failures began, in
	// milliseconds; 0 when not failing.
	FailureTS int64
	// RetryIntervalMS is the current back-off; 0 when not failing.
	RetryIntervalMS int64
	// RetryAtTS is when the next attempt may be made; 0 for now.
	RetryAtTS int64
	// LeaseOwner holds the destination until LeaseExpiresTS ("" for
	// nobody).
	LeaseOwner     string
	LeaseExpiresTS int64
}

// QueueFederationEDUs appends EDUs to their destinations' queues, in
// order, in one transaction.
func (t *Queries) QueueFederationEDUs(ctx context.Context, edus []FederationEDU) error {
	if len(edus) == 0 {
		return nil
	}
	now := nowMillis()
	err := t.ensureTx(ctx, func(q *Queries) error {
		// One statement per EDU rather than a multi-row insert: both
		// engines number the rows of one statement in order, but nothing
		// promises it.
		for _, e := range edus {
			if _, err := q.q.ExecContext(ctx, `INSERT INTO federation_queue (destination, edu_type, content, event_id, txn_id, created_ts)
				VALUES ($1, $2, $3, '', '', $4)`, e.Destination, e.Type, string(e.Content), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue federation EDUs: %w", err)
	}
	return nil
}

// QueueFederationPDU appends a PDU, by event id, to the queues of the
// destinations.
func (t *Queries) QueueFederationPDU(ctx context.Context, destinations []string, eventID string) error {
	if len(destinations) == 0 {
		return nil
	}
	now := nowMillis()
	err := t.ensureTx(ctx, func(q *Queries) error {
		for _, d := range destinations {
			if _, err := q.q.ExecContext(ctx, `INSERT INTO federation_queue (destination, edu_type, content, event_id, txn_id, created_ts)
				VALUES ($1, '', '', $2, '', $3)`, d, eventID, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue federation PDU %s: %w", eventID, err)
	}
	return nil
}

// FederationBatch returns the destination's next transaction: the one
// already in flight (items given a transaction id by an earlier call and
// not yet deleted), under its id, so that a retry resends exactly it; or
// else the oldest waiting items, at most maxPDUs PDUs and maxEDUs EDUs
// taken in queue order, which it marks with newTxnID. No items means the
// queue is empty. Only the holder of the destination's lease may call it.
func (t *Queries) FederationBatch(ctx context.Context, destination, newTxnID string, maxPDUs, maxEDUs int) (string, []FederationItem, error) {
	var txnID string
	var items []FederationItem
	err := t.ensureTx(ctx, func(q *Queries) error {
		var err error
		txnID, items, err = q.federationItems(ctx, `destination = $1 AND txn_id <> '' ORDER BY queue_id`, destination)
		if err != nil || len(items) > 0 {
			return err
		}
		_, waiting, err := q.federationItems(ctx, `destination = $1 AND txn_id = '' ORDER BY queue_id LIMIT $2`, destination, maxPDUs+maxEDUs)
		if err != nil {
			return err
		}
		pdus, edus := 0, 0
		for _, it := range waiting {
			if it.EventID != "" {
				if pdus == maxPDUs {
					break
				}
				pdus++
			} else {
				if edus == maxEDUs {
					break
				}
				edus++
			}
			items = append(items, it)
		}
		if len(items) == 0 {
			return nil
		}
		// By id, never by a range: an item committed meanwhile below the
		// last one read must not join a transaction that does not carry it.
		args := []any{destination, newTxnID}
		for _, it := range items {
			args = append(args, it.QueueID)
		}
		if _, err := q.q.ExecContext(ctx, `UPDATE federation_queue SET txn_id = $2 WHERE destination = $1 AND queue_id IN (`+
			placeholders(3, len(items))+`)`, args...); err != nil {
			return err
		}
		txnID = newTxnID
		return nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("federation batch for %s: %w", destination, err)
	}
	return txnID, items, nil
}

// federationItems reads queue rows matching where, which names the
// destination as $1. Rows of more than one transaction (which the lease
// rules out) are cut at the first transaction's end.
func (t *Queries) federationItems(ctx context.Context, where string, args ...any) (string, []FederationItem, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT queue_id, edu_type, content, event_id, txn_id FROM federation_queue WHERE `+where, args...)
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	var txnID string
	var out []FederationItem
	for rows.Next() {
		var it FederationItem
		var content, id string
		if err := rows.Scan(&it.QueueID, &it.EDUType, &content, &it.EventID, &id); err != nil {
			return "", nil, err
		}
		if len(out) == 0 {
			txnID = id
		} else if id != txnID {
			break
		}
		it.Content = []byte(content)
		out = append(out, it)
	}
	return txnID, out, rows.Err()
}

// DeleteFederationBatch deletes the items of a transaction the
// destination acknowledged (or refused for good), and reports how many
// there were.
func (t *Queries) DeleteFederationBatch(ctx context.Context, destination, txnID string) (int64, error) {
	res, err := t.q.ExecContext(ctx, `DELETE FROM federation_queue WHERE destination = $1 AND txn_id = $2`, destination, txnID)
	if err != nil {
		return 0, fmt.Errorf("delete federation transaction %s to %s: %w", txnID, destination, err)
	}
	return res.RowsAffected()
}

// FederationQueued reports whether anything is queued for destination.
func (t *Queries) FederationQueued(ctx context.Context, destination string) (bool, error) {
	var one int
	err := t.q.QueryRowContext(ctx, `SELECT 1 FROM federation_queue WHERE destination = $1 LIMIT 1`, destination).Scan(&one)
	if errors.Is(noRows(err), ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("federation queue of %s: %w", destination, err)
	}
	return true, nil
}

// FederationQueuedDestinations lists the destinations with queued items,
// with their sending state (zero but for the name when they have none
// yet), sorted by name: what a starting process has to catch up on.
func (t *Queries) FederationQueuedDestinations(ctx context.Context) ([]FederationDestination, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT q.destination, COALESCE(d.failure_ts, 0), COALESCE(d.retry_interval_ms, 0),
			COALESCE(d.retry_at_ts, 0), COALESCE(d.lease_owner, ''), COALESCE(d.lease_expires_ts, 0)
		FROM (SELECT DISTINCT destination FROM federation_queue) q
		LEFT JOIN federation_destinations d ON d.destination = q.destination
		ORDER BY q.destination`)
	if err != nil {
		return nil, fmt.Errorf("federation destinations with queued items: %w", err)
	}
	defer rows.Close()
	var out []FederationDestination
	for rows.Next() {
		var d FederationDestination
		if err := rows.Scan(&d.Destination, &d.FailureTS, &d.RetryIntervalMS, &d.RetryAtTS, &d.LeaseOwner, &d.LeaseExpiresTS); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// FederationDestinationState returns a destination's sending state, or
// ErrNotFound when nothing was ever sent to it.
func (t *Queries) FederationDestinationState(ctx context.Context, destination string) (FederationDestination, error) {
	d := FederationDestination{Destination: destination}
	err := t.q.QueryRowContext(ctx, `SELECT failure_ts, retry_interval_ms, retry_at_ts, lease_owner, lease_expires_ts
		FROM federation_destinations WHERE destination = $1`, destination).
		Scan(&d.FailureTS, &d.RetryIntervalMS, &d.RetryAtTS, &d.LeaseOwner, &d.LeaseExpiresTS)
	if err != nil {
		return FederationDestination{}, noRows(err)
	}
	return d, nil
}

// AcquireFederationLease makes owner the destination's sender until
// expiresTS, when the lease is free (no owner, or expired at nowTS) or
// already owner's, in which case it is extended. It returns the
// destination's state and whether owner holds the lease.
func (t *Queries) AcquireFederationLease(ctx context.Context, destination, owner string, nowTS, expiresTS int64) (FederationDestination, bool, error) {
	var d FederationDestination
	held := false
	err := t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `INSERT INTO federation_destinations
				(destination, failure_ts, retry_interval_ms, retry_at_ts, lease_owner, lease_expires_ts)
			VALUES ($1, 0, 0, 0, '', 0) ON CONFLICT (destination) DO NOTHING`, destination); err != nil {
			return err
		}
		res, err := q.q.ExecContext(ctx, `UPDATE federation_destinations SET lease_owner = $2, lease_expires_ts = $3
			WHERE destination = $1 AND (lease_owner = '' OR lease_owner = $2 OR lease_expires_ts <= $4)`,
			destination, owner, expiresTS, nowTS)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		held = n == 1
		d, err = q.FederationDestinationState(ctx, destination)
		return err
	})
	if err != nil {
		return FederationDestination{}, false, fmt.Errorf("federation lease on %s: %w", destination, err)
	}
	return d, held, nil
}

// ReleaseFederationLease frees the destination's lease if owner holds it.
func (t *Queries) ReleaseFederationLease(ctx context.Context, destination, owner string) error {
	if _, err := t.q.ExecContext(ctx, `UPDATE federation_destinations SET lease_owner = '', lease_expires_ts = 0
		WHERE destination = $1 AND lease_owner = $2`, destination, owner); err != nil {
		return fmt.Errorf("release federation lease on %s: %w", destination, err)
	}
	return nil
}

// SetFederationBackoff records a failure to reach destination: the run
// of failures began at failureTS, the back-off is intervalMS, and the next
// attempt waits until retryAtTS.
func (t *Queries) SetFederationBackoff(ctx context.Context, destination string, failureTS, intervalMS, retryAtTS int64) error {
	if _, err := t.q.ExecContext(ctx, `UPDATE federation_destinations SET failure_ts = $2, retry_interval_ms = $3, retry_at_ts = $4
		WHERE destination = $1`, destination, failureTS, intervalMS, retryAtTS); err != nil {
		return fmt.Errorf("federation back-off of %s: %w", destination, err)
	}
	return nil
}

// ClearFederationBackoff forgets the destination's failures and reports
// whether it had any. It writes only then: it runs for every inbound
// transaction, and on SQLite any write takes the database's write lock.
func (t *Queries) ClearFederationBackoff(ctx context.Context, destination string) (bool, error) {
	d, err := t.FederationDestinationState(ctx, destination)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if d.FailureTS == 0 && d.RetryIntervalMS == 0 && d.RetryAtTS == 0 {
		return false, nil
	}
	res, err := t.q.ExecContext(ctx, `UPDATE federation_destinations SET failure_ts = 0, retry_interval_ms = 0, retry_at_ts = 0
		WHERE destination = $1 AND (failure_ts <> 0 OR retry_interval_ms <> 0 OR retry_at_ts <> 0)`, destination)
	if err != nil {
		return false, fmt.Errorf("clear federation back-off of %s: %w", destination, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

package sql

import (
	"context"
	"fmt"
	"time"
)

// What inbound federation already handled: the answer to each transaction
// (spec: a transaction is identified by its origin and id, and a sender
// retries one until it gets a 200) and the message_id of each
// m.direct_to_device EDU delivered.

// inboundTxnLifetime is how long a transaction's answer is kept. Synapse
// keeps them for a day too; a sender retrying later than that gets the
// transaction processed again, which the EDU handlers tolerate.
const inboundTxnLifetime = 24 * time.Hour

// inboundToDeviceLifetime is how long a delivered to-device message_id is
// remembered: longer than the transaction answers, and than the back-off
// of any sender still retrying.
const inboundToDeviceLifetime = 7 * 24 * time.Hour

// FederationInboundResponse returns the answer given to origin's
// transaction txnID, or ErrNotFound when it was not handled (in the last
// day).
func (t *Queries) FederationInboundResponse(ctx context.Context, origin, txnID string) ([]byte, error) {
	var resp string
	err := t.q.QueryRowContext(ctx, `SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2 AND created_ts >= $3`,
		origin, txnID, nowMillis()-inboundTxnLifetime.Milliseconds()).Scan(&resp)
	if err != nil {
		return nil, noRows(err)
	}
	return []byte(resp), nil
}

// StoreFederationInboundResponse records the answer to origin's
// transaction txnID (the first answer stays when two race), and forgets
// answers older than a day.
func (t *Queries) StoreFederationInboundResponse(ctx context.Context, origin, txnID string, response []byte) error {
	now := nowMillis()
	err := t.ensureTx(ctx, func(q *Queries) error {
		if _, err := q.q.ExecContext(ctx, `DELETE FROM federation_inbound_txns WHERE created_ts < $1`,
			now-inboundTxnLifetime.Milliseconds()); err != nil {
			return err
		}
		_, err := q.q.ExecContext(ctx, `INSERT INTO federation_inbound_txns (origin, txn_id, response, created_ts) VALUES ($1, $2, $3, $4)
			ON CONFLICT (origin, txn_id) DO NOTHING`, origin, txnID, string(response), now)
		return err
	})
	if err != nil {
		return fmt.Errorf("store answer to transaction %s from %s: %w", txnID, origin, err)
	}
	return nil
}

// ClaimFederationToDevice records that origin's to-device EDU messageID is
// being delivered, and reports false when it was delivered before. Claim
// and delivery belong in one transaction. It also forgets message ids
// older than a week.
func (t *Queries) ClaimFederationToDevice(ctx context.Context, origin, messageID string) (bool, error) {
	now := nowMillis()
	if _, err := t.q.ExecContext(ctx, `DELETE FROM federation_inbound_to_device WHERE created_ts < $1`,
		now-inboundToDeviceLifetime.Milliseconds()); err != nil {
		return false, fmt.Errorf("prune to-device message ids: %w", err)
	}
	res, err := t.q.ExecContext(ctx, `INSERT INTO federation_inbound_to_device (origin, message_id, created_ts) VALUES ($1, $2, $3)
		ON CONFLICT (origin, message_id) DO NOTHING`, origin, messageID, now)
	if err != nil {
		return false, fmt.Errorf("record to-device message %s from %s: %w", messageID, origin, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

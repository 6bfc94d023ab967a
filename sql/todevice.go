package sql

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Send-to-device messages: each local device has an inbox of messages,
// each at its own to_device stream position, which a sync serves in
// position order and deletes once a later sync acknowledges them.

// ToDeviceWildcard as a device id addresses every device of the user at
// the time of sending (spec: PUT /sendToDevice).
const ToDeviceWildcard = "*"

// toDeviceTxnLifetime is how long a handled transaction id is remembered.
// Clients retry within seconds or minutes; Synapse remembers them for 30
// minutes, in memory.
const toDeviceTxnLifetime = 24 * time.Hour

// ErrTooManyToDevice is returned by DeliverToDevice when the messages,
// with the wildcards expanded, exceed the limit it was given.
var ErrTooManyToDevice = errors.New("too many to-device messages")

// ToDeviceMessage is a message in a device's inbox.
type ToDeviceMessage struct {
	// Pos is the message's to_device stream position.
	Pos     int64
	Sender  string
	Type    string
	Content []byte // a JSON object
}

// ToDeviceDelivery is the messages for one local user: content by device
// id, or ToDeviceWildcard for all of the user's devices.
type ToDeviceDelivery struct {
	Localpart string
	Devices   map[string][]byte
}

// ClaimToDeviceTxn records that a device's PUT /sendToDevice with this
// event type and transaction id is being handled, and reports false when
// it was handled before (a retry, which must send nothing). Claim and
// delivery belong in one transaction, so that a retry after a failure
// sends the messages. It also forgets the device's transaction ids older
// than a day.
func (t *Queries) ClaimToDeviceTxn(ctx context.Context, localpart, deviceID, eventType, txnID string) (bool, error) {
	now := nowMillis()
	if _, err := t.q.ExecContext(ctx, `DELETE FROM to_device_txns WHERE localpart = $1 AND device_id = $2 AND created_ts < $3`,
		localpart, deviceID, now-toDeviceTxnLifetime.Milliseconds()); err != nil {
		return false, fmt.Errorf("prune to-device transactions: %w", err)
	}
	res, err := t.q.ExecContext(ctx, `INSERT INTO to_device_txns (localpart, device_id, type, txn_id, created_ts) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (localpart, device_id, type, txn_id) DO NOTHING`, localpart, deviceID, eventType, txnID, now)
	if err != nil {
		return false, fmt.Errorf("record to-device transaction: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// DeliverToDevice puts messages of eventType from sender into the inboxes
// of local devices: a wildcard becomes every device the user has now, and
// device ids the user does not have are dropped, as are users with no
// device (Synapse drops them silently too). Each message takes its own
// to_device position, in the same transaction as the write. It returns
// the localparts of the users who got at least one message, to wake, and
// ErrTooManyToDevice (storing nothing) past max messages.
//
// Federation's inbound m.direct_to_device lands here as well, with its
// messages for local users.
func (t *Queries) DeliverToDevice(ctx context.Context, sender, eventType string, deliveries []ToDeviceDelivery, max int) ([]string, error) {
	var localparts []string
	for _, d := range deliveries {
		if len(d.Devices) > 0 && !slices.Contains(localparts, d.Localpart) {
			localparts = append(localparts, d.Localpart)
		}
	}
	if len(localparts) == 0 {
		return nil, nil
	}
	type msg struct {
		localpart, deviceID string
		content             []byte
	}
	var msgs []msg
	err := t.ensureTx(ctx, func(q *Queries) error {
		devices, err := q.devicesOf(ctx, localparts)
		if err != nil {
			return err
		}
		for _, d := range deliveries {
			have := devices[d.Localpart]
			// Explicit device ids first, in a stable order, then the
			// wildcard for the devices not named: one message per device
			// (spec: "Only one message can be sent to each device per
			// transaction").
			ids := make([]string, 0, len(d.Devices))
			for id := range d.Devices {
				if id != ToDeviceWildcard {
					ids = append(ids, id)
				}
			}
			slices.Sort(ids)
			for _, id := range ids {
				if slices.Contains(have, id) {
					msgs = append(msgs, msg{d.Localpart, id, d.Devices[id]})
				}
			}
			if content, ok := d.Devices[ToDeviceWildcard]; ok {
				for _, id := range have {
					if _, named := d.Devices[id]; !named {
						msgs = append(msgs, msg{d.Localpart, id, content})
					}
				}
			}
			if len(msgs) > max {
				return ErrTooManyToDevice
			}
		}
		if len(msgs) == 0 {
			return nil
		}
		// Positions last: the counter row stays locked until commit.
		first, err := q.AllocStreamPositions(ctx, ToDeviceStream, len(msgs))
		if err != nil {
			return err
		}
		now := nowMillis()
		const cols = 7
		const perStmt = 200
		for start := 0; start < len(msgs); start += perStmt {
			batch := msgs[start:min(start+perStmt, len(msgs))]
			query := `INSERT INTO to_device_messages (localpart, device_id, pos, sender, type, content, created_ts) VALUES `
			args := make([]any, 0, len(batch)*cols)
			for i, m := range batch {
				if i > 0 {
					query += ", "
				}
				query += "(" + placeholders(i*cols+1, cols) + ")"
				args = append(args, m.localpart, m.deviceID, first+int64(start+i), sender, eventType, string(m.content), now)
			}
			if _, err := q.q.ExecContext(ctx, query, args...); err != nil {
				return fmt.Errorf("store to-device messages: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var woken []string
	for _, m := range msgs {
		if !slices.Contains(woken, m.localpart) {
			woken = append(woken, m.localpart)
		}
	}
	return woken, nil
}

// devicesOf lists the device ids of each of the users, sorted.
func (t *Queries) devicesOf(ctx context.Context, localparts []string) (map[string][]string, error) {
	out := make(map[string][]string, len(localparts))
	for chunk := range slices.Chunk(localparts, 500) {
		args := make([]any, len(chunk))
		for i, l := range chunk {
			args[i] = l
		}
		rows, err := t.q.QueryContext(ctx, `SELECT localpart, device_id FROM devices WHERE localpart IN (`+placeholders(1, len(chunk))+`)
			ORDER BY localpart, device_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("devices of recipients: %w", err)
		}
		for rows.Next() {
			var l, d string
			if err := rows.Scan(&l, &d); err != nil {
				rows.Close()
				return nil, err
			}
			out[l] = append(out[l], d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ToDeviceMessages returns up to limit messages of a device's inbox whose
// positions lie in (after, upTo], oldest first.
func (t *Queries) ToDeviceMessages(ctx context.Context, localpart, deviceID string, after, upTo int64, limit int) ([]ToDeviceMessage, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT pos, sender, type, content FROM to_device_messages
		WHERE localpart = $1 AND device_id = $2 AND pos > $3 AND pos <= $4 ORDER BY pos LIMIT $5`,
		localpart, deviceID, after, upTo, limit)
	if err != nil {
		return nil, fmt.Errorf("read to-device messages: %w", err)
	}
	defer rows.Close()
	var out []ToDeviceMessage
	for rows.Next() {
		var m ToDeviceMessage
		var content string
		if err := rows.Scan(&m.Pos, &m.Sender, &m.Type, &content); err != nil {
			return nil, err
		}
		m.Content = []byte(content)
		out = append(out, m)
	}
	return out, rows.Err()
}

// AckToDevice deletes the messages of a device's inbox at or below upTo,
// which the device acknowledged by syncing from a token past them. It
// writes only when there is something to delete, since every sync calls
// it (on SQLite a write takes the database's one write lock).
func (t *Queries) AckToDevice(ctx context.Context, localpart, deviceID string, upTo int64) error {
	var one int
	err := t.q.QueryRowContext(ctx, `SELECT 1 FROM to_device_messages WHERE localpart = $1 AND device_id = $2 AND pos <= $3 LIMIT 1`,
		localpart, deviceID, upTo).Scan(&one)
	if errors.Is(noRows(err), ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find acknowledged to-device messages: %w", err)
	}
	if _, err := t.q.ExecContext(ctx, `DELETE FROM to_device_messages WHERE localpart = $1 AND device_id = $2 AND pos <= $3`,
		localpart, deviceID, upTo); err != nil {
		return fmt.Errorf("delete acknowledged to-device messages: %w", err)
	}
	return nil
}

// dropInboxes deletes the to-device inboxes and transaction ids of the
// user's devices (all of them when deviceIDs is nil).
func (t *Queries) dropInboxes(ctx context.Context, localpart string, deviceIDs []string) error {
	stmts := []string{`DELETE FROM to_device_messages WHERE localpart = $1`, `DELETE FROM to_device_txns WHERE localpart = $1`}
	if deviceIDs == nil {
		for _, s := range stmts {
			if _, err := t.q.ExecContext(ctx, s, localpart); err != nil {
				return fmt.Errorf("drop to-device inboxes: %w", err)
			}
		}
		return nil
	}
	for _, id := range deviceIDs {
		for _, s := range stmts {
			if _, err := t.q.ExecContext(ctx, s+` AND device_id = $2`, localpart, id); err != nil {
				return fmt.Errorf("drop to-device inbox of %s: %w", id, err)
			}
		}
	}
	return nil
}

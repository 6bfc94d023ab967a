package sql

import "context"

// The reads behind serving room events to clients: what the client format
// adds to an event (unsigned.transaction_id, unsigned.redacted_because),
// looked up for a whole batch of events at once.

// TransactionIDs returns the client transaction id of each event among
// eventIDs that the device sent with one; events it did not send are
// absent from the map.
func (t *Queries) TransactionIDs(ctx context.Context, userID, deviceID string, eventIDs []string) (map[string]string, error) {
	if len(eventIDs) == 0 {
		return nil, nil
	}
	args := make([]any, 0, len(eventIDs)+2)
	args = append(args, userID, deviceID)
	for _, id := range eventIDs {
		args = append(args, id)
	}
	rows, err := t.q.QueryContext(ctx, `SELECT e.event_id, x.txn_id FROM event_transactions x
		JOIN events e ON e.event_nid = x.event_nid
		WHERE x.user_id = $1 AND x.device_id = $2 AND e.event_id IN (`+placeholders(3, len(eventIDs))+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]string)
	for rows.Next() {
		var id, txn string
		if err := rows.Scan(&id, &txn); err != nil {
			return nil, err
		}
		out[id] = txn
	}
	return out, rows.Err()
}

// Redactions returns, for each event among eventIDs that was redacted, the
// redaction event that redacted it, keyed by the redacted event's id.
func (t *Queries) Redactions(ctx context.Context, eventIDs []string) (map[string]Event, error) {
	if len(eventIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(eventIDs))
	for i, id := range eventIDs {
		args[i] = id
	}
	rows, err := t.q.QueryContext(ctx, `SELECT target.event_id, `+eventColumns+eventFrom+`
		JOIN events target ON target.redacted_by = e.event_id
		WHERE target.event_id IN (`+placeholders(1, len(eventIDs))+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]Event)
	for rows.Next() {
		var target string
		e, err := scanEvent(prefixScanner{rows, []any{&target}})
		if err != nil {
			return nil, err
		}
		out[target] = e
	}
	return out, rows.Err()
}

// prefixScanner scans leading columns into prefix, then the rest as the
// wrapped scanner's caller asks.
type prefixScanner struct {
	s      interface{ Scan(...any) error }
	prefix []any
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.s.Scan(append(p.prefix[:len(p.prefix):len(p.prefix)], dest...)...)
}

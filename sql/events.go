package sql

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"strconv"
	"strings"
)

// Event is a stored room event.
type Event struct {
	NID            int64
	RoomNID        int64
	RoomID         string
	RoomVersion    string
	EventID        string
	Type           string
	StateKey       *string
	Sender         string
	Depth          int64
	OriginServerTS int64
	StreamPos      int64 // 0 for outliers
	StateBeforeNID int64
	JSON           []byte
	Outlier        bool
	Rejected       bool
	RedactedBy     string
}

// InsertEvent stores an event and returns its NID.
func (t *Queries) InsertEvent(ctx context.Context, e Event) (int64, error) {
	var nid int64
	err := t.q.QueryRowContext(ctx, `INSERT INTO events (room_nid, event_id, type, state_key, sender, depth, origin_server_ts,
			stream_pos, state_before_nid, json, outlier, rejected)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING event_nid`,
		e.RoomNID, e.EventID, e.Type, e.StateKey, e.Sender, e.Depth, e.OriginServerTS,
		nullInt(e.StreamPos), e.StateBeforeNID, string(e.JSON), e.Outlier, e.Rejected).Scan(&nid)
	if isUniqueViolation(err) {
		return 0, ErrExists
	}
	return nid, err
}

// InsertEvents stores events in as few statements as it can and returns
// their NIDs, in the order of events. Their stream positions are left
// unset (see SetEventPositions); the rest is as with InsertEvent.
func (t *Queries) InsertEvents(ctx context.Context, events []Event) ([]int64, error) {
	const chunk = 200 // rows per statement, well under both engines' parameter limits
	nids := make([]int64, 0, len(events))
	for len(events) > 0 {
		n := min(len(events), chunk)
		part := events[:n]
		events = events[n:]
		rows := make([]string, n)
		args := make([]any, 0, 11*n)
		for i, e := range part {
			rows[i] = "(" + placeholders(11*i+1, 11) + ")"
			args = append(args, e.RoomNID, e.EventID, e.Type, e.StateKey, e.Sender, e.Depth, e.OriginServerTS,
				e.StateBeforeNID, string(e.JSON), e.Outlier, e.Rejected)
		}
		res, err := t.q.QueryContext(ctx, `INSERT INTO events (room_nid, event_id, type, state_key, sender, depth, origin_server_ts,
				state_before_nid, json, outlier, rejected)
			VALUES `+strings.Join(rows, ", ")+` RETURNING event_nid, event_id`, args...)
		if isUniqueViolation(err) {
			return nil, ErrExists
		}
		if err != nil {
			return nil, err
		}
		// Neither engine promises RETURNING rows in VALUES order: match
		// them by event id.
		byID := make(map[string]int64, n)
		for res.Next() {
			var nid int64
			var id string
			if err := res.Scan(&nid, &id); err != nil {
				res.Close()
				return nil, err
			}
			byID[id] = nid
		}
		err = res.Err()
		res.Close()
		if isUniqueViolation(err) {
			return nil, ErrExists
		}
		if err != nil {
			return nil, err
		}
		for _, e := range part {
			nid, ok := byID[e.EventID]
			if !ok {
				return nil, fmt.Errorf("insert events: no NID returned for %s", e.EventID)
			}
			nids = append(nids, nid)
		}
	}
	return nids, nil
}

const eventColumns = `e.event_nid, e.room_nid, r.room_id, r.room_version, e.event_id, e.type, e.state_key, e.sender, e.depth,
	e.origin_server_ts, e.stream_pos, e.state_before_nid, e.json, e.outlier, e.rejected, e.redacted_by`

const eventFrom = ` FROM events e JOIN rooms r ON r.room_nid = e.room_nid `

func scanEvent(s interface{ Scan(...any) error }) (Event, error) {
	var e Event
	var stateKey, redactedBy stdsql.NullString
	var streamPos stdsql.NullInt64
	var js string
	err := s.Scan(&e.NID, &e.RoomNID, &e.RoomID, &e.RoomVersion, &e.EventID, &e.Type, &stateKey, &e.Sender, &e.Depth,
		&e.OriginServerTS, &streamPos, &e.StateBeforeNID, &js, &e.Outlier, &e.Rejected, &redactedBy)
	if stateKey.Valid {
		e.StateKey = &stateKey.String
	}
	e.StreamPos, e.RedactedBy, e.JSON = streamPos.Int64, redactedBy.String, []byte(js)
	return e, err
}

// EventByID returns an event, or ErrNotFound.
func (t *Queries) EventByID(ctx context.Context, eventID string) (Event, error) {
	e, err := scanEvent(t.q.QueryRowContext(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.event_id = $1`, eventID))
	return e, noRows(err)
}

// EventsByNID returns the events with the given NIDs, in no set order.
func (t *Queries) EventsByNID(ctx context.Context, nids []int64) ([]Event, error) {
	if len(nids) == 0 {
		return nil, nil
	}
	args := make([]any, len(nids))
	for i, n := range nids {
		args[i] = n
	}
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.event_nid IN (`+placeholders(1, len(nids))+`)`, args...)
}

// EventsByID returns the stored events among ids, in no set order.
func (t *Queries) EventsByID(ctx context.Context, ids []string) ([]Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.event_id IN (`+placeholders(1, len(ids))+`)`, args...)
}

func (t *Queries) queryEvents(ctx context.Context, query string, args ...any) ([]Event, error) {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// EventPosition is where a newly stored event stands: its stream position
// and the state snapshot before it.
type EventPosition struct {
	NID, StreamPos, StateBeforeNID int64
}

// SetEventPositions sets the stream position and state before of each
// event in one statement. Events are inserted without a position and given
// one at the end of their transaction, just after the positions are
// allocated, so the stream's lock is held briefly; the state before comes
// along because it is only known once the events before it in the same
// transaction have their NIDs.
func (t *Queries) SetEventPositions(ctx context.Context, positions []EventPosition) error {
	if len(positions) == 0 {
		return nil
	}
	var stream, before strings.Builder
	in := make([]string, len(positions))
	args := make([]any, 0, 3*len(positions))
	for i, p := range positions {
		fmt.Fprintf(&stream, " WHEN $%d THEN CAST($%d AS BIGINT)", 3*i+1, 3*i+2)
		fmt.Fprintf(&before, " WHEN $%d THEN CAST($%d AS BIGINT)", 3*i+1, 3*i+3)
		in[i] = "$" + strconv.Itoa(3*i+1)
		args = append(args, p.NID, p.StreamPos, p.StateBeforeNID)
	}
	res, err := t.q.ExecContext(ctx, `UPDATE events SET stream_pos = CASE event_nid`+stream.String()+` END,
		state_before_nid = CASE event_nid`+before.String()+` END WHERE event_nid IN (`+strings.Join(in, ", ")+`)`, args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != int64(len(positions)) {
		return fmt.Errorf("set event positions: %d rows changed, want %d", n, len(positions))
	}
	return nil
}

// RedactEvent replaces an event's JSON with its redacted form.
func (t *Queries) RedactEvent(ctx context.Context, eventNID int64, redactedJSON []byte, redactedBy string) error {
	return expectRow(t.q.ExecContext(ctx, `UPDATE events SET json = $1, redacted_by = $2 WHERE event_nid = $3`,
		string(redactedJSON), redactedBy, eventNID))
}

// placeholders returns "$from, $from+1, …" for n arguments.
func placeholders(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(from + i))
	}
	return b.String()
}

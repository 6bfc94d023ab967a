package sql

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"slices"
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
	// NoBundledChildren is set when, as sync's timeline read the event
	// (RoomEventsByStream), no event related to it by a bundled relation
	// type (RelThread, RelReference, RelReplace). Other reads do not look:
	// false says nothing.
	NoBundledChildren bool
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

// withColumns scans the columns before and after those scanEvent asks
// for.
type withColumns struct {
	s             interface{ Scan(...any) error }
	before, after []any
}

func (w withColumns) Scan(dest ...any) error {
	return w.s.Scan(slices.Concat(w.before, dest, w.after)...)
}

// EventByID returns an event, or ErrNotFound.
func (t *Queries) EventByID(ctx context.Context, eventID string) (Event, error) {
	e, err := scanEvent(t.q.QueryRowContext(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.event_id = $1`, eventID))
	return e, noRows(err)
}

// EventsByNID returns the events with the given NIDs, in no set order.
func (t *Queries) EventsByNID(ctx context.Context, nids []int64) ([]Event, error) {
	return eventsByKey(ctx, t, `e.event_nid`, nids)
}

// EventsByID returns the stored events among ids, in no set order.
func (t *Queries) EventsByID(ctx context.Context, ids []string) ([]Event, error) {
	return eventsByKey(ctx, t, `e.event_id`, ids)
}

// maxInList bounds the values of one IN list: far below both engines'
// limits on a statement's parameters (SQLite's is 32,766), and few
// enough distinct statement texts (see chunkSizes) to prepare.
const maxInList = 512

// eventsByKey reads the events whose column is one of keys, in
// statements of at most maxInList keys.
func eventsByKey[K any](ctx context.Context, t *Queries, column string, keys []K) ([]Event, error) {
	var out []Event
	for _, n := range chunkSizes(len(keys), maxInList) {
		args := make([]any, n)
		for i, k := range keys[:n] {
			args[i] = k
		}
		keys = keys[n:]
		evs, err := t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE `+column+` IN (`+placeholders(1, n)+`)`, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
	}
	return out, nil
}

func (t *Queries) queryEvents(ctx context.Context, query string, args ...any) ([]Event, error) {
	return t.queryEventsWith(ctx, scanEvent, query, args...)
}

// queryEventsWith is queryEvents for rows with more than the event
// columns, which scan reads.
func (t *Queries) queryEventsWith(ctx context.Context, scan func(interface{ Scan(...any) error }) (Event, error), query string, args ...any) ([]Event, error) {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		e, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
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

// PendingEvent is an event a pipeline inserts: its NID comes from EventNIDs
// and its stream position is Back positions before the last one the
// transaction allocated (see AllocEventPositions), or none for an
// outlier, or Event.StreamPos when that is negative: a historical event
// (see AllocBackfillPositions).
type PendingEvent struct {
	Event
	Back int64
}

// InsertEvents stores events, each written once with its NID, stream
// position and state before; the pipeline fails with ErrExists if one is
// stored already.
func (p *Pipeline) InsertEvents(events []PendingEvent) {
	mapErr := func(err error) error {
		if isUniqueViolation(err) {
			return ErrExists
		}
		return fmt.Errorf("insert events: %w", err)
	}
	// The outliers of a join, the state of the room and its auth chain,
	// are most of the rows there are to copy; they have no stream
	// position.
	var outliers, others []PendingEvent
	for _, e := range events {
		if e.Outlier {
			outliers = append(outliers, e)
		} else {
			others = append(others, e)
		}
	}
	if p.copyRows(mapErr, "events", []string{"event_nid", "room_nid", "event_id", "type", "state_key", "sender", "depth",
		"origin_server_ts", "state_before_nid", "json", "outlier", "rejected"}, len(outliers), func(i int) []any {
		e := outliers[i]
		return []any{e.NID, e.RoomNID, e.EventID, e.Type, e.StateKey, e.Sender, e.Depth, e.OriginServerTS,
			e.StateBeforeNID, string(e.JSON), true, e.Rejected}
	}) {
		events = others
	}
	for _, n := range chunkSizes(len(events), 64) {
		part := events[:n]
		events = events[n:]
		args := make([]any, 0, 16*n)
		for _, e := range part {
			args = append(args, e.NID, e.RoomNID, e.EventID, e.Type, e.StateKey, e.Sender, e.Depth, e.OriginServerTS,
				e.Outlier, e.StreamPos < 0, e.StreamPos, e.Back, e.StateBeforeNID, string(e.JSON), e.Outlier, e.Rejected)
		}
		p.exec(mapErr, `INSERT INTO events (event_nid, room_nid, event_id, type, state_key, sender, depth, origin_server_ts,
				stream_pos, state_before_nid, json, outlier, rejected)
			VALUES `+valuesRows("?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN NULL WHEN ? THEN CAST(? AS BIGINT) ELSE "+headPos+"? END, ?, ?, ?, ?", 1, n), args...)
	}
}

// RedactEvent is Queries.RedactEvent in a pipeline.
func (p *Pipeline) RedactEvent(eventNID int64, redactedJSON []byte, redactedBy string) {
	p.exec(errPipelineStmt("redact event"), `UPDATE events SET json = $1, redacted_by = $2 WHERE event_nid = $3`,
		string(redactedJSON), redactedBy, eventNID)
}

// EventRelation is the relation an event declares (see RelationOf).
type EventRelation struct {
	EventNID, RoomNID int64
	DeclaredRelation
}

// IndexRelations is Queries.IndexRelation for several events whose
// relations are parsed already.
func (p *Pipeline) IndexRelations(rels []EventRelation) {
	for _, n := range chunkSizes(len(rels), 64) {
		part := rels[:n]
		rels = rels[n:]
		args := make([]any, 0, 5*n)
		for _, r := range part {
			args = append(args, r.EventNID, r.RoomNID, r.RelatesTo, r.RelType, r.Key)
		}
		p.exec(errPipelineStmt("index relations"), `INSERT INTO event_relations (event_nid, room_nid, relates_to_id, rel_type, aggregation_key)
			VALUES `+valuesRows("?, ?, ?, ?, ?", 1, n)+` ON CONFLICT (event_nid) DO NOTHING`, args...)
	}
}

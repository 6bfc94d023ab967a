package sql

import (
	"context"
	stdsql "database/sql"
	"strings"
)

// Report kinds: what a report is about.
const (
	ReportEvent = "event"
	ReportRoom  = "room"
	ReportUser  = "user"
)

// Report is a user's report of an event, a room or a user to this
// server's admins.
type Report struct {
	ID       int64
	Kind     string
	Reporter string
	// RoomID is set for event and room reports, EventID for event reports.
	RoomID, EventID string
	// TargetUserID is the reported user, or an event report's event sender.
	TargetUserID string
	Reason       *string
	Score        *int64
	ReceivedTS   int64
}

// AddReport stores a report and returns its id; ReceivedTS is set to now
// when zero.
func (t *Queries) AddReport(ctx context.Context, r Report) (int64, error) {
	if r.ReceivedTS == 0 {
		r.ReceivedTS = nowMillis()
	}
	var id int64
	err := t.q.QueryRowContext(ctx, `INSERT INTO reports (kind, reporter, room_id, event_id, target_user_id, reason, score, received_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING report_id`,
		r.Kind, r.Reporter, nullString(r.RoomID), nullString(r.EventID), nullString(r.TargetUserID),
		r.Reason, r.Score, r.ReceivedTS).Scan(&id)
	return id, err
}

// ReportQuery selects a page of reports of one kind. The user and room
// filters match substrings (as Synapse's admin API does); empty matches
// everything.
type ReportQuery struct {
	Kind                         string
	Reporter, RoomID, TargetUser string
	Offset, Limit                int
	// OldestFirst lists in the order received; otherwise newest first.
	OldestFirst bool
}

const reportColumns = `report_id, kind, reporter, room_id, event_id, target_user_id, reason, score, received_ts`

// reportFilter is the WHERE clause of ReportQuery, over $1 to $4.
const reportFilter = ` FROM reports WHERE kind = $1
	AND ($2 = '' OR reporter LIKE $2 ESCAPE '\')
	AND ($3 = '' OR room_id LIKE $3 ESCAPE '\')
	AND ($4 = '' OR target_user_id LIKE $4 ESCAPE '\')`

// Reports lists the reports q selects and counts all that match its
// filters.
func (t *Queries) Reports(ctx context.Context, q ReportQuery) ([]Report, int64, error) {
	args := []any{q.Kind, likeSubstring(q.Reporter), likeSubstring(q.RoomID), likeSubstring(q.TargetUser)}
	var total int64
	if err := t.q.QueryRowContext(ctx, `SELECT COUNT(*)`+reportFilter, args...).Scan(&total); err != nil {
		return nil, 0, err
	}
	order := " DESC"
	if q.OldestFirst {
		order = " ASC"
	}
	rows, err := t.q.QueryContext(ctx, `SELECT `+reportColumns+reportFilter+` ORDER BY report_id`+order+` LIMIT $5 OFFSET $6`,
		append(args, q.Limit, q.Offset)...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	out := []Report{}
	for rows.Next() {
		r, err := scanReport(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, r)
	}
	return out, total, rows.Err()
}

// ReportByID returns one report of a kind; ErrNotFound when unknown.
func (t *Queries) ReportByID(ctx context.Context, kind string, id int64) (Report, error) {
	r, err := scanReport(t.q.QueryRowContext(ctx, `SELECT `+reportColumns+` FROM reports WHERE kind = $1 AND report_id = $2`, kind, id))
	return r, noRows(err)
}

// DeleteReport removes a report of a kind; ErrNotFound when unknown.
func (t *Queries) DeleteReport(ctx context.Context, kind string, id int64) error {
	return expectRow(t.q.ExecContext(ctx, `DELETE FROM reports WHERE kind = $1 AND report_id = $2`, kind, id))
}

func scanReport(s interface{ Scan(...any) error }) (Report, error) {
	var r Report
	var room, event, target, reason stdsql.NullString
	var score stdsql.NullInt64
	err := s.Scan(&r.ID, &r.Kind, &r.Reporter, &room, &event, &target, &reason, &score, &r.ReceivedTS)
	r.RoomID, r.EventID, r.TargetUserID = room.String, event.String, target.String
	if reason.Valid {
		r.Reason = &reason.String
	}
	if score.Valid {
		r.Score = &score.Int64
	}
	return r, err
}

// likeSubstring is a LIKE pattern (with \ as the escape) matching s
// anywhere, or "" for no filter.
func likeSubstring(s string) string {
	if s == "" {
		return ""
	}
	esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
	return "%" + esc + "%"
}

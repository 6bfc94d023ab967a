package sql

import (
	"context"
	"encoding/json"
	"fmt"
)

// UIASession is a user-interactive auth session: the stages completed so far
// and what they found out, bound to one request.
type UIASession struct {
	ID        string
	Completed []string
	Results   map[string]string
	Request   string
	CreatedTS int64
}

// CreateUIASession stores a new session.
func (t *Queries) CreateUIASession(ctx context.Context, s UIASession) error {
	completed, results, err := encodeUIA(s)
	if err != nil {
		return err
	}
	_, err = t.q.ExecContext(ctx, `INSERT INTO uia_sessions (session_id, completed, results, request, created_ts) VALUES ($1, $2, $3, $4, $5)`,
		s.ID, completed, results, s.Request, s.CreatedTS)
	return err
}

// UIASession loads a session, or ErrNotFound.
func (t *Queries) UIASession(ctx context.Context, id string) (UIASession, error) {
	s := UIASession{ID: id}
	var completed, results string
	err := t.q.QueryRowContext(ctx, `SELECT completed, results, request, created_ts FROM uia_sessions WHERE session_id = $1`, id).
		Scan(&completed, &results, &s.Request, &s.CreatedTS)
	if err != nil {
		return UIASession{}, noRows(err)
	}
	if err := json.Unmarshal([]byte(completed), &s.Completed); err != nil {
		return UIASession{}, fmt.Errorf("uia session %s: %w", id, err)
	}
	if err := json.Unmarshal([]byte(results), &s.Results); err != nil {
		return UIASession{}, fmt.Errorf("uia session %s: %w", id, err)
	}
	return s, nil
}

// UpdateUIASession records the completed stages and results of a session.
func (t *Queries) UpdateUIASession(ctx context.Context, s UIASession) error {
	completed, results, err := encodeUIA(s)
	if err != nil {
		return err
	}
	return expectRow(t.q.ExecContext(ctx, `UPDATE uia_sessions SET completed = $1, results = $2 WHERE session_id = $3`, completed, results, s.ID))
}

// DeleteUIASession removes a finished session.
func (t *Queries) DeleteUIASession(ctx context.Context, id string) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, id)
	return err
}

// DeleteUIASessionsBefore removes sessions created before ts.
func (t *Queries) DeleteUIASessionsBefore(ctx context.Context, ts int64) error {
	_, err := t.q.ExecContext(ctx, `DELETE FROM uia_sessions WHERE created_ts < $1`, ts)
	return err
}

func encodeUIA(s UIASession) (string, string, error) {
	if s.Completed == nil {
		s.Completed = []string{}
	}
	if s.Results == nil {
		s.Results = map[string]string{}
	}
	c, err := json.Marshal(s.Completed)
	if err != nil {
		return "", "", err
	}
	r, err := json.Marshal(s.Results)
	return string(c), string(r), err
}

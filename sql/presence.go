package sql

import (
	"context"
	"fmt"
)

// Presence is a user's stored presence (see migration 0011 for the
// meaning of each field). Times are in ms since the epoch.
type Presence struct {
	UserID          string
	State           string
	StatusMsg       string
	LastActiveTS    int64
	LastSyncTS      int64
	CurrentlyActive bool
	TimerTS         int64
	StreamPos       int64
}

// PresenceChange replaces a user's presence Prev, as read, with Next.
// Notify gives Next a new presence stream position (a change clients
// must see); otherwise the row keeps its position.
type PresenceChange struct {
	Prev, Next Presence
	Notify     bool
}

const presenceColumns = `p.user_id, p.state, p.status_msg, p.last_active_ts, p.last_sync_ts, p.currently_active, p.timer_ts, p.stream_pos`

// PresenceOf returns a user's stored presence, or ErrNotFound when they
// have none (they are offline).
func (t *Queries) PresenceOf(ctx context.Context, userID string) (Presence, error) {
	ps, err := t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p WHERE p.user_id = $1`, userID)
	if err != nil {
		return Presence{}, err
	}
	if len(ps) == 0 {
		return Presence{}, ErrNotFound
	}
	return ps[0], nil
}

// ApplyPresence writes changes in one transaction and reports which were
// applied. A change applies only when the row is still as its Prev was
// read (same position, last active and last sync times; no row at all
// for a Prev with position 0), so two writers that read the same row,
// in one process or several, never both move it: the loser re-reads or
// lets the row be. Positions are taken after the plain writes, to hold
// the stream's counter lock briefly; a change that then does not apply
// leaves a gap in the stream, which readers do not mind.
func (t *Queries) ApplyPresence(ctx context.Context, changes []PresenceChange) ([]bool, error) {
	applied := make([]bool, len(changes))
	if len(changes) == 0 {
		return applied, nil
	}
	err := t.ensureTx(ctx, func(q *Queries) error {
		var notify []int
		for i, c := range changes {
			if c.Notify {
				notify = append(notify, i)
				continue
			}
			next := c.Next
			next.StreamPos = c.Prev.StreamPos
			ok, err := q.putPresence(ctx, c.Prev, next)
			if err != nil {
				return err
			}
			applied[i] = ok
		}
		if len(notify) == 0 {
			return nil
		}
		first, err := q.AllocStreamPositions(ctx, PresenceStream, len(notify))
		if err != nil {
			return err
		}
		for k, i := range notify {
			next := changes[i].Next
			next.StreamPos = first + int64(k)
			ok, err := q.putPresence(ctx, changes[i].Prev, next)
			if err != nil {
				return err
			}
			applied[i] = ok
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("write presence: %w", err)
	}
	return applied, nil
}

// putPresence writes next over the row if it is still prev.
func (t *Queries) putPresence(ctx context.Context, prev, next Presence) (bool, error) {
	res, err := t.q.ExecContext(ctx, `INSERT INTO presence (user_id, state, status_msg, last_active_ts, last_sync_ts,
			currently_active, timer_ts, stream_pos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
			last_active_ts = excluded.last_active_ts, last_sync_ts = excluded.last_sync_ts,
			currently_active = excluded.currently_active, timer_ts = excluded.timer_ts, stream_pos = excluded.stream_pos
		WHERE presence.stream_pos = $9 AND presence.last_active_ts = $10 AND presence.last_sync_ts = $11`,
		next.UserID, next.State, next.StatusMsg, next.LastActiveTS, next.LastSyncTS, next.CurrentlyActive, next.TimerTS,
		next.StreamPos, prev.StreamPos, prev.LastActiveTS, prev.LastSyncTS)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// DuePresence returns up to limit rows whose timer is due at now, the
// most overdue first.
func (t *Queries) DuePresence(ctx context.Context, now int64, limit int) ([]Presence, error) {
	return t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p
		WHERE p.timer_ts > 0 AND p.timer_ts <= $1 ORDER BY p.timer_ts LIMIT $2`, now, limit)
}

// sharesJoinedRoom is true for a row of p whose user is joined to a room
// the user $1 is joined to.
const sharesJoinedRoom = `EXISTS (SELECT 1 FROM room_members m2 JOIN room_members m1 ON m1.room_nid = m2.room_nid
	WHERE m2.user_id = p.user_id AND m2.membership = 'join' AND m1.user_id = $1 AND m1.membership = 'join')`

// PresenceChanged returns the presence of userID and of the users who
// share a joined room with them now, for the rows whose position lies in
// (since, upper], oldest change first, at most limit.
func (t *Queries) PresenceChanged(ctx context.Context, userID string, since, upper int64, limit int) ([]Presence, error) {
	return t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p
		WHERE p.stream_pos > $2 AND p.stream_pos <= $3 AND (p.user_id = $1 OR `+sharesJoinedRoom+`)
		ORDER BY p.stream_pos LIMIT $4`, userID, since, upper, limit)
}

// PresenceOfPeers returns the presence, other than offline, of userID and
// of the users who share a joined room with them, as of position upper
// (a row changed later is the next sync's), latest change first, at most
// limit: what an initial sync tells.
func (t *Queries) PresenceOfPeers(ctx context.Context, userID string, upper int64, limit int) ([]Presence, error) {
	return t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p
		WHERE p.state <> 'offline' AND p.stream_pos <= $2 AND (p.user_id = $1 OR `+sharesJoinedRoom+`)
		ORDER BY p.stream_pos DESC LIMIT $3`, userID, upper, limit)
}

// PresenceOfNewPeers returns the presence, other than offline, of the
// users userID newly shares a room with: the members of the rooms they
// joined in (lo, hi] of the events stream, and those who joined their
// rooms in that window. Rows changed after presence position upper are
// left for the next sync. Latest change first, at most limit.
func (t *Queries) PresenceOfNewPeers(ctx context.Context, userID string, lo, hi, upper int64, limit int) ([]Presence, error) {
	return t.queryPresence(ctx, `SELECT `+presenceColumns+` FROM presence p WHERE p.user_id IN (
			SELECT m2.user_id FROM room_members m1 JOIN room_members m2 ON m2.room_nid = m1.room_nid
			WHERE m1.user_id = $1 AND m1.membership = 'join' AND m1.stream_pos > $2 AND m1.stream_pos <= $3
				AND m2.membership = 'join'
			UNION
			SELECT m2.user_id FROM room_members m1 JOIN room_members m2 ON m2.room_nid = m1.room_nid
			WHERE m1.user_id = $1 AND m1.membership = 'join'
				AND m2.stream_pos > $2 AND m2.stream_pos <= $3 AND m2.membership = 'join')
		AND p.user_id <> $1 AND p.state <> 'offline' AND p.stream_pos <= $4
		ORDER BY p.stream_pos DESC LIMIT $5`, userID, lo, hi, upper, limit)
}

// SharesJoinedRoom reports whether two users are both joined to some room.
func (t *Queries) SharesJoinedRoom(ctx context.Context, a, b string) (bool, error) {
	var n int
	err := t.q.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM room_members m1
		JOIN room_members m2 ON m2.room_nid = m1.room_nid
		WHERE m1.user_id = $1 AND m1.membership = 'join' AND m2.user_id = $2 AND m2.membership = 'join' LIMIT 1) x`,
		a, b).Scan(&n)
	return n > 0, err
}

// JoinedRoomsOf returns the rooms any of the users is joined to, each once.
func (t *Queries) JoinedRoomsOf(ctx context.Context, userIDs []string) ([]string, error) {
	if len(userIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(userIDs))
	for i, u := range userIDs {
		args[i] = u
	}
	rows, err := t.q.QueryContext(ctx, `SELECT DISTINCT r.room_id FROM room_members m JOIN rooms r ON r.room_nid = m.room_nid
		WHERE m.membership = 'join' AND m.user_id IN (`+placeholders(1, len(userIDs))+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (t *Queries) queryPresence(ctx context.Context, query string, args ...any) ([]Presence, error) {
	rows, err := t.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read presence: %w", err)
	}
	defer rows.Close()
	var out []Presence
	for rows.Next() {
		var p Presence
		if err := rows.Scan(&p.UserID, &p.State, &p.StatusMsg, &p.LastActiveTS, &p.LastSyncTS, &p.CurrentlyActive,
			&p.TimerTS, &p.StreamPos); err != nil {
			return nil, fmt.Errorf("read presence: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

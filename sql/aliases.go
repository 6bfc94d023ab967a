package sql

import (
	"context"
	"fmt"
)

// CreateAlias points a new local alias at a room; ErrExists when the alias
// is taken. It never fails the surrounding transaction on a taken alias
// (ON CONFLICT, not a unique violation), so createRoom may try it inside
// one and report the conflict.
func (t *Queries) CreateAlias(ctx context.Context, alias, roomID, creator string) error {
	res, err := t.q.ExecContext(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (alias) DO NOTHING`, alias, roomID, creator, nowMillis())
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("rows affected: %w", err)
	}
	if n == 0 {
		return ErrExists
	}
	return nil
}

// AliasRoom resolves a local alias to its room; ErrNotFound when unknown.
func (t *Queries) AliasRoom(ctx context.Context, alias string) (roomID string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT room_id FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID)
	return roomID, noRows(err)
}

// AliasCreator returns a local alias's room and the user who created it;
// ErrNotFound when unknown.
func (t *Queries) AliasCreator(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = t.q.QueryRowContext(ctx, `SELECT room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	return roomID, creator, noRows(err)
}

// DeleteAlias removes a local alias and returns the room it pointed to;
// ErrNotFound when unknown (also when a concurrent delete won).
func (t *Queries) DeleteAlias(ctx context.Context, alias string) (roomID string, err error) {
	err = t.q.QueryRowContext(ctx, `DELETE FROM room_aliases WHERE alias = $1 RETURNING room_id`, alias).Scan(&roomID)
	return roomID, noRows(err)
}

// RoomAliases lists the local aliases pointing at a room, sorted.
func (t *Queries) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

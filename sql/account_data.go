package sql

import (
	"context"
	"fmt"
)

// AccountDataStream names the account data counter in stream_positions.
const AccountDataStream = "account_data"

// AccountData is one account data entry: global when RoomID is empty.
type AccountData struct {
	RoomID  string
	Type    string
	Content []byte // a JSON object
	// StreamPos is the position of the entry's latest write.
	StreamPos int64
}

// PutAccountData stores content (a JSON object) as the user's account data
// of type, global when roomID is empty, and returns the stream position it
// took. The position and the write commit together: inside WithTx they
// share the caller's transaction, outside it they get their own, because a
// position taken in one transaction and written in another could commit
// out of order and be skipped by a sync.
func (t *Queries) PutAccountData(ctx context.Context, localpart, roomID, typ string, content []byte) (int64, error) {
	var pos int64
	err := t.ensureTx(ctx, func(q *Queries) error {
		var err error
		if pos, err = q.AllocStreamPos(ctx, AccountDataStream); err != nil {
			return err
		}
		_, err = q.q.ExecContext(ctx, `INSERT INTO account_data (localpart, room_id, type, content, stream_pos) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (localpart, room_id, type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos`,
			localpart, roomID, typ, string(content), pos)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("put account data %s: %w", typ, err)
	}
	return pos, nil
}

// AccountDataContent returns the content of one entry, or ErrNotFound.
func (t *Queries) AccountDataContent(ctx context.Context, localpart, roomID, typ string) ([]byte, error) {
	var content string
	err := t.q.QueryRowContext(ctx, `SELECT content FROM account_data WHERE localpart = $1 AND room_id = $2 AND type = $3`,
		localpart, roomID, typ).Scan(&content)
	if err != nil {
		return nil, noRows(err)
	}
	return []byte(content), nil
}

// AccountDataSince returns the user's entries, global and per room, written
// after position since, oldest write first. Each entry appears once with its
// newest content, however often it was written; its StreamPos lets a sync
// that fixed its upper bound before reading leave later writes for the next
// sync.
func (t *Queries) AccountDataSince(ctx context.Context, localpart string, since int64) ([]AccountData, error) {
	rows, err := t.q.QueryContext(ctx, `SELECT room_id, type, content, stream_pos FROM account_data
		WHERE localpart = $1 AND stream_pos > $2 ORDER BY stream_pos`, localpart, since)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AccountData
	for rows.Next() {
		var d AccountData
		var content string
		if err := rows.Scan(&d.RoomID, &d.Type, &content, &d.StreamPos); err != nil {
			return nil, err
		}
		d.Content = []byte(content)
		out = append(out, d)
	}
	return out, rows.Err()
}

// AccountDataPosition is the latest committed account data position: a
// sync that read it may then read (since, position] with no gap.
func (t *Queries) AccountDataPosition(ctx context.Context) (int64, error) {
	return t.StreamPos(ctx, AccountDataStream)
}

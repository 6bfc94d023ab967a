package sql

import (
	"context"
	"errors"
	"fmt"
)

// errAccountDataUnchanged rolls back an UpdateAccountData whose update
// left the entry alone.
var errAccountDataUnchanged = errors.New("account data unchanged")

// UpdateAccountData rewrites one account data entry from its current
// content, for entries the server edits rather than replaces (room tags,
// the fully read marker). update gets the current content (nil when the
// entry is unset) and returns the new one, or nil to leave the entry as
// it is; it may read through q, which is the transaction. The read and
// the write hold the account data counter, which every writer of account
// data takes, so two concurrent updates of an entry cannot lose each
// other's change. It returns the stream position of the write, 0 when
// update left the entry alone.
func (t *Queries) UpdateAccountData(ctx context.Context, localpart, roomID, typ string,
	update func(q *Queries, old []byte) ([]byte, error)) (int64, error) {
	var pos int64
	err := t.ensureTx(ctx, func(q *Queries) error {
		// A no-op write locks the counter row without taking a position.
		if _, err := q.q.ExecContext(ctx, `UPDATE stream_positions SET pos = pos WHERE stream = $1`, AccountDataStream); err != nil {
			return err
		}
		old, err := q.AccountDataContent(ctx, localpart, roomID, typ)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		content, err := update(q, old)
		if err != nil {
			return err
		}
		if content == nil {
			return errAccountDataUnchanged
		}
		pos, err = q.PutAccountData(ctx, localpart, roomID, typ, content)
		return err
	})
	if errors.Is(err, errAccountDataUnchanged) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("update account data %s: %w", typ, err)
	}
	return pos, nil
}

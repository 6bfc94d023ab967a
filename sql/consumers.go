package sql

import (
	"context"
	"errors"
	"fmt"
)

// Consumers of the room event stream that must not miss an event (the
// federation sender) keep their position here and read the events after
// it from the events table: NATS only wakes them.

// ErrConsumerMoved is returned by AdvanceConsumer when the consumer's
// position is no longer the one the caller read: another process handled
// those events first.
var ErrConsumerMoved = errors.New("consumer position moved")

// ConsumerPosition is the last events stream position the consumer
// handled, or ErrNotFound when its migration did not record one.
func (t *Queries) ConsumerPosition(ctx context.Context, consumer string) (int64, error) {
	var pos int64
	err := t.q.QueryRowContext(ctx, `SELECT pos FROM consumer_positions WHERE consumer = $1`, consumer).Scan(&pos)
	return pos, noRows(err)
}

// AdvanceConsumer moves the consumer's position from from to to, in the
// caller's transaction, so that the position moves if and only if what
// the consumer did for those events commits. It fails with
// ErrConsumerMoved unless the position is still from; on PostgreSQL the
// row stays locked until the transaction ends, so two processes never
// both handle the same events.
func (t *Queries) AdvanceConsumer(ctx context.Context, consumer string, from, to int64) error {
	n, err := rowsAffected(t.q.ExecContext(ctx, `UPDATE consumer_positions SET pos = $3 WHERE consumer = $1 AND pos = $2`, consumer, from, to))
	if err != nil {
		return fmt.Errorf("advance consumer %s: %w", consumer, err)
	}
	if n == 0 {
		return ErrConsumerMoved
	}
	return nil
}

// ServerEventsAfter returns up to limit timeline events (neither outliers
// nor rejected) sent by users of serverName whose stream position is above
// pos, oldest first. Positions commit in order (see AllocStreamPos), so
// the events returned are all there are up to the last one's position.
func (t *Queries) ServerEventsAfter(ctx context.Context, pos int64, serverName string, limit int) ([]Event, error) {
	return t.queryEvents(ctx, `SELECT `+eventColumns+eventFrom+`WHERE e.stream_pos > $1 AND`+timelineWhere+`
		AND `+localSuffix("e.sender", 2)+` ORDER BY e.stream_pos LIMIT $4`, pos, ":"+serverName, len(serverName)+1, limit)
}

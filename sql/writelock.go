package sql

import "context"

// writeLock queues a process's SQLite writers before they reach SQLite.
// SQLite admits one writer at a time, and one that finds the database
// locked sleeps in its busy handler and tries again, with no queue: under
// a steady stream of writes a writer may keep losing, for a second or more
// (TestSQLiteWritersQueue). Taken before BEGIN and before each write
// outside a transaction, the lock hands the database over in arrival
// order. It is nil on PostgreSQL, whose writers wait in line already.
type writeLock chan struct{}

func newWriteLock() writeLock { return make(writeLock, 1) }

func (l writeLock) lock(ctx context.Context) error {
	if l == nil {
		return nil
	}
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l writeLock) unlock() {
	if l != nil {
		<-l
	}
}

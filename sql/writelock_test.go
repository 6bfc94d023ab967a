package sql_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSQLiteWritersQueue: concurrent writers, in transactions and not (the
// first goroutine), each wait only for the writes ahead of them. Without the write lock a
// writer that found the database locked slept in SQLite's busy handler,
// a second or more, a few times in every run of this test.
func TestSQLiteWritersQueue(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	ctx := context.Background()
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for g := range 5 {
		wg.Go(func() {
			for range 300 {
				start := time.Now()
				var err error
				if g > 0 {
					err = db.WithTx(ctx, func(q *sql.Queries) error {
						_, err := q.PutAccountData(ctx, "alice", "", fmt.Sprintf("t.%d", g), []byte(`{}`))
						time.Sleep(200 * time.Microsecond) // the other writers find the lock taken
						return err
					})
				} else {
					_, err = db.PutAccountData(ctx, "alice", "", fmt.Sprintf("t.%d", g), []byte(`{}`))
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				slowest = max(slowest, time.Since(start))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if slowest > 900*time.Millisecond {
		t.Errorf("the slowest write took %v", slowest)
	}
}

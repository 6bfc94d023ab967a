package sql_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSQLiteCheckpointsInTheBackground: no commit checkpoints the
// write-ahead log (wal_autocheckpoint is off), yet what commits reaches
// the database file within a tick or two of the checkpointer.
func TestSQLiteCheckpointsInTheBackground(t *testing.T) {
	ctx := context.Background()
	url := sqltest.URL(t, config.SQLite)
	db, err := sql.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	path := strings.TrimPrefix(url, "sqlite:")
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	// The migrations' own writes reach the file first.
	time.Sleep(1500 * time.Millisecond)
	before := size()
	// Far more than the 1,000 pages a commit would checkpoint at.
	for i := range 200 {
		if err := db.WithTx(ctx, func(q *sql.Queries) error {
			for j := range 50 {
				if _, err := q.PutAccountData(ctx, "alice", "", fmt.Sprintf("t.%d.%d", i, j), []byte(`{"pad":"`+strings.Repeat("x", 1000)+`"}`)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for size() < before+5_000_000 {
		if time.Now().After(deadline) {
			t.Fatalf("the database file stayed at %d bytes (from %d)", size(), before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

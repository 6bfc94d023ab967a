package sql_test

import (
	"context"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestBackfillPositions: each block of historical positions lies below
// the one before, all negative, and the events stream's counter, which
// /sync reads, does not move.
func TestBackfillPositions(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		before, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var firsts []int64
		for _, n := range []int{3, 2, 100} {
			first, err := db.AllocBackfillPositions(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			firsts = append(firsts, first)
		}
		if want := []int64{-3, -5, -105}; !slices.Equal(firsts, want) {
			t.Errorf("blocks start at %v, want %v", firsts, want)
		}
		if after, err := db.SyncPositions(ctx); err != nil || after != before {
			t.Errorf("sync positions moved: %+v, was %+v (%v)", after, before, err)
		}
	})
}

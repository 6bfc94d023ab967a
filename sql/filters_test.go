package sql_test

import (
	"context"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestFilters(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		f1 := []byte(`{"room":{"timeline":{"limit":10}}}`)
		f2 := []byte(`{"presence":{"types":[]}}`)
		id1, err := db.CreateFilter(ctx, "alice", f1)
		if err != nil {
			t.Fatal(err)
		}
		id2, err := db.CreateFilter(ctx, "alice", f2)
		if err != nil {
			t.Fatal(err)
		}
		if id1 == id2 {
			t.Fatalf("two filters share id %d", id1)
		}
		// The same filter again keeps its id; another user's copy does not.
		if again, err := db.CreateFilter(ctx, "alice", f1); err != nil || again != id1 {
			t.Fatalf("re-upload: %d, %v; want %d", again, err, id1)
		}
		bobs, err := db.CreateFilter(ctx, "bob", f1)
		if err != nil || bobs == id1 {
			t.Fatalf("bob's copy: %d, %v", bobs, err)
		}
		for id, want := range map[int64][]byte{id1: f1, id2: f2} {
			got, err := db.Filter(ctx, "alice", id)
			if err != nil || string(got) != string(want) {
				t.Fatalf("filter %d: %s, %v; want %s", id, got, err, want)
			}
		}
		if _, err := db.Filter(ctx, "bob", id1); err != sql.ErrNotFound {
			t.Fatalf("another user's filter: %v, want ErrNotFound", err)
		}
		if _, err := db.Filter(ctx, "alice", 999999); err != sql.ErrNotFound {
			t.Fatalf("unknown filter: %v, want ErrNotFound", err)
		}
	})
}

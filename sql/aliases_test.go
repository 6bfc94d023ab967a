package sql_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestAliases(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.AliasRoom(ctx, "#a:hs"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("unknown alias: %v, want ErrNotFound", err)
		}
		if err := db.CreateAlias(ctx, "#a:hs", "!r1:hs", "@alice:hs"); err != nil {
			t.Fatal(err)
		}
		if err := db.CreateAlias(ctx, "#b:hs", "!r1:hs", "@bob:hs"); err != nil {
			t.Fatal(err)
		}
		// Aliases are case sensitive, as in Synapse.
		if err := db.CreateAlias(ctx, "#A:hs", "!r2:hs", "@bob:hs"); err != nil {
			t.Fatal(err)
		}
		if err := db.CreateAlias(ctx, "#a:hs", "!r2:hs", "@bob:hs"); !errors.Is(err, sql.ErrExists) {
			t.Fatalf("taken alias: %v, want ErrExists", err)
		}
		if room, err := db.AliasRoom(ctx, "#a:hs"); err != nil || room != "!r1:hs" {
			t.Fatalf("AliasRoom = %q, %v; the failed create must not move it", room, err)
		}
		if room, creator, err := db.AliasCreator(ctx, "#b:hs"); err != nil || room != "!r1:hs" || creator != "@bob:hs" {
			t.Fatalf("AliasCreator = %q, %q, %v", room, creator, err)
		}
		if got, err := db.RoomAliases(ctx, "!r1:hs"); err != nil || !slices.Equal(got, []string{"#a:hs", "#b:hs"}) {
			t.Fatalf("RoomAliases = %v, %v", got, err)
		}
		if got, err := db.RoomAliases(ctx, "!none:hs"); err != nil || got == nil || len(got) != 0 {
			t.Fatalf("RoomAliases of a room without aliases = %#v, %v; want an empty, non-nil list", got, err)
		}
		if room, err := db.DeleteAlias(ctx, "#a:hs"); err != nil || room != "!r1:hs" {
			t.Fatalf("DeleteAlias = %q, %v", room, err)
		}
		if _, err := db.DeleteAlias(ctx, "#a:hs"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("second delete: %v, want ErrNotFound", err)
		}
		if _, err := db.AliasRoom(ctx, "#a:hs"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("deleted alias: %v, want ErrNotFound", err)
		}
		// A deleted alias can be taken again.
		if err := db.CreateAlias(ctx, "#a:hs", "!r2:hs", "@carol:hs"); err != nil {
			t.Fatal(err)
		}
	})
}

// A taken alias inside a transaction must leave the transaction usable:
// createRoom reserves aliases in one (PostgreSQL aborts a transaction on a
// unique violation).
func TestCreateAliasTakenInTransaction(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if err := db.CreateAlias(ctx, "#a:hs", "!r1:hs", "@alice:hs"); err != nil {
			t.Fatal(err)
		}
		err := db.WithTx(ctx, func(q *sql.Queries) error {
			if err := q.CreateAlias(ctx, "#a:hs", "!r2:hs", "@bob:hs"); !errors.Is(err, sql.ErrExists) {
				t.Fatalf("taken alias: %v, want ErrExists", err)
			}
			return q.CreateAlias(ctx, "#b:hs", "!r2:hs", "@bob:hs")
		})
		if err != nil {
			t.Fatalf("transaction after a taken alias: %v", err)
		}
		if room, err := db.AliasRoom(ctx, "#b:hs"); err != nil || room != "!r2:hs" {
			t.Fatalf("AliasRoom = %q, %v", room, err)
		}
	})
}

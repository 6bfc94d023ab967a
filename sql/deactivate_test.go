package sql_test

import (
	"context"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestDeleteUserSessionsAndProfile(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, who := range []string{"alice", "bob"} {
			if err := db.CreateAccount(ctx, sql.Account{Localpart: who}); err != nil {
				t.Fatal(err)
			}
			if err := db.UpsertDevice(ctx, who, "D1", "one"); err != nil {
				t.Fatal(err)
			}
			for i, h := range []string{"a", "b"} {
				if err := db.AddAccessToken(ctx, []byte(who+h), who, "D1", int64(i)); err != nil {
					t.Fatal(err)
				}
			}
			// A token whose device row is gone must go too.
			if err := db.AddAccessToken(ctx, []byte(who+"orphan"), who, "GONE", 0); err != nil {
				t.Fatal(err)
			}
			if err := db.AddRefreshToken(ctx, []byte(who+"r"), who, "D1"); err != nil {
				t.Fatal(err)
			}
			if err := db.AddLoginToken(ctx, []byte(who+"l"), who, 1<<62); err != nil {
				t.Fatal(err)
			}
			if err := db.PutProfileFieldForTest(ctx, who, "displayname", `"`+who+`"`); err != nil {
				t.Fatal(err)
			}
		}

		var revoked [][]byte
		err := db.WithTx(ctx, func(q *sql.Queries) error {
			var err error
			if revoked, err = q.DeleteUserSessions(ctx, "alice"); err != nil {
				return err
			}
			return q.DeleteProfile(ctx, "alice")
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(revoked) != 3 {
			t.Fatalf("revoked %d access tokens, want 3", len(revoked))
		}
		// Bob's rows are untouched.
		bobRows := map[string]int{"access_tokens": 3, "refresh_tokens": 1, "login_tokens": 1, "devices": 1, "profile_fields": 1}
		for table, bobWant := range bobRows {
			for who, want := range map[string]int{"alice": 0, "bob": bobWant} {
				n, err := db.CountRowsForTest(ctx, table, who)
				if err != nil {
					t.Fatal(err)
				}
				if n != want {
					t.Errorf("%s rows of %s: %d, want %d", table, who, n, want)
				}
			}
		}
	})
}

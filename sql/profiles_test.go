package sql_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestProfileFields(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if f, err := db.ProfileFields(ctx, "alice"); err != nil || len(f) != 0 {
			t.Fatalf("empty profile: %v, %v", f, err)
		}
		if _, err := db.ProfileField(ctx, "alice", "displayname"); err != sql.ErrNotFound {
			t.Fatalf("unset field: %v", err)
		}
		for k, v := range map[string]string{"displayname": `"Alice"`, "org.example.tags": `["a",{"b":null}]`, "m.tz": `"Europe/Paris"`} {
			if err := db.SetProfileField(ctx, "alice", k, json.RawMessage(v)); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.SetProfileField(ctx, "alice", "displayname", json.RawMessage(`"Alice B"`)); err != nil {
			t.Fatal(err)
		}
		if err := db.SetProfileField(ctx, "bob", "displayname", json.RawMessage(`"Bob"`)); err != nil {
			t.Fatal(err)
		}
		f, err := db.ProfileFields(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"displayname": `"Alice B"`, "org.example.tags": `["a",{"b":null}]`, "m.tz": `"Europe/Paris"`}
		if len(f) != len(want) {
			t.Fatalf("fields %v", f)
		}
		for k, v := range want {
			if string(f[k]) != v {
				t.Fatalf("%s = %s, want %s", k, f[k], v)
			}
		}
		if v, err := db.ProfileField(ctx, "alice", "org.example.tags"); err != nil || string(v) != want["org.example.tags"] {
			t.Fatalf("field: %s, %v", v, err)
		}
		if err := db.DeleteProfileField(ctx, "alice", "m.tz"); err != nil {
			t.Fatal(err)
		}
		if err := db.DeleteProfileField(ctx, "alice", "m.tz"); err != nil {
			t.Fatalf("deleting an unset field: %v", err)
		}
		if _, err := db.ProfileField(ctx, "alice", "m.tz"); err != sql.ErrNotFound {
			t.Fatalf("deleted field: %v", err)
		}
		if v, _ := db.ProfileField(ctx, "bob", "displayname"); string(v) != `"Bob"` {
			t.Fatalf("bob's profile changed: %s", v)
		}
	})
}

func TestLockProfile(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		err := db.WithTx(ctx, func(q *sql.Queries) error { return q.LockProfile(ctx, "nobody") })
		if err != sql.ErrNotFound {
			t.Fatalf("lock of a missing account: %v, want ErrNotFound", err)
		}
		if err := db.CreateAccount(ctx, sql.Account{Localpart: "alice"}); err != nil {
			t.Fatal(err)
		}
		err = db.WithTx(ctx, func(q *sql.Queries) error { return q.LockProfile(ctx, "alice") })
		if err != nil {
			t.Fatal(err)
		}
	})
}

package sql_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestServerKeys(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if got, err := db.ServerKeysFor(ctx, []string{"a.example"}); err != nil || len(got) != 0 {
			t.Fatalf("empty cache: %v, %v", got, err)
		}
		if got, err := db.ServerKeysFor(ctx, nil); err != nil || got != nil {
			t.Fatalf("no servers: %v, %v", got, err)
		}
		a1 := sql.ServerKey{ServerName: "a.example", KeyID: "ed25519:1", PublicKey: "AAAA", ValidUntilTS: 2000, FetchedTS: 1000}
		a0 := sql.ServerKey{ServerName: "a.example", KeyID: "ed25519:0", PublicKey: "BBBB", ExpiredTS: 500, FetchedTS: 1000}
		b1 := sql.ServerKey{ServerName: "b.example:8448", KeyID: "ed25519:x", PublicKey: "CCCC", ValidUntilTS: 3000, FetchedTS: 1000}
		if err := db.StoreServerKeys(ctx, []sql.ServerKey{a1, a0, b1}); err != nil {
			t.Fatal(err)
		}
		got, err := db.ServerKeysFor(ctx, []string{"a.example", "b.example:8448", "c.example"})
		if err != nil {
			t.Fatal(err)
		}
		if want := []sql.ServerKey{a0, a1, b1}; !reflect.DeepEqual(got, want) {
			t.Fatalf("ServerKeysFor = %+v, want %+v", got, want)
		}
		// A refetch replaces the row: the key moved to old_verify_keys.
		a1.ValidUntilTS, a1.ExpiredTS, a1.FetchedTS = 0, 2500, 3000
		if err := db.StoreServerKeys(ctx, []sql.ServerKey{a1}); err != nil {
			t.Fatal(err)
		}
		got, err = db.ServerKeysFor(ctx, []string{"a.example"})
		if err != nil {
			t.Fatal(err)
		}
		if want := []sql.ServerKey{a0, a1}; !reflect.DeepEqual(got, want) {
			t.Fatalf("after replace = %+v, want %+v", got, want)
		}
	})
}

func TestServerKeyJSON(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if got, err := db.ServerKeyJSONs(ctx, "a.example"); err != nil || len(got) != 0 {
			t.Fatalf("empty: %v, %v", got, err)
		}
		first := []byte(`{"server_name":"a.example","valid_until_ts":2000}`)
		if err := db.StoreServerKeyJSON(ctx, "a.example", []string{"ed25519:1", "ed25519:0"}, first, 2000, 1000); err != nil {
			t.Fatal(err)
		}
		// A newer document lists only the current key: the old key keeps
		// the last document that carried it.
		second := []byte(`{"server_name":"a.example","valid_until_ts":9000}`)
		if err := db.StoreServerKeyJSON(ctx, "a.example", []string{"ed25519:1"}, second, 9000, 5000); err != nil {
			t.Fatal(err)
		}
		if err := db.StoreServerKeyJSON(ctx, "b.example", []string{"ed25519:1"}, []byte(`{}`), 1, 1); err != nil {
			t.Fatal(err)
		}
		got, err := db.ServerKeyJSONs(ctx, "a.example")
		if err != nil {
			t.Fatal(err)
		}
		want := []sql.ServerKeyJSON{
			{KeyID: "ed25519:1", JSON: second, ValidUntilTS: 9000, FetchedTS: 5000},
			{KeyID: "ed25519:0", JSON: first, ValidUntilTS: 2000, FetchedTS: 1000},
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ServerKeyJSONs = %+v, want %+v", got, want)
		}
	})
}

package sql_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// BenchmarkSyncHead: the read every woken sync starts with, for a user
// in 50 rooms of 51 members.
func BenchmarkSyncHead(b *testing.B) {
	for _, engine := range sqltest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			db := sqltest.Open(b, engine)
			ctx := context.Background()
			const bob = "@bob:test"
			for r := range 50 {
				room, err := db.CreateRoom(ctx, fmt.Sprintf("!r%d:test", r), "11")
				if err != nil {
					b.Fatal(err)
				}
				for u := range 50 {
					pos := int64(r*100 + u + 1)
					if err := db.SetMembership(ctx, room, fmt.Sprintf("@u%d:test", u), "join", pos, pos); err != nil {
						b.Fatal(err)
					}
				}
				if err := db.SetMembership(ctx, room, bob, "join", int64(r*100+99), int64(r*100+99)); err != nil {
					b.Fatal(err)
				}
			}
			req := sql.SyncHeadRequest{UserID: bob, Localpart: "bob", DeviceID: "B1", WantCountChanges: true, WantUnread: true,
				AccountDataTypes: []string{"m.ignored_user_list", "m.invite_permission_config"}}
			for b.Loop() {
				if _, err := db.SyncHead(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSyncHeads: the heads of the 50 members of a room that an event
// wakes together, read one by one and in one batch.
func BenchmarkSyncHeads(b *testing.B) {
	for _, engine := range sqltest.Engines() {
		db := sqltest.Open(b, engine)
		ctx := context.Background()
		room, err := db.CreateRoom(ctx, "!fanout:test", "11")
		if err != nil {
			b.Fatal(err)
		}
		var reqs []sql.SyncHeadRequest
		for u := range 50 {
			user := fmt.Sprintf("@u%d:test", u)
			if err := db.SetMembership(ctx, room, user, "join", int64(u+1), int64(u+1)); err != nil {
				b.Fatal(err)
			}
			reqs = append(reqs, sql.SyncHeadRequest{UserID: user, Localpart: fmt.Sprintf("u%d", u), DeviceID: "D",
				WantCountChanges: true, WantUnread: true, AccountDataTypes: []string{"m.ignored_user_list"}})
		}
		b.Run(string(engine)+"/one-by-one", func(b *testing.B) {
			for b.Loop() {
				for _, r := range reqs {
					if _, err := db.SyncHead(ctx, r); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(string(engine)+"/batched", func(b *testing.B) {
			for b.Loop() {
				if _, err := db.SyncHeads(ctx, reqs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package sql_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func receiptsPos(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	p, err := db.SyncPositions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p.Receipts
}

func TestReceiptsStorage(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const alice, bob, carol = "@alice:hs", "@bob:hs", "@carol:hs"
		room := typingRoom(t, db, "!r:hs", alice, bob)
		other := typingRoom(t, db, "!other:hs", carol)
		put := func(r sql.Receipt) (int64, bool) {
			t.Helper()
			pos, stored, err := db.PutReceipt(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			return pos, stored
		}
		read := func(user string, since, upper int64) map[string]sql.Receipt {
			t.Helper()
			rs, err := db.SyncReceipts(ctx, user, since, upper)
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]sql.Receipt{}
			for _, r := range rs {
				out[fmt.Sprintf("%d %s %s %s", r.RoomNID, r.Type, r.UserID, r.ThreadID)] = r
			}
			return out
		}

		p1, stored := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: alice, EventID: "$e5", EventPos: 5, TS: 100})
		if !stored || p1 != 1 {
			t.Fatalf("first receipt: pos %d stored %v", p1, stored)
		}
		// Receipts only move forward: the same event or an older one is
		// ignored and takes no position.
		if _, stored := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: alice, EventID: "$e5", EventPos: 5, TS: 200}); stored {
			t.Fatal("a receipt for the same event was stored again")
		}
		if _, stored := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: alice, EventID: "$e3", EventPos: 3, TS: 200}); stored {
			t.Fatal("a receipt for an older event was stored")
		}
		if p := receiptsPos(t, db); p != p1 {
			t.Fatalf("ignored receipts moved the stream to %d", p)
		}
		// Types and threads are separate: each has its own receipt.
		pPriv, _ := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptReadPrivate, UserID: alice, EventID: "$e3", EventPos: 3, TS: 300})
		pMain, _ := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: alice, ThreadID: "main", EventID: "$e2", EventPos: 2, TS: 300})
		pBob, _ := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: bob, EventID: "$e4", EventPos: 4, TS: 400})
		pBobPriv, _ := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptReadPrivate, UserID: bob, EventID: "$e5", EventPos: 5, TS: 400})
		put(sql.Receipt{RoomNID: other, Type: sql.ReceiptRead, UserID: carol, EventID: "$o1", EventPos: 1, TS: 500})
		upper := receiptsPos(t, db)

		// Alice sees her own private receipt, never bob's; nothing of the
		// room she is not in.
		got := read(alice, 0, upper)
		for _, want := range []string{
			fmt.Sprintf("%d m.read %s ", room, alice), fmt.Sprintf("%d m.read.private %s ", room, alice),
			fmt.Sprintf("%d m.read %s main", room, alice), fmt.Sprintf("%d m.read %s ", room, bob),
		} {
			if _, ok := got[want]; !ok {
				t.Errorf("alice's initial receipts lack %q: %v", want, got)
			}
		}
		if len(got) != 4 {
			t.Fatalf("alice's initial receipts: %v", got)
		}
		if r := got[fmt.Sprintf("%d m.read %s ", room, alice)]; r.EventID != "$e5" || r.TS != 100 || r.StreamPos != p1 || r.EventPos != 5 {
			t.Fatalf("alice's m.read = %+v", r)
		}
		// Bob sees his own private receipt.
		if got := read(bob, 0, upper); len(got) != 4 || got[fmt.Sprintf("%d m.read.private %s ", room, bob)].StreamPos != pBobPriv {
			t.Fatalf("bob's receipts: %v", got)
		}
		// Windows: exactly the writes in (since, upper].
		got = read(alice, pPriv, pBob)
		if len(got) != 2 || got[fmt.Sprintf("%d m.read %s main", room, alice)].StreamPos != pMain ||
			got[fmt.Sprintf("%d m.read %s ", room, bob)].StreamPos != pBob {
			t.Fatalf("window (%d, %d]: %v", pPriv, pBob, got)
		}
		// A moved receipt shows up once, at its new position.
		pMoved, stored := put(sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: alice, EventID: "$e9", EventPos: 9, TS: 900})
		if !stored {
			t.Fatal("a receipt for a newer event was not stored")
		}
		got = read(alice, upper, pMoved)
		if len(got) != 1 || got[fmt.Sprintf("%d m.read %s ", room, alice)].EventID != "$e9" {
			t.Fatalf("after the move: %v", got)
		}
		if got := read(alice, 0, pMoved); got[fmt.Sprintf("%d m.read %s ", room, alice)].EventID != "$e9" {
			t.Fatalf("an initial read after the move: %v", got)
		}
		// A user who left sees nothing more of the room.
		if err := db.SetMembership(ctx, room, bob, "leave", 99_999, 99_999); err != nil {
			t.Fatal(err)
		}
		if got := read(bob, 0, pMoved); len(got) != 0 {
			t.Fatalf("bob after leaving: %v", got)
		}
	})
}

// TestReceiptsConcurrent races receipts of one user: whatever the order
// of the commits, the stored receipt is the furthest.
func TestReceiptsConcurrent(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		room := typingRoom(t, db, "!r:hs", "@alice:hs")
		var wg sync.WaitGroup
		for i := int64(1); i <= 20; i++ {
			wg.Go(func() {
				if _, _, err := db.PutReceipt(ctx, sql.Receipt{RoomNID: room, Type: sql.ReceiptRead, UserID: "@alice:hs",
					EventID: fmt.Sprintf("$e%d", i), EventPos: i, TS: i}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		rs, err := db.SyncReceipts(ctx, "@alice:hs", 0, receiptsPos(t, db))
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 || rs[0].EventID != "$e20" {
			t.Fatalf("after the race: %+v", rs)
		}
	})
}

func TestUpdateAccountData(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		// Concurrent read-modify-writes of one entry lose nothing.
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Go(func() {
				_, err := db.UpdateAccountData(ctx, "alice", "!r:hs", "m.tag", func(_ *sql.Queries, old []byte) ([]byte, error) {
					tags := map[string]int{}
					if old != nil {
						if err := json.Unmarshal(old, &tags); err != nil {
							return nil, err
						}
					}
					tags[fmt.Sprintf("t%d", i)] = i
					return json.Marshal(tags)
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		raw, err := db.AccountDataContent(ctx, "alice", "!r:hs", "m.tag")
		if err != nil {
			t.Fatal(err)
		}
		var tags map[string]int
		if err := json.Unmarshal(raw, &tags); err != nil || len(tags) != 10 {
			t.Fatalf("after concurrent updates: %s %v", raw, err)
		}
		// Leaving the entry alone writes nothing and takes no position.
		before, _ := db.AccountDataPosition(ctx)
		pos, err := db.UpdateAccountData(ctx, "alice", "!r:hs", "m.tag", func(*sql.Queries, []byte) ([]byte, error) { return nil, nil })
		if err != nil || pos != 0 {
			t.Fatalf("unchanged update: %d %v", pos, err)
		}
		if after, _ := db.AccountDataPosition(ctx); after != before {
			t.Fatalf("an unchanged update moved the stream from %d to %d", before, after)
		}
		// An error from update rolls back and comes back.
		boom := errors.New("boom")
		if _, err := db.UpdateAccountData(ctx, "alice", "!r:hs", "m.tag", func(*sql.Queries, []byte) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
			t.Fatalf("update error: %v", err)
		}
	})
}

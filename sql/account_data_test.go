package sql_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestAccountDataPutGet(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.AccountDataContent(ctx, "alice", "", "m.direct"); err != sql.ErrNotFound {
			t.Fatalf("missing entry: err %v, want ErrNotFound", err)
		}
		if _, err := db.PutAccountData(ctx, "alice", "", "m.direct", []byte(`{"a":1}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.PutAccountData(ctx, "alice", "!r:x", "m.direct", []byte(`{"room":true}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.PutAccountData(ctx, "alice", "", "m.direct", []byte(`{"a":2}`)); err != nil {
			t.Fatal(err)
		}
		// Global and room data of the same type are separate (no inheritance).
		for _, c := range []struct{ room, want string }{{"", `{"a":2}`}, {"!r:x", `{"room":true}`}} {
			got, err := db.AccountDataContent(ctx, "alice", c.room, "m.direct")
			if err != nil || string(got) != c.want {
				t.Fatalf("room %q: %s, %v; want %s", c.room, got, err, c.want)
			}
		}
		if _, err := db.AccountDataContent(ctx, "bob", "", "m.direct"); err != sql.ErrNotFound {
			t.Fatalf("another user's entry: err %v, want ErrNotFound", err)
		}
	})
}

func TestAccountDataStreamPositions(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if pos, err := db.AccountDataPosition(ctx); err != nil || pos != 0 {
			t.Fatalf("fresh position %d, %v; want 0", pos, err)
		}
		var positions []int64
		put := func(room, typ, content string) {
			t.Helper()
			pos, err := db.PutAccountData(ctx, "alice", room, typ, []byte(content))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(positions); n > 0 && pos <= positions[n-1] {
				t.Fatalf("position %d after %d: positions must strictly increase", pos, positions[n-1])
			}
			positions = append(positions, pos)
		}
		put("", "a.one", `{"v":1}`)
		put("", "a.two", `{"v":2}`)
		put("!r:x", "a.three", `{"v":3}`)
		// Another user's writes share the stream but not the reads.
		if _, err := db.PutAccountData(ctx, "bob", "", "b.one", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		put("", "a.four", `{"v":4}`)

		all, err := db.AccountDataSince(ctx, "alice", 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := types(all); !slices.Equal(got, []string{"a.one", "a.two", "a.three", "a.four"}) {
			t.Fatalf("since 0: %v", got)
		}
		if all[2].RoomID != "!r:x" || string(all[2].Content) != `{"v":3}` || all[2].StreamPos != positions[2] {
			t.Fatalf("room entry: %+v", all[2])
		}
		after, err := db.AccountDataSince(ctx, "alice", positions[1])
		if err != nil {
			t.Fatal(err)
		}
		if got := types(after); !slices.Equal(got, []string{"a.three", "a.four"}) {
			t.Fatalf("since %d: %v, want exactly the writes after it", positions[1], got)
		}
		if none, err := db.AccountDataSince(ctx, "alice", positions[3]); err != nil || len(none) != 0 {
			t.Fatalf("since the last write: %v, %v", none, err)
		}
		if pos, err := db.AccountDataPosition(ctx); err != nil || pos != positions[3] {
			t.Fatalf("position %d, %v; want %d", pos, err, positions[3])
		}

		// Rewriting an entry moves it after the others, once, with the new content.
		put("", "a.one", `{"v":"new"}`)
		after, err = db.AccountDataSince(ctx, "alice", positions[3])
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != 1 || after[0].Type != "a.one" || string(after[0].Content) != `{"v":"new"}` || after[0].StreamPos != positions[4] {
			t.Fatalf("after rewrite: %+v", after)
		}
		if all, _ := db.AccountDataSince(ctx, "alice", 0); len(all) != 4 {
			t.Fatalf("a rewrite must not duplicate the entry: %d entries", len(all))
		}
	})
}

// TestAccountDataConcurrentWriters checks the allocation under load: every
// write gets its own position, none is lost, and each position is the one
// its write committed with.
func TestAccountDataConcurrentWriters(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const writers, each = 8, 25
		got := make([][]int64, writers)
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					pos, err := db.PutAccountData(ctx, "alice", "", fmt.Sprintf("w%d.t%d", w, i), []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)))
					if err != nil {
						errs <- err
						return
					}
					if n := len(got[w]); n > 0 && pos <= got[w][n-1] {
						errs <- fmt.Errorf("writer %d: position %d after its own %d", w, pos, got[w][n-1])
						return
					}
					got[w] = append(got[w], pos)
				}
			}()
		}
		// A reader meanwhile: once position N is visible, every write at or
		// below N must be too (no gap for a sync to skip), which holds only
		// if positions commit in order.
		stop := make(chan struct{})
		readerErr := make(chan error, 1)
		go func() {
			defer close(readerErr)
			for {
				select {
				case <-stop:
					return
				default:
				}
				pos, err := db.AccountDataPosition(ctx)
				if err != nil {
					readerErr <- err
					return
				}
				all, err := db.AccountDataSince(ctx, "alice", 0)
				if err != nil {
					readerErr <- err
					return
				}
				var upTo int64
				for _, d := range all {
					if d.StreamPos <= pos {
						upTo++
					}
				}
				if upTo != pos {
					readerErr <- fmt.Errorf("position %d visible but only %d writes at or below it", pos, upTo)
					return
				}
			}
		}()
		wg.Wait()
		close(stop)
		if err := <-readerErr; err != nil {
			t.Fatal(err)
		}
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		seen := make(map[int64]string)
		for w := range writers {
			for i, pos := range got[w] {
				typ := fmt.Sprintf("w%d.t%d", w, i)
				if other, dup := seen[pos]; dup {
					t.Fatalf("position %d given to %s and %s", pos, other, typ)
				}
				seen[pos] = typ
			}
		}
		if len(seen) != writers*each {
			t.Fatalf("%d positions, want %d", len(seen), writers*each)
		}
		if pos, err := db.AccountDataPosition(ctx); err != nil || pos != writers*each {
			t.Fatalf("stream position %d, %v; want %d", pos, err, writers*each)
		}
		all, err := db.AccountDataSince(ctx, "alice", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != writers*each {
			t.Fatalf("read back %d entries, want %d", len(all), writers*each)
		}
		for i, d := range all {
			if seen[d.StreamPos] != d.Type {
				t.Fatalf("entry %s stored at %d, which was given to %s", d.Type, d.StreamPos, seen[d.StreamPos])
			}
			if i > 0 && d.StreamPos <= all[i-1].StreamPos {
				t.Fatal("AccountDataSince is not in stream order")
			}
		}
		// Every cut point returns exactly the writes after it.
		for cut := int64(0); cut <= writers*each; cut += 37 {
			after, err := db.AccountDataSince(ctx, "alice", cut)
			if err != nil {
				t.Fatal(err)
			}
			if want := writers*each - int(cut); len(after) != want {
				t.Fatalf("since %d: %d entries, want %d", cut, len(after), want)
			}
		}
	})
}

// TestAccountDataInCallerTransaction checks that a write inside WithTx
// shares the caller's transaction: rolled back, it leaves neither the entry
// nor a used position behind.
func TestAccountDataInCallerTransaction(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		boom := fmt.Errorf("boom")
		err := db.WithTx(ctx, func(q *sql.Queries) error {
			if _, err := q.PutAccountData(ctx, "alice", "", "x.y", []byte(`{}`)); err != nil {
				return err
			}
			return boom
		})
		if err != boom {
			t.Fatalf("err %v", err)
		}
		if _, err := db.AccountDataContent(ctx, "alice", "", "x.y"); err != sql.ErrNotFound {
			t.Fatalf("rolled-back entry: %v", err)
		}
		if pos, _ := db.AccountDataPosition(ctx); pos != 0 {
			t.Fatalf("rolled-back write left position %d", pos)
		}
	})
}

func types(ds []sql.AccountData) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Type)
	}
	return out
}

package sql_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func edus(dest string, contents ...string) []sql.FederationEDU {
	out := make([]sql.FederationEDU, len(contents))
	for i, c := range contents {
		out[i] = sql.FederationEDU{Destination: dest, Type: "m.test", Content: []byte(c)}
	}
	return out
}

func contents(items []sql.FederationItem) []string {
	var out []string
	for _, it := range items {
		if it.EventID != "" {
			out = append(out, "pdu:"+it.EventID)
		} else {
			out = append(out, string(it.Content))
		}
	}
	return out
}

// TestFederationBatch: batches come in queue order within the limits, a
// batch keeps its id and items until deleted (items queued meanwhile wait
// for the next one), destinations are separate, and deletion empties the
// queue.
func TestFederationBatch(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if txn, items, err := db.FederationBatch(ctx, "a.example", "t0", 50, 100); err != nil || txn != "" || len(items) != 0 {
			t.Fatalf("empty queue: %q %v %v", txn, items, err)
		}
		if err := db.QueueFederationEDUs(ctx, append(edus("a.example", `{"n":1}`, `{"n":2}`), edus("b.example", `{"b":1}`)...)); err != nil {
			t.Fatal(err)
		}
		if err := db.QueueFederationPDU(ctx, []string{"a.example"}, "$p1"); err != nil {
			t.Fatal(err)
		}
		if err := db.QueueFederationEDUs(ctx, edus("a.example", `{"n":3}`, `{"n":4}`)); err != nil {
			t.Fatal(err)
		}
		if err := db.QueueFederationPDU(ctx, []string{"a.example"}, "$p2"); err != nil {
			t.Fatal(err)
		}

		// At most 1 PDU and 2 EDUs: the batch stops at the second PDU.
		txn, items, err := db.FederationBatch(ctx, "a.example", "t1", 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(contents(items)); txn != "t1" || got != `[{"n":1} {"n":2} pdu:$p1]` {
			t.Fatalf("first batch %q %s", txn, got)
		}
		// Asked again (a retry), the same transaction comes back under its
		// id, whatever new id is offered, and new items do not join it.
		if err := db.QueueFederationEDUs(ctx, edus("a.example", `{"n":5}`)); err != nil {
			t.Fatal(err)
		}
		again, items2, err := db.FederationBatch(ctx, "a.example", "t-other", 50, 100)
		if err != nil || again != "t1" || fmt.Sprint(contents(items2)) != fmt.Sprint(contents(items)) {
			t.Fatalf("retry: %q %v %v, want t1 %v", again, contents(items2), err, contents(items))
		}
		if n, err := db.DeleteFederationBatch(ctx, "a.example", "t1"); err != nil || n != 3 {
			t.Fatalf("delete t1: %d %v", n, err)
		}
		txn, items, err = db.FederationBatch(ctx, "a.example", "t2", 1, 2)
		if err != nil || txn != "t2" || fmt.Sprint(contents(items)) != `[{"n":3} {"n":4} pdu:$p2]` {
			t.Fatalf("second batch: %q %v %v", txn, contents(items), err)
		}
		db.DeleteFederationBatch(ctx, "a.example", "t2")
		txn, items, _ = db.FederationBatch(ctx, "a.example", "t3", 1, 2)
		if txn != "t3" || fmt.Sprint(contents(items)) != `[{"n":5}]` {
			t.Fatalf("third batch: %q %v", txn, contents(items))
		}
		db.DeleteFederationBatch(ctx, "a.example", "t3")
		if ok, err := db.FederationQueued(ctx, "a.example"); err != nil || ok {
			t.Fatalf("a.example still queued: %v %v", ok, err)
		}
		if ok, _ := db.FederationQueued(ctx, "b.example"); !ok {
			t.Fatal("b.example's queue was touched")
		}
		// A deleted transaction's id deletes nothing of another
		// destination.
		if n, _ := db.DeleteFederationBatch(ctx, "b.example", "t1"); n != 0 {
			t.Fatalf("deleted %d of b.example's items", n)
		}
		dests, err := db.FederationQueuedDestinations(ctx)
		if err != nil || len(dests) != 1 || dests[0].Destination != "b.example" || dests[0].RetryAtTS != 0 {
			t.Fatalf("queued destinations: %+v %v", dests, err)
		}
	})
}

// TestFederationBatchConcurrentQueueing: items queued while batches are
// taken and deleted are each sent exactly once, in order.
func TestFederationBatchConcurrentQueueing(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const n = 60
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range n {
				if err := db.QueueFederationEDUs(ctx, edus("a.example", fmt.Sprintf(`{"i":%d}`, i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
		var got []string
		deadline := time.Now().Add(20 * time.Second)
		for len(got) < n && time.Now().Before(deadline) {
			txn, items, err := db.FederationBatch(ctx, "a.example", fmt.Sprintf("t%d", len(got)), 50, 7)
			if err != nil {
				t.Fatal(err)
			}
			if len(items) > 7 {
				t.Fatalf("batch of %d EDUs, limit 7", len(items))
			}
			got = append(got, contents(items)...)
			if len(items) > 0 {
				if _, err := db.DeleteFederationBatch(ctx, "a.example", txn); err != nil {
					t.Fatal(err)
				}
			}
		}
		wg.Wait()
		if len(got) != n {
			t.Fatalf("got %d items, want %d: %v", len(got), n, got)
		}
		for i, c := range got {
			if c != fmt.Sprintf(`{"i":%d}`, i) {
				t.Fatalf("item %d is %s: %v", i, c, got)
			}
		}
	})
}

// TestFederationLeaseAndBackoff: one owner at a time, extension by the
// owner, takeover after expiry, release; back-off recorded, reported in
// the catch-up list, and cleared (with a report of whether it was set).
func TestFederationLeaseAndBackoff(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.FederationDestinationState(ctx, "a.example"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("unknown destination: %v", err)
		}
		d, held, err := db.AcquireFederationLease(ctx, "a.example", "p1", 1000, 2000)
		if err != nil || !held || d.LeaseOwner != "p1" || d.LeaseExpiresTS != 2000 {
			t.Fatalf("p1 acquires: %+v %v %v", d, held, err)
		}
		if d, held, _ = db.AcquireFederationLease(ctx, "a.example", "p2", 1500, 2500); held || d.LeaseOwner != "p1" {
			t.Fatalf("p2 took p1's lease: %+v", d)
		}
		if _, held, _ = db.AcquireFederationLease(ctx, "a.example", "p1", 1500, 3000); !held {
			t.Fatal("p1 could not extend its lease")
		}
		if d, held, _ = db.AcquireFederationLease(ctx, "a.example", "p2", 3000, 4000); !held || d.LeaseOwner != "p2" {
			t.Fatalf("p2 could not take the expired lease: %+v", d)
		}
		// p1 no longer holds it: its release changes nothing.
		db.ReleaseFederationLease(ctx, "a.example", "p1")
		if d, _ := db.FederationDestinationState(ctx, "a.example"); d.LeaseOwner != "p2" {
			t.Fatalf("p1 released p2's lease: %+v", d)
		}
		db.ReleaseFederationLease(ctx, "a.example", "p2")
		if _, held, _ = db.AcquireFederationLease(ctx, "a.example", "p1", 3100, 5000); !held {
			t.Fatal("released lease not free")
		}

		if cleared, err := db.ClearFederationBackoff(ctx, "a.example"); err != nil || cleared {
			t.Fatalf("clear without back-off: %v %v", cleared, err)
		}
		if err := db.SetFederationBackoff(ctx, "a.example", 100, 600000, 700000); err != nil {
			t.Fatal(err)
		}
		db.QueueFederationEDUs(ctx, edus("a.example", `{}`))
		db.QueueFederationEDUs(ctx, edus("b.example", `{}`))
		dests, _ := db.FederationQueuedDestinations(ctx)
		if len(dests) != 2 || dests[0].RetryAtTS != 700000 || dests[0].RetryIntervalMS != 600000 || dests[0].FailureTS != 100 ||
			dests[1].Destination != "b.example" || dests[1].RetryAtTS != 0 {
			t.Fatalf("catch-up list: %+v", dests)
		}
		if cleared, err := db.ClearFederationBackoff(ctx, "a.example"); err != nil || !cleared {
			t.Fatalf("clear: %v %v", cleared, err)
		}
		if d, _ := db.FederationDestinationState(ctx, "a.example"); d.RetryAtTS != 0 || d.FailureTS != 0 || d.RetryIntervalMS != 0 || d.LeaseOwner != "p1" {
			t.Fatalf("after clear: %+v", d)
		}
		if cleared, _ := db.ClearFederationBackoff(ctx, "never.example"); cleared {
			t.Fatal("cleared a destination never seen")
		}
	})
}

// TestFederationLeaseRace: of many processes racing for one free lease,
// exactly one gets it.
func TestFederationLeaseRace(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var mu sync.Mutex
		winners := 0
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				_, held, err := db.AcquireFederationLease(ctx, "a.example", fmt.Sprintf("p%d", i), 1000, 9000)
				if err != nil {
					t.Error(err)
				}
				if held {
					mu.Lock()
					winners++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if winners != 1 {
			t.Fatalf("%d processes hold the lease", winners)
		}
	})
}

// TestFederationInbound: transaction answers per (origin, id), the first
// kept; to-device message ids claimed once per origin.
func TestFederationInbound(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.FederationInboundResponse(ctx, "a.example", "t1"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("unknown transaction: %v", err)
		}
		if err := db.StoreFederationInboundResponse(ctx, "a.example", "t1", []byte(`{"pdus":{}}`)); err != nil {
			t.Fatal(err)
		}
		if err := db.StoreFederationInboundResponse(ctx, "a.example", "t1", []byte(`{"pdus":{"x":{}}}`)); err != nil {
			t.Fatal(err)
		}
		if got, err := db.FederationInboundResponse(ctx, "a.example", "t1"); err != nil || string(got) != `{"pdus":{}}` {
			t.Fatalf("stored answer: %s %v", got, err)
		}
		if _, err := db.FederationInboundResponse(ctx, "b.example", "t1"); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("another origin's transaction: %v", err)
		}

		for _, c := range []struct {
			origin, id string
			want       bool
		}{{"a.example", "m1", true}, {"a.example", "m1", false}, {"b.example", "m1", true}, {"a.example", "m2", true}} {
			if got, err := db.ClaimFederationToDevice(ctx, c.origin, c.id); err != nil || got != c.want {
				t.Errorf("claim %s %s = %v %v, want %v", c.origin, c.id, got, err, c.want)
			}
		}
	})
}

package syncapi

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestHeadReads: syncs asking for their heads at once each get their own,
// in batches or not, and one that gives up does not fail the others.
func TestHeadReads(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const users = 100 // more than one batch
		for i := range users {
			room, err := db.CreateRoom(ctx, fmt.Sprintf("!r%d:test", i), "11")
			if err != nil {
				t.Fatal(err)
			}
			if err := db.SetMembership(ctx, room, fmt.Sprintf("@u%d:test", i), "join", int64(i+1), int64(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		var h headReads
		gone, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := h.read(gone, db, sql.SyncHeadRequest{UserID: "@u0:test"}); err == nil {
			t.Error("a cancelled read succeeded")
		}
		var wg sync.WaitGroup
		for i := range users {
			wg.Go(func() {
				head, err := h.read(ctx, db, sql.SyncHeadRequest{UserID: fmt.Sprintf("@u%d:test", i)})
				if err != nil {
					t.Error(err)
					return
				}
				if len(head.Memberships) != 1 || head.Memberships[0].RoomID != fmt.Sprintf("!r%d:test", i) {
					t.Errorf("user %d: memberships %+v", i, head.Memberships)
				}
			})
		}
		wg.Wait()
		// The last drain ends just after its last answer.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			h.mu.Lock()
			running, queued := h.running, len(h.queue)
			h.mu.Unlock()
			if running == 0 && queued == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the reads: %d running, %d queued", running, queued)
			}
		}
	})
}

package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/homeserver/hstest"
)

// TestIdleRenews: long-polls that time out during the measurement are made
// again, as clients do, and are not errors.
func TestIdleRenews(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	defer func(d time.Duration) { longPoll = d }(longPoll)
	longPoll = 500 * time.Millisecond // well inside idleSettle
	srv := hstest.StartEngine(t, "sqlite")
	res, err := Run(context.Background(), "idle", Options{URL: srv.ClientURL, Users: 2, Connections: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 4 || res.Errors != 0 {
		t.Errorf("%d ops, %d errors; notes %q", res.Ops, res.Errors, res.Notes)
	}
	if !strings.Contains(strings.Join(res.Notes, "\n"), "renewed") {
		t.Errorf("no long-poll was renewed: notes %q", res.Notes)
	}
}

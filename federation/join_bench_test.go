package federation_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// BenchmarkTwoServersJoin measures a join over federation of a room with
// many state events (WEFT_BENCH_STATE, default 1,000) hosted on another
// Weft server: the first join (all of the state new to the joining
// server) is reported as first-join-ms; each iteration then leaves and
// joins again through the other server.
func BenchmarkTwoServersJoin(b *testing.B) {
	size := 1000
	if s := os.Getenv("WEFT_BENCH_STATE"); s != "" {
		size, _ = strconv.Atoi(s)
	}
	engine := sqltest.Engines()[len(sqltest.Engines())-1]
	ctx := context.Background()
	cfgA, cfgB := hstest.FederationConfig(b, engine), hstest.FederationConfig(b, engine)
	servers := hstest.StartFederated(b, cfgA, cfgB)
	alice := testclient.Register(b, servers[0].ClientURL, "alice")
	bob := testclient.Register(b, servers[1].ClientURL, "bob")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range size {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := alice.SendStateEvent(ctx, created.RoomID, event.NewEventType("org.example.bench"), fmt.Sprint(i), map[string]any{"n": i}); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	via := &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}
	start := time.Now()
	if _, err := bob.JoinRoom(ctx, created.RoomID.String(), via); err != nil {
		b.Fatal(err)
	}
	first := time.Since(start)
	b.ResetTimer()
	for b.Loop() {
		if _, err := bob.LeaveRoom(ctx, created.RoomID); err != nil {
			b.Fatal(err)
		}
		if _, err := bob.JoinRoom(ctx, created.RoomID.String(), via); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(first.Milliseconds()), "first-join-ms")
	b.ReportMetric(float64(size), "state-events")
}

package federation_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// BenchmarkTwoServersJoin measures a join over federation of a room with
// many state events (WEFT_BENCH_STATE, default 1,000), a tenth of them
// the joins of members (WEFT_BENCH_MEMBERS), hosted on another Weft
// server: the first join (all of the state new to the joining server) is
// reported as first-join-ms; each iteration then leaves and joins again
// through the other server. first-join-cpu-ms is the CPU time of that
// first join (both servers; PostgreSQL's own is not counted), and
// WEFT_BENCH_CPUPROFILE names a file for a CPU profile of it alone. The
// engine is the last of sqltest.Engines unless WEFT_BENCH_ENGINE names one.
func BenchmarkTwoServersJoin(b *testing.B) {
	size := 1000
	if s := os.Getenv("WEFT_BENCH_STATE"); s != "" {
		size, _ = strconv.Atoi(s)
	}
	members := size / 10
	if s := os.Getenv("WEFT_BENCH_MEMBERS"); s != "" {
		members, _ = strconv.Atoi(s)
	}
	engine := sqltest.Engines()[len(sqltest.Engines())-1]
	if e := os.Getenv("WEFT_BENCH_ENGINE"); e != "" {
		engine = config.Engine(e)
	}
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
			var err error
			if i < members {
				err = joinNewMember(ctx, servers[0].ClientURL, fmt.Sprintf("member%d", i), created.RoomID)
			} else {
				_, err = alice.SendStateEvent(ctx, created.RoomID, event.NewEventType("org.example.bench"), fmt.Sprint(i), map[string]any{"n": i})
			}
			if err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	settle(b, cfgA.Database.URL, created.RoomID.String())
	via := &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}
	if path := os.Getenv("WEFT_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	start, cpuStart := time.Now(), cpuTime()
	if _, err := bob.JoinRoom(ctx, created.RoomID.String(), via); err != nil {
		b.Fatal(err)
	}
	first, firstCPU := time.Since(start), cpuTime()-cpuStart
	pprof.StopCPUProfile()
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
	b.ReportMetric(float64(firstCPU.Milliseconds()), "first-join-cpu-ms")
	b.ReportMetric(float64(size), "state-events")
	b.ReportMetric(float64(members), "members")
}

// cpuTime is the CPU time the process (both servers) has used, a figure
// that a loaded machine disturbs less than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// settle waits until the resident server is done with the room's setup,
// so that the join is measured alone: its push counter, which runs behind
// the inputs, has counted every event (each for every member: minutes of
// backlog in the biggest rooms), and then the process is idle (under a
// tenth of a core).
func settle(b *testing.B, dbURL, roomID string) {
	ctx := context.Background()
	db, err := sql.Open(ctx, dbURL, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for {
		room, err := db.Room(ctx, roomID)
		if err != nil {
			b.Fatal(err)
		}
		counted, err := db.PushCountedUpTo(ctx, roomID)
		if err != nil {
			b.Fatal(err)
		}
		if counted >= room.LastStreamPos {
			break
		}
		time.Sleep(time.Second)
	}
	const tick = 500 * time.Millisecond
	for range 120 {
		before := cpuTime()
		time.Sleep(tick)
		if cpuTime()-before < tick/10 {
			return
		}
	}
}

// joinNewMember registers localpart and joins it to roomID (apart from
// testclient.Register, whose t.Fatal may not run off the test goroutine).
func joinNewMember(ctx context.Context, baseURL, localpart string, roomID id.RoomID) error {
	cli, err := mautrix.NewClient(baseURL, "", "")
	if err != nil {
		return err
	}
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "password"})
	if err != nil {
		return fmt.Errorf("register %s: %w", localpart, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	_, err = cli.JoinRoomByID(ctx, roomID)
	return err
}

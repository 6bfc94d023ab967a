package roomserver_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql/sqltest"
)

// The benchmarks drive the whole write pipeline as the client API does:
// roomserver.Client over the embedded NATS, the shard consumers, the
// database commit and the reply. Run them with
//
//	WEFT_TEST_POSTGRES=postgres://... go test -run '^$' -bench . ./roomserver/
//
// Each reports events/s (and rooms/s for BenchmarkCreateRoom) and the CPU
// this process spent per event or room. Senders run
// with b.RunParallel at benchParallelism goroutines per CPU, because each
// sender waits for its commit: throughput comes from many requests in
// flight, as with many clients.
const benchParallelism = 16

// startBench starts a roomserver with its bus on a fresh database of
// engine, like start does for tests.
func startBench(b *testing.B, engine config.Engine) harness {
	b.Helper()
	db := sqltest.Open(b, engine)
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bs, err := bus.Open(ctx, bus.Config{StoreDir: b.TempDir()}, log)
	if err != nil {
		b.Fatal(err)
	}
	key, err := serverkey.Generate()
	if err != nil {
		b.Fatal(err)
	}
	rs := roomserver.New(db, bs, "test.local", key, log)
	stop, err := rs.Serve(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); stop(); bs.Close() })
	return harness{rs: rs, client: roomserver.NewClient(bs), db: db}
}

// uniqueCreate returns a v12 room's initial events with a create event
// of its own: v12 derives the room id from the create event, and two
// identical ones made in the same millisecond would name the same room.
func uniqueCreate(id string) *roomserver.CreateRoom {
	evs := createEvents("12")
	evs[0].Content = content(map[string]any{"room_version": "12", "bench": id})
	return &roomserver.CreateRoom{RoomVersion: "12", Events: evs}
}

func benchCreateRoom(b *testing.B, h harness, id string) string {
	b.Helper()
	resp, err := h.client.Input(context.Background(), roomserver.InputRequest{InputID: "bench-create-" + id, CreateRoom: uniqueCreate(id)})
	if err != nil {
		b.Fatalf("create room: %v", err)
	}
	return resp.RoomID
}

// cpuTime is the CPU time this process has used so far. On a shared
// machine wall-clock rates vary with the neighbours' load; the CPU the
// pipeline spends per event (PostgreSQL's own not included) does not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs the timed part and reports the rate of n·b.N per second and
// the CPU microseconds per unit.
func measure(b *testing.B, n int, unit string, run func()) {
	start := cpuTime()
	b.ResetTimer()
	run()
	b.StopTimer()
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), unit+"s/s")
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(n*b.N), "cpu-µs/"+unit)
}

// BenchmarkSendOneRoom measures messages into one room: they all go
// through the room's single writer.
func BenchmarkSendOneRoom(b *testing.B) {
	for _, engine := range sqltest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			h := startBench(b, engine)
			roomID := benchCreateRoom(b, h, "one")
			var seq atomic.Int64
			ctx := context.Background()
			b.SetParallelism(benchParallelism)
			measure(b, 1, "event", func() {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						n := strconv.FormatInt(seq.Add(1), 10)
						if _, err := send(ctx, h, roomID, alice, "b"+n, "message "+n); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}

// BenchmarkSendManyRooms measures messages spread over 100 rooms, which
// the shards commit in parallel.
func BenchmarkSendManyRooms(b *testing.B) {
	const rooms = 100
	for _, engine := range sqltest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			h := startBench(b, engine)
			ids := make([]string, rooms)
			for i := range ids {
				ids[i] = benchCreateRoom(b, h, strconv.Itoa(i))
			}
			var seq atomic.Int64
			ctx := context.Background()
			b.SetParallelism(benchParallelism)
			measure(b, 1, "event", func() {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := seq.Add(1)
						n := strconv.FormatInt(i, 10)
						if _, err := send(ctx, h, ids[i%rooms], alice, "b"+n, "message "+n); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}

// BenchmarkCreateRoom measures whole rooms (five initial events each)
// created at once.
func BenchmarkCreateRoom(b *testing.B) {
	for _, engine := range sqltest.Engines() {
		b.Run(string(engine), func(b *testing.B) {
			h := startBench(b, engine)
			var seq atomic.Int64
			b.SetParallelism(benchParallelism)
			measure(b, 1, "room", func() {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						id := strconv.FormatInt(seq.Add(1), 10)
						resp, err := h.client.Input(context.Background(), roomserver.InputRequest{InputID: "bench-create-" + id, CreateRoom: uniqueCreate(id)})
						if err != nil {
							b.Error(err)
							return
						}
						if len(resp.EventIDs) != 5 {
							b.Errorf("create made %d events", len(resp.EventIDs))
							return
						}
					}
				})
			})
			// Five initial events a room.
			b.ReportMetric(float64(5*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

type testEvent struct {
	RoomID string   `json:"room_id"`
	N      int      `json:"n"`
	Tags   []string `json:"tags"`
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func openTest(t *testing.T, cfg Config) *Bus {
	t.Helper()
	if cfg.StoreDir == "" && len(cfg.URLs) == 0 {
		cfg.StoreDir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	b, err := Open(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// recv waits for one value or fails the test.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for message")
		panic("unreachable")
	}
}

// none asserts that nothing arrives on ch for a short while.
func none[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected message %+v", v)
	case <-time.After(200 * time.Millisecond):
	}
}

func consumeInto(t *testing.T, b *Bus, stream, durable, subject string, opts ...ConsumeOption) (<-chan testEvent, func()) {
	t.Helper()
	ch := make(chan testEvent, 16)
	stop, err := Consume(t.Context(), b, stream, durable, subject, func(_ context.Context, ev testEvent) error {
		ch <- ev
		return nil
	}, opts...)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	t.Cleanup(stop)
	return ch, stop
}

func TestPublishConsumeRoundTrip(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomOutputSubject("!room:example.org")
	want := testEvent{RoomID: "!room:example.org", N: 7, Tags: []string{"a", "b"}}
	if err := Publish(t.Context(), b, subj, want); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ch, _ := consumeInto(t, b, StreamRoomOutput, "roundtrip", subj)
	if got := recv(t, ch); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestPublishToUndeclaredSubjectFails(t *testing.T) {
	b := openTest(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := Publish(ctx, b, "nowhere.at.all", testEvent{}); err == nil {
		t.Fatal("Publish to a subject outside every stream succeeded")
	}
}

func TestDurablePositionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	subj := RoomOutputSubject("!durable:example.org")

	b := openTest(t, Config{StoreDir: dir})
	for i := 1; i <= 3; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	ch, stop := consumeInto(t, b, StreamRoomOutput, "durable", subj)
	for i := 1; i <= 3; i++ {
		if got := recv(t, ch); got.N != i {
			t.Fatalf("got N=%d, want %d", got.N, i)
		}
	}
	stop()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	b = openTest(t, Config{StoreDir: dir})
	if err := Publish(t.Context(), b, subj, testEvent{N: 4}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ch, _ = consumeInto(t, b, StreamRoomOutput, "durable", subj)
	if got := recv(t, ch); got.N != 4 {
		t.Fatalf("after restart got N=%d, want 4", got.N)
	}
	none(t, ch)
}

func TestHandlerErrorRedeliversInOrder(t *testing.T) {
	b := openTest(t, Config{})
	subj := RoomInputSubject("!retry:example.org", 4)
	for i := 1; i <= 2; i++ {
		if err := Publish(t.Context(), b, subj, testEvent{N: i}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}

	var (
		mu     sync.Mutex
		seen   []int
		failed bool
	)
	done := make(chan struct{})
	stop, err := Consume(t.Context(), b, StreamRoomInput, "retry", subj, func(_ context.Context, ev testEvent) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, ev.N)
		if ev.N == 1 && !failed {
			failed = true
			return errors.New("transient")
		}
		if ev.N == 2 {
			close(done)
		}
		return nil
	}, Ordered(), NakDelay(20*time.Millisecond))
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	defer stop()

	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("timed out")
	}
	mu.Lock()
	got := append([]int(nil), seen...)
	mu.Unlock()
	// Ordered: message 2 must wait until message 1 succeeded.
	if want := []int{1, 1, 2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("deliveries %v, want %v", got, want)
	}

	// Work queue: acked inputs are removed from the stream.
	stream, err := b.JetStream().Stream(t.Context(), StreamRoomInput)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		info, err := stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("work queue still holds %d messages", info.State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConsumeStopsWithContext(t *testing.T) {
	b := openTest(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	stop, err := Consume(ctx, b, StreamEphemeral, "ctxstop", "ephemeral.typing", func(context.Context, testEvent) error { return nil })
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	cancel()
	stopped := make(chan struct{})
	go func() { stop(); stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		t.Fatal("stop did not return after ctx ended")
	}
}

type echoReq struct{ Text string }
type echoResp struct{ Upper string }

func TestRequestReply(t *testing.T) {
	b := openTest(t, Config{})
	stop, err := Serve(t.Context(), b, "rpc.echo", "echo", func(_ context.Context, r echoReq) (echoResp, error) {
		if r.Text == "" {
			return echoResp{}, errors.New("empty text")
		}
		return echoResp{Upper: strings.ToUpper(r.Text)}, nil
	})
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := Request[echoReq, echoResp](ctx, b, "rpc.echo", echoReq{Text: "hi"})
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	if resp.Upper != "HI" {
		t.Fatalf("got %q", resp.Upper)
	}

	_, err = Request[echoReq, echoResp](ctx, b, "rpc.echo", echoReq{})
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "empty text" {
		t.Fatalf("got err %v, want RemoteError(empty text)", err)
	}

	// After stop nobody serves the subject any more.
	stop()
	stop()
	if _, err := Request[echoReq, echoResp](ctx, b, "rpc.echo", echoReq{Text: "x"}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after stop: got %v, want no responders", err)
	}
}

func TestRequestNoServerFailsFast(t *testing.T) {
	b := openTest(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Request[echoReq, echoResp](ctx, b, "rpc.nobody", echoReq{Text: "x"})
	if err == nil {
		t.Fatal("Request with no server succeeded")
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("got %v, want no responders", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Request took %s; it should fail fast", d)
	}
}

func TestRequestRejectsStreamSubjects(t *testing.T) {
	b := openTest(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := Request[echoReq, echoResp](ctx, b, RoomInputSubject("!r:x", 8), echoReq{}); !errors.Is(err, errStreamSubject) {
		t.Fatalf("Request: got %v, want errStreamSubject", err)
	}
	if _, err := Serve(ctx, b, "room.*.3", "q", func(context.Context, echoReq) (echoResp, error) { return echoResp{}, nil }); !errors.Is(err, errStreamSubject) {
		t.Fatalf("Serve: got %v, want errStreamSubject", err)
	}
}

func TestCloseIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	b, err := Open(ctx, Config{StoreDir: t.TempDir()}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// A running consumer must not keep Close from finishing.
	if _, err := Consume(t.Context(), b, StreamEphemeral, "closing", "", func(context.Context, testEvent) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if !b.Conn().IsClosed() {
		t.Fatal("connection still open after Close")
	}
}

func TestOpenExternal(t *testing.T) {
	// A second embedded server with a TCP listener stands in for an
	// external cluster.
	host := openTest(t, Config{Listen: "127.0.0.1:0"})
	url := host.srv.ClientURL()
	if strings.HasSuffix(url, ":4222") || strings.HasSuffix(url, ":0") {
		t.Fatalf("listener did not get a free port: %s", url)
	}

	client := openTest(t, Config{URLs: []string{url}})
	if client.srv != nil {
		t.Fatal("external Bus started its own server")
	}
	if got := client.Conn().ConnectedUrl(); got != url {
		t.Fatalf("connected to %s, want %s", got, url)
	}

	subj := RoomOutputSubject("!ext:example.org")
	ch, _ := consumeInto(t, host, StreamRoomOutput, "ext", subj)
	if err := Publish(t.Context(), client, subj, testEvent{N: 42}); err != nil {
		t.Fatalf("Publish via external: %v", err)
	}
	if got := recv(t, ch); got.N != 42 {
		t.Fatalf("got %+v", got)
	}
}

func TestSubjects(t *testing.T) {
	const id = "!weird.room*>:example.org"
	in := RoomInputSubject(id, 16)
	if in != RoomInputSubject(id, 16) {
		t.Fatal("RoomInputSubject not deterministic")
	}
	if !regexp.MustCompile(`^room\.input\.(\d|1[0-5])$`).MatchString(in) {
		t.Fatalf("RoomInputSubject = %q", in)
	}
	if got := RoomInputSubject(id, 0); got != "room.input.0" {
		t.Fatalf("RoomInputSubject(shards=0) = %q", got)
	}
	shards := map[string]bool{}
	for i := range 100 {
		shards[RoomInputSubject(fmt.Sprintf("!r%d:x", i), 4)] = true
	}
	if len(shards) != 4 {
		t.Fatalf("100 rooms hit %d of 4 shards", len(shards))
	}

	out := RoomOutputSubject(id)
	if !regexp.MustCompile(`^room\.output\.[0-9a-f]{16}$`).MatchString(out) {
		t.Fatalf("RoomOutputSubject = %q", out)
	}
	if out == RoomOutputSubject("!other:example.org") {
		t.Fatal("distinct rooms share an output subject")
	}
}

func TestSubjectsOverlap(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"room.input.3", "room.input.>", true},
		{"room.input", "room.input.>", false},
		{"room.*.3", "room.input.>", true},
		{">", "ephemeral.>", true},
		{"rpc.echo", "room.input.>", false},
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
		{"a.*", "a.b", true},
	} {
		if got := subjectsOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("subjectsOverlap(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

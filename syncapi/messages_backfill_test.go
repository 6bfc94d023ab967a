package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// fakeBackfiller answers Backfill with n and err, and counts the calls.
type fakeBackfiller struct {
	calls int
	n     int
	err   error
	// left is the time the last call had before its context's deadline.
	left time.Duration
}

func (f *fakeBackfiller) Backfill(ctx context.Context, _ string) (int, error) {
	f.calls++
	if d, ok := ctx.Deadline(); ok {
		f.left = time.Until(d)
	}
	return f.n, f.err
}

// When a backwards page of /messages reaches the start of what the
// server has of a room, the page asks for one round of backfill; pages
// that stop short of the start, forward pages and pages bounded by to do
// not. The round has backfillTimeout at most. A round that fails leaves
// the page as it is (200, no end token); one that stored events gives an
// end token, so the client asks for the next page, which goes on into
// them.
func TestMessagesAsksForBackfillAtTheStart(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	db := sqltest.Open(t, sqltest.Engines()[0])
	key, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rs := roomserver.New(db, nil, "test.local", key, log)
	const alice = "@alice:test.local"
	sk := func(s string) *string { return &s }
	raw := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	resp, err := rs.HandleInput(ctx, roomserver.InputRequest{CreateRoom: &roomserver.CreateRoom{RoomVersion: "10", Events: []roomserver.NewEvent{
		{Sender: alice, Type: "m.room.create", StateKey: sk(""), Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		{Sender: alice, Type: "m.room.member", StateKey: sk(alice), Content: raw(map[string]any{"membership": "join"})},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	roomID := resp.RoomID
	for i := range 5 {
		if _, err := rs.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{Sender: alice,
			Type: "m.room.message", Content: raw(map[string]any{"msgtype": "m.text", "body": fmt.Sprint(i)})}}); err != nil {
			t.Fatal(err)
		}
	}
	fb := &fakeBackfiller{}
	a := New(db, roomserver.API{Roomserver: rs}, nil, log, WithBackfill(fb))
	dev := &userapi.Device{UserID: alice}
	page := func(query string) messagesResponse {
		t.Helper()
		r := httptest.NewRequest("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+query, nil)
		r = mux.SetURLVars(r, map[string]string{"roomId": url.PathEscape(roomID)})
		w := httptest.NewRecorder()
		if err := a.messages(w, r, dev); err != nil {
			t.Fatalf("messages?%s: %v", query, err)
		}
		var out messagesResponse
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	// Seven events: a page of three stops short of the start.
	first := page("dir=b&limit=3")
	if fb.calls != 0 || first.End == "" {
		t.Fatalf("a page short of the start: %d calls, end %q", fb.calls, first.End)
	}
	// The next page reaches it: one round, which finds nothing.
	rest := page("dir=b&limit=10&from=" + first.End)
	if fb.calls != 1 || len(rest.Chunk) != 4 || rest.End != "" {
		t.Errorf("a page to the start: %d calls, %d events, end %q", fb.calls, len(rest.Chunk), rest.End)
	}
	if fb.left <= 0 || fb.left > backfillTimeout {
		t.Errorf("the round had %s, want at most %s", fb.left, backfillTimeout)
	}
	page("dir=f&limit=100")
	page("dir=b&limit=100&to=" + first.End)
	if fb.calls != 1 {
		t.Errorf("forward pages and pages bounded by to asked for backfill: %d calls", fb.calls)
	}

	// A failing round: the page is served as it is.
	fb.err = errors.New("every server is down")
	if got := page("dir=b&limit=100"); fb.calls != 2 || len(got.Chunk) != 7 || got.End != "" {
		t.Errorf("after a failed round: %d calls, %d events, end %q", fb.calls, len(got.Chunk), got.End)
	}
	// A round that stored events: the page ends with a token to go on.
	fb.err, fb.n = nil, 3
	if got := page("dir=b&limit=100"); len(got.Chunk) != 7 || got.End == "" {
		t.Errorf("after a round that stored events: %d events, end %q", len(got.Chunk), got.End)
	}
}

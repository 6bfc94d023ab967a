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
	"slices"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// fakeBackfiller answers Backfill with n and err, and records the calls.
// With claim set it claims the gaps asked for, as the federation
// Backfiller does, which makes them back off.
type fakeBackfiller struct {
	rs    *roomserver.Roomserver
	claim bool
	n     int
	err   error

	calls int
	from  []string
	limit int
	// left is the time the last call had before its context's deadline.
	left time.Duration
}

func (f *fakeBackfiller) Backfill(ctx context.Context, roomID string, from []string, limit int) (int, error) {
	f.calls++
	f.from, f.limit = from, limit
	if d, ok := ctx.Deadline(); ok {
		f.left = time.Until(d)
	}
	if f.claim {
		if _, _, err := f.rs.BackfillFrom(ctx, roomID, from); err != nil {
			return 0, err
		}
	}
	return f.n, f.err
}

// joinThrough is a roomserver.Joiner that joins users to rooms of
// another roomserver in-process: the join is made there, and comes back
// with the state before it and every state event as its auth chain.
// Signatures are the federation layer's business, not checked here.
type joinThrough struct {
	rs *roomserver.Roomserver
	db *sql.DB
}

func (j joinThrough) Join(ctx context.Context, _ []spec.ServerName, roomID, userID string, _ json.RawMessage) (*roomserver.JoinResult, error) {
	resp, err := j.rs.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{Sender: userID,
		Type: spec.MRoomMember, StateKey: &userID, Content: json.RawMessage(`{"membership":"join"}`)}})
	if err != nil {
		return nil, err
	}
	parse := func(rows []sql.Event) ([]gomatrixserverlib.PDU, error) {
		var out []gomatrixserverlib.PDU
		for _, r := range rows {
			if r.StateKey == nil {
				continue
			}
			pdu, err := roomserver.ParseStored(r)
			if err != nil {
				return nil, err
			}
			out = append(out, pdu)
		}
		return out, nil
	}
	join, err := j.db.EventByID(ctx, resp.EventIDs[0])
	if err != nil {
		return nil, err
	}
	state, err := j.db.Snapshot(ctx, join.StateBeforeNID)
	if err != nil {
		return nil, err
	}
	var nids []int64
	for _, n := range state {
		nids = append(nids, n)
	}
	stateRows, err := j.db.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	all, err := j.db.TimelineEvents(ctx, join.RoomNID, sql.TopoStart, before(join), false, 1000)
	if err != nil {
		return nil, err
	}
	res := &roomserver.JoinResult{RoomVersion: gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(join.RoomVersion)),
		Server: "a.test"}
	if res.Event, err = roomserver.ParseStored(join); err != nil {
		return nil, err
	}
	if res.State, err = parse(stateRows); err != nil {
		return nil, err
	}
	if res.AuthChain, err = parse(all); err != nil {
		return nil, err
	}
	return res, nil
}

func (joinThrough) Leave(context.Context, []spec.ServerName, string, string, json.RawMessage) (gomatrixserverlib.PDU, error) {
	return nil, errors.New("not used")
}

func (joinThrough) Knock(context.Context, []spec.ServerName, string, string, json.RawMessage) (*roomserver.KnockResult, error) {
	return nil, errors.New("not used")
}

// Bob of b.test joins alice's room of a.test, where five messages came
// before: B's timeline has a gap before bob's join (sql.GapsIn). A
// backwards page of /messages that reaches the gap asks for one round of
// backfill from its missing prev event, the page's limit at most;
// pages that stop short of it and forward pages do not. The round has
// backfillTimeout at most. A round that fails leaves the page as it is
// (200, no end token); one that stored events, while the gap is still to
// be asked for, gives an end token, so the client asks for the next
// page, which asks again. A gap claimed by a round backs off: the pages
// that reach it meanwhile do not ask.
func TestMessagesAsksForBackfillAtGaps(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	engine := sqltest.Engines()[0]
	dbA, dbB := sqltest.Open(t, engine), sqltest.Open(t, engine)
	keyA, _ := serverkey.Generate()
	keyB, _ := serverkey.Generate()
	rsA, rsB := roomserver.New(dbA, nil, "a.test", keyA, log), roomserver.New(dbB, nil, "b.test", keyB, log)
	rsB.UseFederation(nil, joinThrough{rs: rsA, db: dbA})
	const alice, bob = "@alice:a.test", "@bob:b.test"
	sk := func(s string) *string { return &s }
	raw := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	resp, err := rsA.HandleInput(ctx, roomserver.InputRequest{CreateRoom: &roomserver.CreateRoom{RoomVersion: "10", Events: []roomserver.NewEvent{
		{Sender: alice, Type: "m.room.create", StateKey: sk(""), Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		{Sender: alice, Type: "m.room.member", StateKey: sk(alice), Content: raw(map[string]any{"membership": "join"})},
		{Sender: alice, Type: "m.room.join_rules", StateKey: sk(""), Content: raw(map[string]any{"join_rule": "public"})},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	roomID := resp.RoomID
	send := func(rs *roomserver.Roomserver, sender, body string) string {
		t.Helper()
		resp, err := rs.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{Sender: sender,
			Type: "m.room.message", Content: raw(map[string]any{"msgtype": "m.text", "body": body})}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.EventIDs[0]
	}
	var last string
	for i := range 5 {
		last = send(rsA, alice, fmt.Sprint(i))
	}
	if _, err := rsB.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, JoinRemote: &roomserver.JoinRemote{UserID: bob,
		Servers: []string{"a.test"}}}); err != nil {
		t.Fatalf("join: %v", err)
	}
	for i := range 3 {
		send(rsB, bob, fmt.Sprintf("b%d", i))
	}
	fb := &fakeBackfiller{rs: rsB}
	a := New(dbB, roomserver.API{Roomserver: rsB}, nil, log, WithBackfill(fb))
	dev := &userapi.Device{UserID: bob}
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

	// B's timeline: the join and three messages. A page of two stops
	// short of the gap.
	first := page("dir=b&limit=2")
	if fb.calls != 0 || first.End == "" {
		t.Fatalf("a page short of the gap: %d calls, end %q", fb.calls, first.End)
	}
	page("dir=f&limit=100")
	page("dir=b&limit=100&to=" + first.End)
	if fb.calls != 0 {
		t.Errorf("a forward page and a page bounded above the gap asked for backfill: %d calls", fb.calls)
	}

	// The next page reaches it: one round, from alice's last message,
	// which finds nothing.
	rest := page("dir=b&limit=10&from=" + first.End)
	if fb.calls != 1 || len(rest.Chunk) != 2 || rest.End != "" {
		t.Errorf("a page to the gap: %d calls, %d events, end %q", fb.calls, len(rest.Chunk), rest.End)
	}
	if !slices.Equal(fb.from, []string{last}) || fb.limit != 10 {
		t.Errorf("the round asked for %d events from %v, want 10 from %s", fb.limit, fb.from, last)
	}
	if fb.left <= 0 || fb.left > backfillTimeout {
		t.Errorf("the round had %s, want at most %s", fb.left, backfillTimeout)
	}

	// A failing round: the page is served as it is.
	fb.err = errors.New("every server is down")
	if got := page("dir=b&limit=100"); fb.calls != 2 || len(got.Chunk) != 4 || got.End != "" {
		t.Errorf("after a failed round: %d calls, %d events, end %q", fb.calls, len(got.Chunk), got.End)
	}
	// A round that stored events, the gap still open: the page ends
	// with a token to go on, just after the gap.
	fb.err, fb.n = nil, 3
	got := page("dir=b&limit=100")
	if fb.calls != 3 || len(got.Chunk) != 4 || got.End == "" {
		t.Fatalf("after a round that stored events: %d calls, %d events, end %q", fb.calls, len(got.Chunk), got.End)
	}
	// The next page asks again, and claims the gap, which then backs
	// off: the pages after it do not ask.
	fb.claim, fb.n = true, 0
	if next := page("dir=b&limit=100&from=" + got.End); fb.calls != 4 || len(next.Chunk) != 0 || next.End != "" {
		t.Errorf("the page after the gap: %d calls, %d events, end %q", fb.calls, len(next.Chunk), next.End)
	}
	page("dir=b&limit=100")
	if fb.calls != 4 {
		t.Errorf("a claimed gap was asked for again at once: %d calls", fb.calls)
	}
}

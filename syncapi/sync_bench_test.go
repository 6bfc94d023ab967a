package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// benchServer starts a homeserver (on benchEngine) with a user in rooms
// rooms of events messages each.
func benchServer(b *testing.B, rooms, events int) (hs, *mautrix.Client, []string) {
	b.Helper()
	h := hs{hstest.StartEngine(b, benchEngine())}
	alice := userTB(b, h, "alice")
	var ids []string
	for r := range rooms {
		roomID := createRoomTB(b, alice, fmt.Sprint("room ", r))
		for i := range events {
			sendTB(b, alice, roomID, fmt.Sprint(i))
		}
		ids = append(ids, roomID)
	}
	return h, alice, ids
}

// BenchmarkSyncInitial is an initial sync of a user in 20 rooms of 30
// messages each, with the default filter.
func BenchmarkSyncInitial(b *testing.B) {
	h, alice, _ := benchServer(b, 20, 30)
	for b.Loop() {
		h.getTB(b, alice, "/_matrix/client/v3/sync", nil)
	}
}

// BenchmarkSyncIncremental is an incremental sync after one new message in
// one of 20 rooms: what every woken long-poll costs.
func BenchmarkSyncIncremental(b *testing.B) {
	h, alice, rooms := benchServer(b, 20, 5)
	since := h.syncTB(b, alice, nil).NextBatch
	sendTB(b, alice, rooms[3], "new")
	for b.Loop() {
		h.getTB(b, alice, "/_matrix/client/v3/sync", url.Values{"since": {since}})
	}
}

// BenchmarkSyncFanout: 50 members of a room long-poll; each iteration is
// one message and the time until all 50 syncs have answered with it.
func BenchmarkSyncFanout(b *testing.B) {
	const members = 50
	h := hs{hstest.StartEngine(b, benchEngine())}
	alice := userTB(b, h, "alice")
	roomID := createRoomTB(b, alice, "fanout")
	var readers []*mautrix.Client
	for i := range members {
		u := userTB(b, h, fmt.Sprint("reader", i))
		if _, err := u.JoinRoomByID(b.Context(), id.RoomID(roomID)); err != nil {
			b.Fatal(err)
		}
		readers = append(readers, u)
	}
	tokens := make([]string, members)
	for i, u := range readers {
		tokens[i] = h.syncTB(b, u, nil).NextBatch
	}
	for b.Loop() {
		b.StopTimer()
		waiting := make([]<-chan syncResult, members)
		for i, u := range readers {
			waiting[i] = h.syncAsync(b, u, tokens[i], 30*time.Second)
		}
		time.Sleep(50 * time.Millisecond) // let them all wait
		b.StartTimer()
		sendTB(b, alice, roomID, "ping")
		for i, c := range waiting {
			r := <-c
			if r.err != nil || r.resp.noRooms() {
				b.Fatalf("reader %d: %v %+v", i, r.err, r.resp)
			}
			tokens[i] = r.resp.NextBatch
		}
	}
}

func userTB(tb testing.TB, h hs, localpart string) *mautrix.Client {
	tb.Helper()
	return testclient.Register(tb, h.ClientURL, localpart)
}

func createRoomTB(tb testing.TB, cli *mautrix.Client, name string) string {
	tb.Helper()
	resp, err := cli.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Name: name, Preset: "public_chat"})
	if err != nil {
		tb.Fatal(err)
	}
	return resp.RoomID.String()
}

func sendTB(tb testing.TB, cli *mautrix.Client, roomID, body string) {
	tb.Helper()
	if _, err := cli.SendText(context.Background(), id.RoomID(roomID), body); err != nil {
		tb.Fatal(err)
	}
}

func (h hs) getTB(tb testing.TB, cli *mautrix.Client, path string, q url.Values) []byte {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.ClientURL+path+"?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return raw
}

func (h hs) syncTB(tb testing.TB, cli *mautrix.Client, q url.Values) syncResp {
	tb.Helper()
	var resp syncResp
	if err := json.Unmarshal(h.getTB(tb, cli, "/_matrix/client/v3/sync", q), &resp); err != nil {
		tb.Fatal(err)
	}
	return resp
}

// benchEngine is SQLite, or the engine WEFT_BENCH_ENGINE names.
func benchEngine() config.Engine {
	if e := os.Getenv("WEFT_BENCH_ENGINE"); e != "" {
		return config.Engine(e)
	}
	return sqltest.Engines()[0]
}

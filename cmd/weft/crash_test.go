package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// Crash test parameters: enough senders and sends to catch the server in
// the middle of batches and group commits, few enough to stay fast.
const (
	crashSenders   = 8
	crashMaxEach   = 60 // per sender, a bound in case the kill comes late
	crashKillAfter = 200
	crashSecret    = "crash-secret"
)

// TestCrashDuringSends kills a real weft process with SIGKILL in the middle
// of a burst of sends and restarts it on the same data: every event whose
// send was answered 200 must be there, once, in each sender's order; the
// stream positions must have no gap; a retried transaction id must give the
// event it gave before and never a second event (spec: "Transaction
// identifiers": the same transaction id returns the same event id).
func TestCrashDuringSends(t *testing.T) {
	if testing.Short() {
		t.Skip("builds weft, runs it and kills it; skipped with -short")
	}
	bin := buildWeft(t)
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			dir := t.TempDir()
			dbURL := "sqlite:" + filepath.Join(dir, "weft-data", "weft.db")
			if engine == config.Postgres {
				dbURL = sqltest.URL(t, engine)
			}
			testCrash(t, bin, dir, dbURL)
		})
	}
}

// sent is a send answered 200.
type sent struct {
	txn, eventID string
}

func testCrash(t *testing.T, bin, dir, dbURL string) {
	clientAddr := freePort(t)
	env := cleanEnv(
		"WEFT_CLIENT_LISTEN="+clientAddr, "WEFT_FEDERATION_LISTEN="+freePort(t),
		"WEFT_DATABASE_URL="+dbURL, "WEFT_REGISTRATION_SHARED_SECRET="+crashSecret,
		"WEFT_RATE_LIMITS_ENABLED=false", "WEFT_LOGGING_LEVEL=warn",
	)
	base := "http://" + clientAddr
	p := startWeft(t, bin, dir, env)
	waitForVersions(t, base, p.exited, p.stderr)

	c := &crashClient{t: t, base: base, http: &http.Client{Timeout: 10 * time.Second}}
	c.token = c.registerShared("crasher", "password")
	var created struct {
		RoomID string `json:"room_id"`
	}
	if status, body := c.do(http.MethodPost, "/_matrix/client/v3/createRoom", map[string]any{}, &created); status != 200 {
		t.Fatalf("createRoom: %d %s", status, body)
	}
	roomID := created.RoomID

	// The burst: each sender sends in order and stops at its first send
	// not answered 200, which is the one in flight when the server died.
	acked := make([][]sent, crashSenders)
	unacked := make([]string, crashSenders)
	var total atomic.Int64
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for s := range crashSenders {
		wg.Go(func() {
			for i := range crashMaxEach {
				txn := fmt.Sprintf("s%d-%03d", s, i)
				id, status := c.send(roomID, txn)
				if status != 200 {
					unacked[s] = txn
					return
				}
				acked[s] = append(acked[s], sent{txn, id})
				if total.Add(1) == crashKillAfter {
					if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Errorf("kill: %v", err)
					}
					close(killed)
				}
			}
		})
	}
	select {
	case <-killed:
	case <-time.After(60 * time.Second):
		t.Fatal("the burst did not reach the kill point in 60s")
	}
	<-p.exited
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("killed after %d sends answered 200; in flight: %v", total.Load(), unacked)

	p = startWeft(t, bin, dir, env)
	waitForVersions(t, base, p.exited, p.stderr)
	defer p.stop(t)

	// Every acknowledged event is readable, by id and in the timeline.
	for _, evs := range acked {
		for _, e := range evs {
			if status, body := c.do(http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(e.eventID), nil, nil); status != 200 {
				t.Errorf("acknowledged event %s (txn %s) after restart: %d %s", e.eventID, e.txn, status, body)
			}
		}
	}
	before := c.timeline(roomID)

	// Retries: the last acknowledged transaction gives the same event;
	// the one in flight gives the event it made if it was committed, or a
	// new one, and either way only one.
	committed := 0
	for _, txn := range unacked {
		if _, ok := before.byBody[txn]; ok {
			committed++
		}
	}
	// Committed before the crash, or after the restart from the input
	// queue, which kept them: either way their retry must not add one.
	t.Logf("of the %d sends in flight, %d were committed before their retry", len(unacked), committed)
	for s := range crashSenders {
		if n := len(acked[s]); n > 0 {
			last := acked[s][n-1]
			if id, status := c.send(roomID, last.txn); status != 200 || id != last.eventID {
				t.Errorf("retried acknowledged txn %s: %d %s, want %s", last.txn, status, id, last.eventID)
			}
		}
		if txn := unacked[s]; txn != "" {
			id, status := c.send(roomID, txn)
			if status != 200 {
				t.Errorf("retried txn %s after restart: %d", txn, status)
				continue
			}
			if old, ok := before.byBody[txn]; ok && old != id {
				t.Errorf("txn %s was committed as %s before the crash; its retry made %s", txn, old, id)
			}
			acked[s] = append(acked[s], sent{txn, id})
		}
	}

	after := c.timeline(roomID)
	for body, n := range after.count {
		if n != 1 {
			t.Errorf("txn %s is in the timeline %d times", body, n)
		}
	}
	for s, evs := range acked {
		prev := -1
		for _, e := range evs {
			at, ok := after.index[e.eventID]
			switch {
			case !ok:
				t.Errorf("sender %d: event %s (txn %s) answered 200 is not in the timeline", s, e.eventID, e.txn)
			case at <= prev:
				t.Errorf("sender %d: txn %s is out of order in the timeline", s, e.txn)
			default:
				prev = at
			}
		}
	}
	checkStored(t, dbURL, roomID, acked)
}

// checkStored reads the room straight from the database: each acknowledged
// event once, stream positions increasing with depth and without a gap (a
// reader that sees position N must have everything below it), depths one
// apart (one writer, so one chain).
func checkStored(t *testing.T, dbURL, roomID string, acked [][]sent) {
	t.Helper()
	ctx := context.Background()
	db, err := sql.Open(ctx, dbURL, 2)
	if err != nil {
		t.Fatalf("open %s: %v", dbURL, err)
	}
	defer db.Close()
	info, err := db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := db.TimelineEvents(ctx, info.NID, sql.TopoStart, sql.TopoEnd, false, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int)
	for i, e := range evs {
		seen[e.EventID]++
		if i == 0 {
			continue
		}
		// The room is the only one on the server, so its positions are
		// the whole event stream.
		if e.StreamPos != evs[i-1].StreamPos+1 || e.Depth != evs[i-1].Depth+1 {
			t.Errorf("event %d: stream position %d depth %d after %d, %d", i, e.StreamPos, e.Depth, evs[i-1].StreamPos, evs[i-1].Depth)
		}
	}
	if len(evs) > 0 && evs[0].StreamPos != 1 {
		t.Errorf("the first stream position is %d", evs[0].StreamPos)
	}
	if pos, err := db.StreamPos(ctx, "events"); err != nil || len(evs) == 0 || pos != evs[len(evs)-1].StreamPos {
		t.Errorf("events stream counter %d (%v), last stored position %d", pos, err, evs[len(evs)-1].StreamPos)
	}
	if info.LastStreamPos != evs[len(evs)-1].StreamPos || len(info.Extremities) != 1 || info.Extremities[0] != evs[len(evs)-1].EventID {
		t.Errorf("room row: last position %d, extremities %v; last event %s at %d", info.LastStreamPos, info.Extremities, evs[len(evs)-1].EventID, evs[len(evs)-1].StreamPos)
	}
	for _, s := range acked {
		for _, e := range s {
			if seen[e.eventID] != 1 {
				t.Errorf("event %s (txn %s) is stored %d times", e.eventID, e.txn, seen[e.eventID])
			}
		}
	}
}

// crashClient is a bare Matrix client: the test needs status codes and
// retries with chosen transaction ids, nothing more.
type crashClient struct {
	t     *testing.T
	base  string
	http  *http.Client
	token string
}

// do sends a JSON request and decodes a 200 answer into out; it returns
// the status (0 when the server is unreachable) and the body.
func (c *crashClient) do(method, path string, in, out any) (int, string) {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			c.t.Fatal(err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode == 200 && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			c.t.Errorf("%s %s: %v in %s", method, path, err, data)
		}
	}
	return res.StatusCode, string(data)
}

// registerShared registers a user with the shared-secret admin API
// (Synapse's /_synapse/admin/v1/register) and returns its access token.
func (c *crashClient) registerShared(user, password string) string {
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if status, body := c.do(http.MethodGet, "/_synapse/admin/v1/register", nil, &nonce); status != 200 {
		c.t.Fatalf("register nonce: %d %s", status, body)
	}
	mac := hmac.New(sha1.New, []byte(crashSecret))
	mac.Write([]byte(nonce.Nonce + "\x00" + user + "\x00" + password + "\x00notadmin"))
	var reg struct {
		AccessToken string `json:"access_token"`
	}
	if status, body := c.do(http.MethodPost, "/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce.Nonce, "username": user, "password": password, "admin": false, "mac": hex.EncodeToString(mac.Sum(nil)),
	}, &reg); status != 200 || reg.AccessToken == "" {
		c.t.Fatalf("register %s: %d %s", user, status, body)
	}
	return reg.AccessToken
}

// send sends a message whose body is its transaction id.
func (c *crashClient) send(roomID, txn string) (eventID string, status int) {
	var resp struct {
		EventID string `json:"event_id"`
	}
	status, _ = c.do(http.MethodPut, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn,
		map[string]any{"msgtype": "m.text", "body": txn}, &resp)
	return resp.EventID, status
}

// timelineView is the room's messages as /messages returns them.
type timelineView struct {
	index  map[string]int    // event id → place in the timeline
	byBody map[string]string // body (the txn) → event id
	count  map[string]int    // body → how many events carry it
}

// timeline pages through the whole room with /messages, oldest first.
func (c *crashClient) timeline(roomID string) timelineView {
	v := timelineView{index: map[string]int{}, byBody: map[string]string{}, count: map[string]int{}}
	from, n := "", 0
	for range 100 {
		q := url.Values{"dir": {"f"}, "limit": {"1000"}}
		if from != "" {
			q.Set("from", from)
		}
		var page struct {
			Chunk []struct {
				EventID string `json:"event_id"`
				Type    string `json:"type"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		if status, body := c.do(http.MethodGet, "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil, &page); status != 200 {
			c.t.Fatalf("/messages: %d %s", status, body)
		}
		for _, e := range page.Chunk {
			if _, dup := v.index[e.EventID]; dup {
				c.t.Errorf("/messages returned %s twice", e.EventID)
			}
			v.index[e.EventID] = n
			n++
			if e.Type == "m.room.message" && strings.HasPrefix(e.Content.Body, "s") {
				v.byBody[e.Content.Body] = e.EventID
				v.count[e.Content.Body]++
			}
		}
		if page.End == "" || len(page.Chunk) == 0 {
			return v
		}
		from = page.End
	}
	c.t.Fatal("/messages did not end in 100 pages")
	return v
}

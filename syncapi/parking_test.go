package syncapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/homeserver/hstest"
)

// oneConnClient is an HTTP client over at most one connection, which
// reports the local address of the connection each request went over.
type oneConnClient struct {
	c *http.Client
}

func newOneConnClient() oneConnClient {
	return oneConnClient{&http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}}
}

func (o oneConnClient) get(t *testing.T, cli *mautrix.Client, u string, header http.Header) (body []byte, resp *http.Response, conn string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	if cli != nil {
		req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	}
	req = req.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { conn = i.Conn.LocalAddr().String() },
	}))
	resp, err := o.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	return body, resp, conn
}

func longPollURL(h hs, since string, timeout time.Duration) string {
	return h.ClientURL + "/_matrix/client/v3/sync?" + url.Values{"since": {since},
		"timeout": {fmt.Sprint(timeout.Milliseconds())}}.Encode()
}

// TestSyncParkedKeepAlive: a long-poll parks its connection while it
// waits; woken by a message, or at its timeout, it answers over that
// connection, which then serves the client's next requests (keep-alive
// kept), with the headers the middleware sets (CORS).
func TestSyncParkedKeepAlive(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		since := h.sync(t, bob, nil).NextBatch
		c := newOneConnClient()

		type answer struct {
			body []byte
			resp *http.Response
			conn string
		}
		done := make(chan answer, 1)
		go func() {
			b, r, conn := c.get(t, bob, longPollURL(h, since, 20*time.Second), nil)
			done <- answer{b, r, conn}
		}()
		time.Sleep(300 * time.Millisecond)
		send(t, alice, roomID, "wake up", nil)
		var a answer
		select {
		case a = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the parked long-poll did not answer the message")
		}
		var r syncResp
		if err := json.Unmarshal(a.body, &r); err != nil || a.resp.StatusCode != http.StatusOK {
			t.Fatalf("woken long-poll: %d %s %v", a.resp.StatusCode, a.body, err)
		}
		j, _ := r.joined(roomID)
		if !slices.Contains(bodies(j.Timeline.Events), "wake up") {
			t.Fatalf("woken long-poll: %s", a.body)
		}
		if a.resp.Header.Get("Access-Control-Allow-Origin") != "*" || a.resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("headers of a parked answer: %v", a.resp.Header)
		}

		// Nothing comes: it answers at its timeout, on the same
		// connection, which then serves another endpoint. (The message's
		// counts may come first, when something else woke the first
		// long-poll before the counter counted the message: alice's
		// presence, say.)
		next := r.NextBatch
		for range 5 {
			start := time.Now()
			b, resp, conn := c.get(t, bob, longPollURL(h, next, 300*time.Millisecond), nil)
			took := time.Since(start)
			if conn != a.conn {
				t.Errorf("next long-poll over %s, the first over %s", conn, a.conn)
			}
			var r2 syncResp
			if err := json.Unmarshal(b, &r2); err != nil || resp.StatusCode != http.StatusOK || r2.NextBatch == "" {
				t.Fatalf("next long-poll: %d %s %v", resp.StatusCode, b, err)
			}
			next = r2.NextBatch
			if countsOnly(r2) || r2.Presence != nil {
				continue
			}
			if !r2.noRooms() || took < 300*time.Millisecond {
				t.Fatalf("timed-out long-poll answered after %s: %s", took, b)
			}
			break
		}
		_, resp, conn := c.get(t, nil, h.ClientURL+"/_matrix/client/versions", nil)
		if resp.StatusCode != http.StatusOK || conn != a.conn {
			t.Errorf("next request: %d over %s, want 200 over %s", resp.StatusCode, conn, a.conn)
		}
	})
}

// TestSyncParkedConnectionClose: a client that asks for the connection to
// close after the answer gets that.
func TestSyncParkedConnectionClose(t *testing.T) {
	h := hs{hstest.StartEngine(t, "sqlite")}
	bob := h.user(t, "bob")
	since := h.sync(t, bob, nil).NextBatch
	b, resp, _ := newOneConnClient().get(t, bob, longPollURL(h, since, 200*time.Millisecond), http.Header{"Connection": {"close"}})
	if resp.StatusCode != http.StatusOK || !resp.Close || !strings.Contains(string(b), "next_batch") {
		t.Fatalf("answer %d, close %v: %s", resp.StatusCode, resp.Close, b)
	}
}

// TestSyncParkedPipelined: a request sent behind a parked long-poll on
// its connection is served after the long-poll's answer, in order.
func TestSyncParkedPipelined(t *testing.T) {
	h := hs{hstest.StartEngine(t, "sqlite")}
	bob := h.user(t, "bob")
	since := h.sync(t, bob, nil).NextBatch
	u, _ := url.Parse(longPollURL(h, since, 300*time.Millisecond))
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", u.RequestURI(), u.Host, bob.AccessToken)
	fmt.Fprintf(conn, "GET /_matrix/client/versions HTTP/1.1\r\nHost: %s\r\n\r\n", u.Host)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for i, want := range []string{"next_batch", "versions"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Fatalf("answer %d: %d %s, want one with %q", i, resp.StatusCode, b, want)
		}
	}
}

// TestSyncParkedShutdown: stopping the server answers the parked
// long-polls at once, each with Connection: close (no next request will
// be served), and does not wait for an Accept of their connections
// (more of them than the hand-back queue holds).
func TestSyncParkedShutdown(t *testing.T) {
	h := hs{hstest.StartEngine(t, "sqlite")}
	bob := h.user(t, "bob")
	since := h.sync(t, bob, nil).NextBatch
	const polls = 80
	answers := make(chan *http.Response, polls)
	for range polls {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, longPollURL(h, since, time.Minute), nil)
			req.Header.Set("Authorization", "Bearer "+bob.AccessToken)
			// A connection each, as idle clients have.
			res, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
			if err == nil {
				_, err = io.ReadAll(res.Body)
				res.Body.Close()
			}
			if err != nil {
				res = nil
			}
			answers <- res
		}()
	}
	time.Sleep(time.Second) // all parked
	start := time.Now()
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("shutdown took %s", took)
	}
	for range polls {
		select {
		case res := <-answers:
			if res == nil || res.StatusCode != http.StatusOK || !res.Close {
				t.Fatalf("parked long-poll at shutdown: %+v", res)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a parked long-poll was not answered at shutdown")
		}
	}
}

// TestSyncParkedQuiet: a long-poll from the token of the device's last
// parked answer may park without reading (nothing woke the user since
// that answer's read). It must still answer at once for what committed
// after that read, wait for and answer what commits while it waits, and
// at its timeout answer with the device's key counts.
func TestSyncParkedQuiet(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		c := newOneConnClient()
		// poll long-polls from since until it gets a message (skipping
		// answers with counts or presence only) and returns its bodies.
		poll := func(since *string, timeout time.Duration) []string {
			t.Helper()
			for range 10 {
				b, resp, _ := c.get(t, bob, longPollURL(h, *since, timeout), nil)
				var r syncResp
				if err := json.Unmarshal(b, &r); err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("long-poll: %d %s %v", resp.StatusCode, b, err)
				}
				*since = r.NextBatch
				if j, ok := r.joined(roomID); ok && len(bodies(j.Timeline.Events)) > 0 {
					return bodies(j.Timeline.Events)
				}
			}
			t.Fatal("no message in 10 long-polls")
			return nil
		}
		since := h.sync(t, bob, nil).NextBatch
		go func() {
			time.Sleep(300 * time.Millisecond)
			send(t, alice, roomID, "one", nil)
		}()
		if got := poll(&since, 20*time.Second); !slices.Equal(got, []string{"one"}) {
			t.Fatalf("first long-poll: %v", got)
		}
		// Committed before the next long-poll, whose wake-up came while
		// nobody listened: answered at once, not at the timeout.
		send(t, alice, roomID, "two", nil)
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if got := poll(&since, 20*time.Second); !slices.Equal(got, []string{"two"}) || time.Since(start) > 10*time.Second {
			t.Fatalf("long-poll after a send: %v after %s", got, time.Since(start))
		}
		// Committed while it waits.
		go func() {
			time.Sleep(300 * time.Millisecond)
			send(t, alice, roomID, "three", nil)
		}()
		if got := poll(&since, 20*time.Second); !slices.Equal(got, []string{"three"}) {
			t.Fatalf("long-poll woken while quiet: %v", got)
		}
		// Nothing comes: the timeout's answer, with the key counts.
		for range 5 {
			start := time.Now()
			b, _, _ := c.get(t, bob, longPollURL(h, since, 300*time.Millisecond), nil)
			var r struct {
				syncResp
				Counts map[string]int `json:"device_one_time_keys_count"`
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			since = r.NextBatch
			if countsOnly(r.syncResp) || r.Presence != nil {
				continue
			}
			if !r.noRooms() || time.Since(start) < 300*time.Millisecond || r.Counts == nil {
				t.Fatalf("quiet long-poll at its timeout after %s: %s", time.Since(start), b)
			}
			return
		}
		t.Fatal("no quiet long-poll")
	})
}

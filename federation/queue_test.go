package federation

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// attempt is one PUT /send a fake destination received.
type attempt struct {
	txnID  string
	edus   []string // contents, in order
	pdus   []string
	status int
	raw    []byte
}

// fakeDest is a real HTTPS server on loopback that plays a destination:
// it records every transaction and answers with answer's status (200 when
// answer is nil or returns 0). httptest's TLS servers share one
// certificate, which testClient trusts.
type fakeDest struct {
	srv  *httptest.Server
	name spec.ServerName

	mu       sync.Mutex
	attempts []attempt
	answer   func(n int, a attempt) int // n counts attempts from 0
	arrived  chan struct{}
}

func newFakeDest(t *testing.T) *fakeDest {
	d := &fakeDest{arrived: make(chan struct{}, 1000)}
	d.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		txnID, ok := strings.CutPrefix(r.URL.Path, "/_matrix/federation/v1/send/")
		if r.Method != http.MethodPut || !ok || !strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix ") {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, 404)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var body struct {
			Origin string            `json:"origin"`
			PDUs   []json.RawMessage `json:"pdus"`
			EDUs   []struct {
				Type    string          `json:"edu_type"`
				Content json.RawMessage `json:"content"`
			} `json:"edus"`
		}
		if err := json.Unmarshal(raw, &body); err != nil || body.Origin != string(ours) {
			http.Error(w, `{"errcode":"M_BAD_JSON"}`, 400)
			return
		}
		a := attempt{txnID: txnID, raw: raw}
		for _, e := range body.EDUs {
			a.edus = append(a.edus, string(e.Content))
		}
		for _, p := range body.PDUs {
			a.pdus = append(a.pdus, string(p))
		}
		d.mu.Lock()
		answer := d.answer
		n := len(d.attempts)
		d.mu.Unlock()
		a.status = 200
		if answer != nil {
			if s := answer(n, a); s != 0 {
				a.status = s
			}
		}
		d.mu.Lock()
		d.attempts = append(d.attempts, a)
		d.mu.Unlock()
		w.WriteHeader(a.status)
		w.Write([]byte(`{"pdus":{}}`))
		d.arrived <- struct{}{}
	}))
	t.Cleanup(d.srv.Close)
	d.name = spec.ServerName(d.srv.Listener.Addr().String())
	return d
}

func (d *fakeDest) setAnswer(f func(n int, a attempt) int) {
	d.mu.Lock()
	d.answer = f
	d.mu.Unlock()
}

func (d *fakeDest) all() []attempt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.attempts)
}

// delivered lists the EDU contents of the accepted transactions, in the
// order they were accepted.
func (d *fakeDest) delivered() []string {
	var out []string
	for _, a := range d.all() {
		if a.status == 200 {
			out = append(out, a.edus...)
		}
	}
	return out
}

// waitDelivered waits until the accepted transactions carry n EDUs.
func (d *fakeDest) waitDelivered(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.After(within)
	for {
		got := d.delivered()
		if len(got) >= n {
			return got
		}
		select {
		case <-d.arrived:
		case <-deadline:
			t.Fatalf("%s: %d EDUs delivered after %v, want %d: %v", d.name, len(got), within, n, got)
		}
	}
}

// testClient is a federation client signing as ours that trusts the
// httptest certificate and may connect to loopback.
func testClient(t *testing.T, key serverkey.Key) *Client {
	t.Helper()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{ServerName: ours, Key: key, TrustedCAFile: ca, AllowNetworks: []string{"127.0.0.0/8"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newTestQueue makes a queue of ours on db with fast back-off and a fixed
// jitter of 1, started until the test ends (or stop).
func newTestQueue(t *testing.T, db *sql.DB, tweak func(*QueueConfig)) (*Queue, func()) {
	t.Helper()
	key, _ := serverkey.Generate()
	cfg := QueueConfig{DB: db, Client: testClient(t, key), Key: key, Origin: ours,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond, AttemptTimeout: 5 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	q, err := NewQueue(cfg)
	if err != nil {
		t.Fatal(err)
	}
	q.jitter = func() float64 { return 1 }
	stop, err := q.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return q, stop
}

func sendN(t *testing.T, q *Queue, dest spec.ServerName, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := q.SendEDU(context.Background(), dest, "m.test", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
}

func want(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf(`{"n":%d}`, i))
	}
	return out
}

// TestQueueDelivers: EDUs reach the destination in order, each once, in
// transactions of at most 100 EDUs with a "pdus" array, and the queue is
// empty afterwards.
func TestQueueDelivers(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		dest := newFakeDest(t)
		// Hold the first transaction so that the rest pile up and go in
		// full transactions (the first may already take 100).
		release := make(chan struct{})
		dest.setAnswer(func(n int, _ attempt) int {
			if n == 0 {
				<-release
			}
			return 0
		})
		q, _ := newTestQueue(t, db, nil)
		sendN(t, q, dest.name, 0, 1)
		edus := make([]EDU, 0, 249)
		for i := 1; i < 250; i++ {
			edus = append(edus, EDU{Destination: dest.name, Type: "m.test", Content: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
		}
		if err := q.SendEDUs(context.Background(), edus); err != nil {
			t.Fatal(err)
		}
		close(release)
		got := dest.waitDelivered(t, 250, 20*time.Second)
		if !slices.Equal(got, want(0, 250)) {
			t.Fatalf("delivered %v", got)
		}
		for _, a := range dest.all() {
			if len(a.edus) > MaxTransactionEDUs {
				t.Errorf("transaction %s carries %d EDUs", a.txnID, len(a.edus))
			}
			if !strings.Contains(string(a.raw), `"pdus":[]`) {
				t.Errorf("transaction without a pdus array: %s", a.raw[:min(len(a.raw), 200)])
			}
		}
		full := 0
		for _, a := range dest.all() {
			if len(a.edus) == MaxTransactionEDUs {
				full++
			}
		}
		if full < 2 {
			t.Errorf("%d full transactions for 250 EDUs queued at once, want at least 2", full)
		}
		waitEmpty(t, db, dest.name)
	})
}

func waitEmpty(t *testing.T, db *sql.DB, dest spec.ServerName) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		queued, err := db.FederationQueued(context.Background(), string(dest))
		if err != nil {
			t.Fatal(err)
		}
		if !queued {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("items for %s still queued", dest)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQueueRetriesWithBackoff: a destination failing five times (503,
// then a dropped connection) gets the same transaction, under the same
// id, each time; the waits double from the minimum up to the cap; items
// queued meanwhile follow in the next transaction; nothing is lost or
// duplicated, and the back-off is cleared on success.
func TestQueueRetriesWithBackoff(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		dest := newFakeDest(t)
		dest.setAnswer(func(n int, _ attempt) int {
			if n < 5 {
				return 503
			}
			return 0
		})
		var mu sync.Mutex
		var waits []time.Duration
		q, _ := newTestQueue(t, db, nil)
		q.onBackoff = func(_ spec.ServerName, w time.Duration) {
			mu.Lock()
			waits = append(waits, w)
			mu.Unlock()
		}
		sendN(t, q, dest.name, 0, 3)
		// More while it fails.
		for len(dest.all()) < 2 {
			<-dest.arrived
		}
		sendN(t, q, dest.name, 3, 6)

		got := dest.waitDelivered(t, 6, 20*time.Second)
		if !slices.Equal(got, want(0, 6)) {
			t.Fatalf("delivered %v", got)
		}
		all := dest.all()
		first := all[0]
		for i, a := range all[:6] {
			if a.txnID != first.txnID || !slices.Equal(a.edus, first.edus) {
				t.Fatalf("attempt %d: transaction %s %v, want the first one again: %s %v", i, a.txnID, a.edus, first.txnID, first.edus)
			}
		}
		if all[len(all)-1].txnID == first.txnID {
			t.Fatal("items queued later went under the retried transaction's id")
		}
		mu.Lock()
		gotWaits := slices.Clone(waits)
		mu.Unlock()
		ms := time.Millisecond
		if !slices.Equal(gotWaits, []time.Duration{20 * ms, 40 * ms, 80 * ms, 80 * ms, 80 * ms}) {
			t.Fatalf("back-off waits %v, want 20ms doubling to the 80ms cap", gotWaits)
		}
		st, err := db.FederationDestinationState(context.Background(), string(dest.name))
		if err != nil || st.FailureTS != 0 || st.RetryIntervalMS != 0 || st.RetryAtTS != 0 {
			t.Fatalf("back-off not cleared: %+v %v", st, err)
		}
		waitEmpty(t, db, dest.name)
	})
}

func TestNextBackoff(t *testing.T) {
	const minW, maxW = 10 * time.Second, 24 * time.Hour
	if got := nextBackoff(0, minW, maxW, 1.4); got != minW {
		t.Errorf("first failure waits %v", got)
	}
	if got := nextBackoff(minW, minW, maxW, 0.8); got != 16*time.Second {
		t.Errorf("low jitter: %v", got)
	}
	if got := nextBackoff(minW, minW, maxW, 1.4); got != 28*time.Second {
		t.Errorf("high jitter: %v", got)
	}
	w := time.Duration(0)
	for range 40 {
		next := nextBackoff(w, minW, maxW, 0.8)
		if next < w || next > maxW {
			t.Fatalf("back-off went from %v to %v", w, next)
		}
		w = next
	}
	if w != maxW {
		t.Errorf("back-off did not reach its cap: %v", w)
	}
}

// TestQueueSlowDestinationDoesNotBlockOthers: while one destination holds
// its transaction open, another gets its EDUs at once.
func TestQueueSlowDestinationDoesNotBlockOthers(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	slow, fast := newFakeDest(t), newFakeDest(t)
	release, entered := make(chan struct{}), make(chan struct{}, 1)
	defer close(release)
	slow.setAnswer(func(int, attempt) int { entered <- struct{}{}; <-release; return 0 })
	q, _ := newTestQueue(t, db, func(c *QueueConfig) { c.MaxSending = 2; c.AttemptTimeout = time.Minute })
	sendN(t, q, slow.name, 0, 1)
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow destination got no transaction")
	}
	sendN(t, q, fast.name, 0, 3)
	if got := fast.waitDelivered(t, 3, 5*time.Second); !slices.Equal(got, want(0, 3)) {
		t.Fatalf("fast destination got %v", got)
	}
	if len(slow.delivered()) != 0 {
		t.Fatal("the slow destination answered")
	}
}

// TestQueueRestart: EDUs queued while the destination is down, before and
// while the sending process is stopped, are delivered in order by the
// next process on the same database.
func TestQueueRestart(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		dest := newFakeDest(t)
		var down sync.Mutex
		isDown := true
		dest.setAnswer(func(int, attempt) int {
			down.Lock()
			defer down.Unlock()
			if isDown {
				return 502
			}
			return 0
		})
		q1, stop1 := newTestQueue(t, db, func(c *QueueConfig) { c.MinBackoff, c.MaxBackoff = 50*time.Millisecond, 50*time.Millisecond })
		sendN(t, q1, dest.name, 0, 3)
		for len(dest.all()) < 2 {
			<-dest.arrived
		}
		stop1()
		// Queued with no process sending.
		sendN(t, q1, dest.name, 3, 5)
		if queued, _ := db.FederationQueued(context.Background(), string(dest.name)); !queued {
			t.Fatal("nothing queued after the stop")
		}
		down.Lock()
		isDown = false
		down.Unlock()

		newTestQueue(t, db, nil)
		if got := dest.waitDelivered(t, 5, 10*time.Second); !slices.Equal(got, want(0, 5)) {
			t.Fatalf("after the restart: %v", got)
		}
		waitEmpty(t, db, dest.name)
	})
}

// TestQueueDestinationUp: a destination that sends us a transaction is
// back: its back-off (an hour here) ends and what waits is sent at once.
func TestQueueDestinationUp(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	dest := newFakeDest(t)
	dest.setAnswer(func(n int, _ attempt) int {
		if n == 0 {
			return 500
		}
		return 0
	})
	q, _ := newTestQueue(t, db, func(c *QueueConfig) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })
	sendN(t, q, dest.name, 0, 2)
	<-dest.arrived
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := db.FederationDestinationState(context.Background(), string(dest.name))
		if st.RetryAtTS > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no back-off recorded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Waking without news of the destination respects the back-off.
	sendN(t, q, dest.name, 2, 3)
	time.Sleep(100 * time.Millisecond)
	if n := len(dest.all()); n != 1 {
		t.Fatalf("%d attempts during the back-off", n)
	}
	q.DestinationUp(context.Background(), dest.name)
	if got := dest.waitDelivered(t, 3, 5*time.Second); !slices.Equal(got, want(0, 3)) {
		t.Fatalf("after DestinationUp: %v", got)
	}
}

// TestQueueDropsRefusedTransaction: a transaction the destination keeps
// refusing as malformed (400) is dropped after three refusals, and the
// queue moves on.
func TestQueueDropsRefusedTransaction(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	dest := newFakeDest(t)
	dest.setAnswer(func(_ int, a attempt) int {
		if slices.Contains(a.edus, `{"n":0}`) {
			return 400
		}
		return 0
	})
	q, _ := newTestQueue(t, db, nil)
	sendN(t, q, dest.name, 0, 1)
	for len(dest.all()) < 3 {
		<-dest.arrived
	}
	sendN(t, q, dest.name, 1, 2)
	if got := dest.waitDelivered(t, 1, 5*time.Second); !slices.Equal(got, want(1, 2)) {
		t.Fatalf("delivered %v", got)
	}
	if n := len(dest.all()); n != 4 {
		t.Fatalf("%d attempts, want 3 refusals and 1 success", n)
	}
}

// TestQueueLeaseAcrossProcesses: two processes queueing for one
// destination on one database never send to it at once, and together
// deliver everything once and in order, without waiting for a lease to
// expire (a minute here).
func TestQueueLeaseAcrossProcesses(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		dest := newFakeDest(t)
		var mu sync.Mutex
		inFlight, maxInFlight := 0, 0
		dest.setAnswer(func(int, attempt) int {
			mu.Lock()
			inFlight++
			maxInFlight = max(maxInFlight, inFlight)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inFlight--
			mu.Unlock()
			return 0
		})
		lease := func(c *QueueConfig) { c.LeaseTTL = time.Minute }
		q1, _ := newTestQueue(t, db, lease)
		q2, _ := newTestQueue(t, db, lease)
		const n = 40
		for i := range n {
			q := q1
			if i%2 == 1 {
				q = q2
			}
			sendN(t, q, dest.name, i, i+1)
		}
		got := dest.waitDelivered(t, n, 30*time.Second)
		if !slices.Equal(got, want(0, n)) {
			t.Fatalf("delivered %v", got)
		}
		if maxInFlight != 1 {
			t.Fatalf("%d transactions to one destination at once", maxInFlight)
		}
		waitEmpty(t, db, dest.name)
	})
}

// TestQueuePDUs: a queued PDU goes out as its event's JSON; an event the
// source no longer has is left out.
func TestQueuePDUs(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	dest := newFakeDest(t)
	q, _ := newTestQueue(t, db, func(c *QueueConfig) {
		c.PDUs = func(_ context.Context, ids []string) (map[string]json.RawMessage, error) {
			out := map[string]json.RawMessage{}
			for _, id := range ids {
				if id != "$gone" {
					out[id] = json.RawMessage(`{"event_id":"` + id + `"}`)
				}
			}
			return out, nil
		}
	})
	ctx := context.Background()
	sendPDU := func(q *Queue, id string) error {
		if err := q.StorePDU(ctx, &db.Queries, []spec.ServerName{dest.name}, id); err != nil {
			return err
		}
		q.Wake(dest.name)
		return nil
	}
	if err := sendPDU(q, "$one"); err != nil {
		t.Fatal(err)
	}
	<-dest.arrived
	if err := sendPDU(q, "$gone"); err != nil {
		t.Fatal(err)
	}
	<-dest.arrived
	all := dest.all()
	if len(all) != 2 || !slices.Equal(all[0].pdus, []string{`{"event_id":"$one"}`}) || len(all[1].pdus) != 0 {
		t.Fatalf("attempts %+v", all)
	}

	// Without a PDU source, PDUs cannot be queued.
	q2, _ := newTestQueue(t, db, nil)
	if err := sendPDU(q2, "$x"); err == nil {
		t.Fatal("StorePDU without a source succeeded")
	}
}

// TestSendEDUChecks: what the queue refuses to store.
func TestSendEDUChecks(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	q, _ := newTestQueue(t, db, nil)
	ctx := context.Background()
	for name, c := range map[string]struct {
		dest    spec.ServerName
		typ     string
		content any
	}{
		"to ourselves":    {ours, "m.test", map[string]int{}},
		"bad server name": {"not a server", "m.test", map[string]int{}},
		"no type":         {"other.example", "", map[string]int{}},
		"not an object":   {"other.example", "m.test", []int{1}},
		"too large":       {"other.example", "m.test", map[string]string{"x": strings.Repeat("a", MaxEDUBytes)}},
	} {
		if err := q.SendEDU(ctx, c.dest, c.typ, c.content); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if queued, _ := db.FederationQueuedDestinations(ctx); len(queued) != 0 {
		t.Fatalf("refused EDUs were queued: %+v", queued)
	}
}

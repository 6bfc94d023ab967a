package federation

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
)

// Transaction limits (spec: "Transactions are limited in size; they can
// have at most 50 PDUs and 100 EDUs").
const (
	MaxTransactionPDUs = 50
	MaxTransactionEDUs = 100
)

// MaxEDUBytes bounds the content of one queued EDU. With 100 EDUs a
// transaction stays under 7 MB, below the request limits of Weft (10 MB
// by default) and Synapse (50 MB); Synapse splits its to-device EDUs at
// the same size (MAX_EDU_SIZE).
const MaxEDUBytes = 64 << 10

// Back-off after failures to reach a destination. Synapse starts at 10
// minutes and multiplies by 2 (with jitter, 0.8 to 1.4) up to a week, but
// only after its request has itself been retried for minutes with short
// delays ("long retries"); Weft retries the transaction itself, so it
// starts at 10 seconds and reaches Synapse's 10 minutes after six
// failures. It caps at a day: a day-long wait costs a dead server one
// request a day, and a recovered server that sends us nothing (which
// would end the back-off at once, see DestinationUp) waits at most a day.
const (
	defaultMinBackoff = 10 * time.Second
	defaultMaxBackoff = 24 * time.Hour
)

// defaultMaxSending bounds the transactions in flight at once. Each
// destination has at most one; a slow destination holds one slot and
// delays no other.
const defaultMaxSending = 32

// transactionsPerTurn is how many transactions a destination sends before
// giving its sending slot to the next waiting destination, so that a few
// busy destinations cannot starve the others when every slot is taken.
const transactionsPerTurn = 8

// maxRefusals is how often a destination may refuse one transaction as
// malformed (400, 413) before it is dropped: resending the same bytes
// cannot succeed, and retrying it forever would block the destination's
// queue behind it for good.
const maxRefusals = 3

// QueueConfig configures the outbound queue.
type QueueConfig struct {
	// DB holds the queue; it survives restarts.
	DB *sql.DB
	// Client sends the transactions; Key signs them as Origin.
	Client *Client
	Key    serverkey.Key
	Origin spec.ServerName
	Log    *slog.Logger
	// MaxSending bounds the transactions in flight at once; 0 means 32.
	MaxSending int
	// MinBackoff and MaxBackoff bound the wait after a failure; 0 means
	// 10 seconds and a day.
	MinBackoff, MaxBackoff time.Duration
	// AttemptTimeout bounds one transaction; 0 means a minute.
	AttemptTimeout time.Duration
	// LeaseTTL is how long a process holds a destination without
	// renewing (it renews before each transaction); 0 means twice
	// AttemptTimeout. A process that dies blocks its destinations for at
	// most this long.
	LeaseTTL time.Duration
	// PDUs reads the JSON of events to send as PDUs, leaving out the ones
	// it does not have. Nil until the roomserver federates; SendPDU then
	// fails.
	PDUs func(ctx context.Context, eventIDs []string) (map[string]json.RawMessage, error)
}

// EDU is an EDU for one destination.
type EDU struct {
	Destination spec.ServerName
	Type        string
	// Content is a JSON object of at most MaxEDUBytes.
	Content json.RawMessage
}

// Queue sends EDUs and PDUs to other servers (spec: "Transactions"), one
// queue per destination, persisted in the database: an item is deleted
// only once the destination answered 200 to the transaction carrying it,
// so nothing is lost to a restart or an outage, and a destination gets its
// items in the order they were queued. A transaction that fails is
// retried as it was, under the same id, which the destination
// deduplicates. Failures back off exponentially; a destination that sends
// us a transaction is back, and gets what waits for it at once.
//
// Across processes sharing the database, a lease per destination lets one
// process at a time send to it.
type Queue struct {
	db     *sql.DB
	doer   httpDoer
	key    serverkey.Key
	origin spec.ServerName
	log    *slog.Logger
	cfg    QueueConfig
	// owner names this process in the leases.
	owner string
	// sem holds a token per transaction in flight.
	sem chan struct{}

	// mu guards the fields below. It is never held during I/O, and no
	// other lock is taken while holding it.
	mu      sync.Mutex
	ctx     context.Context // nil until Start
	cancel  context.CancelFunc
	stopped bool
	// dests holds the destinations being sent to or waiting to retry.
	dests map[spec.ServerName]*destQueue
	wg    sync.WaitGroup

	// Test hooks: jitter is the back-off factor's random part (0.8 to 1.4
	// as Synapse); onBackoff sees each back-off chosen.
	jitter    func() float64
	onBackoff func(dest spec.ServerName, wait time.Duration)
}

// destQueue is a destination's state in this process.
type destQueue struct {
	name spec.ServerName
	// running is set while a goroutine drains the destination; again
	// asks it to look once more before it stops, for items queued while
	// it ran.
	running, again bool
	// timer wakes the destination at retryAt (back-off, or another
	// process's lease ending).
	timer   *time.Timer
	retryAt time.Time
	// refusals counts the refusals of the transaction in flight; only
	// the running goroutine touches it.
	refusals int
}

// httpDoer sends a request built and signed here.
type httpDoer interface {
	DoHTTPRequest(ctx context.Context, req *http.Request) (*http.Response, error)
}

// NewQueue makes the queue; nothing is sent until Start.
func NewQueue(cfg QueueConfig) (*Queue, error) {
	if cfg.DB == nil || cfg.Client == nil || cfg.Origin == "" {
		return nil, errors.New("federation queue: DB, Client and Origin are required")
	}
	doer, ok := cfg.Client.FederationClient.(httpDoer)
	if !ok {
		return nil, errors.New("federation queue: the client cannot send raw requests")
	}
	if cfg.MaxSending <= 0 {
		cfg.MaxSending = defaultMaxSending
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = defaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = time.Minute
	}
	if cfg.LeaseTTL <= cfg.AttemptTimeout {
		cfg.LeaseTTL = 2 * cfg.AttemptTimeout
	}
	log := logOr(cfg.Log)
	return &Queue{
		db: cfg.DB, doer: doer, key: cfg.Key, origin: cfg.Origin, log: log, cfg: cfg,
		owner:  randomID(8),
		sem:    make(chan struct{}, cfg.MaxSending),
		dests:  make(map[spec.ServerName]*destQueue),
		jitter: func() float64 { return 0.8 + 0.6*rand.Float64() },
	}, nil
}

// Start begins sending: what the database holds for each destination
// (queued before a restart) is sent at once, or when the destination's
// back-off ends. stop ends the sending and waits for the transactions in
// flight to be abandoned; what they carried stays queued.
func (q *Queue) Start(ctx context.Context) (stop func(), err error) {
	dests, err := q.db.FederationQueuedDestinations(ctx)
	if err != nil {
		return nil, fmt.Errorf("federation queue: %w", err)
	}
	q.mu.Lock()
	q.ctx, q.cancel = context.WithCancel(ctx)
	now := time.Now()
	for _, d := range dests {
		name := spec.ServerName(d.Destination)
		if retryAt := time.UnixMilli(d.RetryAtTS); d.RetryAtTS > 0 && retryAt.After(now) {
			q.scheduleLocked(q.destLocked(name), retryAt)
		} else {
			q.wakeLocked(name, false)
		}
	}
	q.mu.Unlock()
	if len(dests) > 0 {
		q.log.Info("federation queue: catching up", "destinations", len(dests))
	}
	return q.stop, nil
}

func (q *Queue) stop() {
	q.mu.Lock()
	if q.stopped || q.ctx == nil {
		q.stopped = true
		q.mu.Unlock()
		return
	}
	q.stopped = true
	q.cancel()
	for _, d := range q.dests {
		if d.timer != nil {
			d.timer.Stop()
			d.timer = nil
		}
	}
	q.mu.Unlock()
	q.wg.Wait()
}

// SendEDU queues an EDU for destination and wakes its sender. content is
// a JSON object, or a value that marshals to one.
func (q *Queue) SendEDU(ctx context.Context, destination spec.ServerName, eduType string, content any) error {
	raw, ok := content.(json.RawMessage)
	if !ok {
		var err error
		if raw, err = json.Marshal(content); err != nil {
			return fmt.Errorf("EDU %s content: %w", eduType, err)
		}
	}
	return q.SendEDUs(ctx, []EDU{{Destination: destination, Type: eduType, Content: raw}})
}

// SendEDUs queues EDUs, in order, in one database transaction, and wakes
// their destinations' senders.
func (q *Queue) SendEDUs(ctx context.Context, edus []EDU) error {
	if err := q.db.WithTx(ctx, func(tx *sql.Queries) error { return q.StoreEDUs(ctx, tx, edus) }); err != nil {
		return err
	}
	q.Wake(destinationsOf(edus)...)
	return nil
}

// StoreEDUs queues EDUs in the caller's database transaction tx, so that
// they are queued if and only if the caller's writes commit. After the
// commit, the caller wakes their destinations with Wake.
func (q *Queue) StoreEDUs(ctx context.Context, tx *sql.Queries, edus []EDU) error {
	rows := make([]sql.FederationEDU, len(edus))
	for i, e := range edus {
		if err := q.checkDestination(e.Destination); err != nil {
			return err
		}
		if e.Type == "" {
			return errors.New("federation queue: EDU without a type")
		}
		if c := bytes.TrimSpace(e.Content); len(c) == 0 || c[0] != '{' || !json.Valid(c) {
			return fmt.Errorf("federation queue: EDU %s content is not a JSON object", e.Type)
		}
		if len(e.Content) > MaxEDUBytes {
			return fmt.Errorf("federation queue: EDU %s content is %d bytes, over %d", e.Type, len(e.Content), MaxEDUBytes)
		}
		rows[i] = sql.FederationEDU{Destination: string(e.Destination), Type: e.Type, Content: e.Content}
	}
	return tx.QueueFederationEDUs(ctx, rows)
}

// StorePDU queues an event, by id, for the destinations in the caller's
// database transaction tx (see StoreEDUs); the caller wakes them with
// Wake after the commit.
func (q *Queue) StorePDU(ctx context.Context, tx *sql.Queries, destinations []spec.ServerName, eventID string) error {
	if q.cfg.PDUs == nil {
		return errors.New("federation queue: no PDU source configured")
	}
	names := make([]string, 0, len(destinations))
	for _, d := range destinations {
		if err := q.checkDestination(d); err != nil {
			return err
		}
		names = append(names, string(d))
	}
	return tx.QueueFederationPDU(ctx, names, eventID)
}

func (q *Queue) checkDestination(d spec.ServerName) error {
	if d == q.origin {
		return fmt.Errorf("federation queue: %s is this server", d)
	}
	if _, _, ok := spec.ParseAndValidateServerName(d); !ok {
		return fmt.Errorf("federation queue: %q is not a server name", d)
	}
	return nil
}

// Wake tells the senders of the destinations that items wait for them.
// A destination in back-off waits for its retry time.
func (q *Queue) Wake(destinations ...spec.ServerName) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx == nil || q.stopped {
		return // Start finds the items in the database
	}
	for _, d := range destinations {
		q.wakeLocked(d, false)
	}
}

// DestinationUp records that destination is reachable (it sent us a
// transaction): its back-off ends and what waits for it is sent at once,
// as Synapse does.
func (q *Queue) DestinationUp(ctx context.Context, destination spec.ServerName) {
	cleared, err := q.db.ClearFederationBackoff(ctx, string(destination))
	if err != nil {
		q.log.WarnContext(ctx, "federation queue: clear back-off", "destination", destination, "err", err)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx == nil || q.stopped {
		return
	}
	d := q.dests[destination]
	if cleared || (d != nil && d.timer != nil) {
		q.wakeLocked(destination, true)
	}
}

func (q *Queue) destLocked(name spec.ServerName) *destQueue {
	d := q.dests[name]
	if d == nil {
		d = &destQueue{name: name}
		q.dests[name] = d
	}
	return d
}

// wakeLocked starts the destination's sender unless it runs (then it
// looks again before stopping) or waits to retry (unless force).
func (q *Queue) wakeLocked(name spec.ServerName, force bool) {
	d := q.destLocked(name)
	if d.running {
		d.again = true
		return
	}
	if d.timer != nil {
		if !force && time.Now().Before(d.retryAt) {
			return
		}
		d.timer.Stop()
		d.timer = nil
	}
	d.running = true
	q.wg.Add(1)
	go q.run(d)
}

// scheduleLocked wakes d at t.
func (q *Queue) scheduleLocked(d *destQueue, t time.Time) {
	if d.timer != nil {
		d.timer.Stop()
	}
	d.retryAt = t
	var timer *time.Timer
	timer = time.AfterFunc(time.Until(t), func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if d.timer != timer || q.stopped {
			return
		}
		d.timer = nil
		q.wakeLocked(d.name, true)
	})
	d.timer = timer
}

// run drains a destination, a turn at a time with a sending slot, until
// it is empty or must wait.
func (q *Queue) run(d *destQueue) {
	defer q.wg.Done()
	for {
		var next time.Time
		more := false
		select {
		case q.sem <- struct{}{}:
			next, more = q.drain(q.ctx, d)
			<-q.sem
		case <-q.ctx.Done():
		}
		q.mu.Lock()
		if q.ctx.Err() != nil {
			d.running = false
			delete(q.dests, d.name)
			q.mu.Unlock()
			return
		}
		if more || d.again {
			d.again = false
			q.mu.Unlock()
			continue
		}
		d.running = false
		if next.IsZero() {
			delete(q.dests, d.name)
		} else {
			q.scheduleLocked(d, next)
		}
		q.mu.Unlock()
		return
	}
}

// drain sends the destination's transactions for one turn. It returns
// when to try again (zero: when woken) and whether items may be left
// after a full turn.
func (q *Queue) drain(ctx context.Context, d *destQueue) (next time.Time, more bool) {
	name := string(d.name)
	st, held, err := q.lease(ctx, name)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Error("federation queue: lease", "destination", name, "err", err)
			return time.Now().Add(q.cfg.MinBackoff), false
		}
		return time.Time{}, false
	}
	if !held {
		// Another process sends. If it stops with items left, it looks
		// again after releasing; if it died, its lease expires.
		return time.UnixMilli(st.LeaseExpiresTS).Add(time.Second), false
	}
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := q.db.ReleaseFederationLease(rctx, name, q.owner); err != nil {
			q.log.Warn("federation queue: release lease", "destination", name, "err", err)
		}
	}
	defer release()
	if now := time.Now(); st.RetryAtTS > now.UnixMilli() {
		return time.UnixMilli(st.RetryAtTS), false
	}
	for i := range transactionsPerTurn {
		if i > 0 {
			if st, held, err = q.lease(ctx, name); err != nil {
				return time.Now().Add(q.cfg.MinBackoff), false
			} else if !held {
				return time.UnixMilli(st.LeaseExpiresTS).Add(time.Second), false
			}
		}
		txnID, items, err := q.db.FederationBatch(ctx, name, newTxnID(), MaxTransactionPDUs, MaxTransactionEDUs)
		if err != nil {
			if ctx.Err() == nil {
				q.log.Error("federation queue: read queue", "destination", name, "err", err)
				return time.Now().Add(q.cfg.MinBackoff), false
			}
			return time.Time{}, false
		}
		if len(items) == 0 {
			// Items queued by another process while we held the lease
			// found it taken and rely on us: look once more after
			// releasing it.
			release()
			queued, err := q.db.FederationQueued(ctx, name)
			return time.Time{}, err == nil && queued
		}
		status, err := q.send(ctx, d.name, txnID, items)
		if ctx.Err() != nil {
			return time.Time{}, false // stopping: the transaction stays queued
		}
		switch {
		case err == nil:
			if _, err := q.db.DeleteFederationBatch(ctx, name, txnID); err != nil {
				q.log.Error("federation queue: delete sent transaction", "destination", name, "txn_id", txnID, "err", err)
				return time.Now().Add(q.cfg.MinBackoff), false
			}
			d.refusals = 0
			if st.FailureTS != 0 || st.RetryIntervalMS != 0 {
				if _, err := q.db.ClearFederationBackoff(ctx, name); err != nil {
					q.log.Warn("federation queue: clear back-off", "destination", name, "err", err)
				}
				q.log.Info("federation queue: destination reachable again", "destination", name)
				st.FailureTS, st.RetryIntervalMS, st.RetryAtTS = 0, 0, 0
			}
			continue
		case status == http.StatusBadRequest || status == http.StatusRequestEntityTooLarge:
			d.refusals++
			if d.refusals >= maxRefusals {
				n, _ := q.db.DeleteFederationBatch(ctx, name, txnID)
				q.log.Error("federation queue: destination keeps refusing a transaction; dropped it",
					"destination", name, "txn_id", txnID, "items", n, "status", status, "err", err)
				d.refusals = 0
				continue
			}
		}
		return q.backOff(ctx, d.name, &st, err), false
	}
	return time.Time{}, true
}

// lease takes or renews this process's lease on the destination.
func (q *Queue) lease(ctx context.Context, name string) (sql.FederationDestination, bool, error) {
	now := time.Now()
	return q.db.AcquireFederationLease(ctx, name, q.owner, now.UnixMilli(), now.Add(q.cfg.LeaseTTL).UnixMilli())
}

// backOff records a failed attempt and returns when to retry.
func (q *Queue) backOff(ctx context.Context, dest spec.ServerName, st *sql.FederationDestination, cause error) time.Time {
	now := time.Now()
	wait := nextBackoff(time.Duration(st.RetryIntervalMS)*time.Millisecond, q.cfg.MinBackoff, q.cfg.MaxBackoff, q.jitter())
	if st.FailureTS == 0 {
		st.FailureTS = now.UnixMilli()
	}
	st.RetryIntervalMS = wait.Milliseconds()
	retryAt := now.Add(wait)
	st.RetryAtTS = retryAt.UnixMilli()
	if err := q.db.SetFederationBackoff(ctx, string(dest), st.FailureTS, st.RetryIntervalMS, st.RetryAtTS); err != nil {
		q.log.Warn("federation queue: record back-off", "destination", dest, "err", err)
	}
	q.log.Info("federation queue: transaction failed; backing off", "destination", dest, "wait", wait, "err", cause)
	if q.onBackoff != nil {
		q.onBackoff(dest, wait)
	}
	return retryAt
}

// nextBackoff is the wait after a failure that followed a wait of prev
// (0 for the first failure of a run).
func nextBackoff(prev, minWait, maxWait time.Duration, jitter float64) time.Duration {
	if prev <= 0 {
		return minWait
	}
	next := time.Duration(float64(prev) * 2 * jitter)
	return min(max(next, minWait), maxWait)
}

// transaction is the body of PUT /send/{txnId}. PDUs is never null:
// the spec requires the array, and Synapse fails on null.
type transaction struct {
	Origin         spec.ServerName   `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []transactionEDU  `json:"edus,omitempty"`
}

type transactionEDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// maxSendResponseBytes bounds the answer read: a result per PDU.
const maxSendResponseBytes = 1 << 20

// send sends one transaction and returns the HTTP status (0 when none
// came) and an error unless it was accepted.
func (q *Queue) send(ctx context.Context, dest spec.ServerName, txnID string, items []sql.FederationItem) (int, error) {
	body := transaction{Origin: q.origin, OriginServerTS: time.Now().UnixMilli(), PDUs: []json.RawMessage{}}
	var eventIDs []string
	for _, it := range items {
		if it.EventID != "" {
			eventIDs = append(eventIDs, it.EventID)
		} else {
			body.EDUs = append(body.EDUs, transactionEDU{Type: it.EDUType, Content: it.Content})
		}
	}
	if len(eventIDs) > 0 {
		pdus, err := q.loadPDUs(ctx, eventIDs)
		if err != nil {
			return 0, err
		}
		body.PDUs = pdus
	}
	fr := fclient.NewFederationRequest(http.MethodPut, q.origin, dest, "/_matrix/federation/v1/send/"+txnID)
	if err := fr.SetContent(body); err != nil {
		return 0, fmt.Errorf("encode transaction: %w", err)
	}
	if err := fr.Sign(q.origin, q.key.ID, q.key.Private); err != nil {
		return 0, fmt.Errorf("sign transaction: %w", err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		return 0, err
	}
	actx, cancel := context.WithTimeout(ctx, q.cfg.AttemptTimeout)
	defer cancel()
	resp, err := q.doer.DoHTTPRequest(actx, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxSendResponseBytes))
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s answered %d: %s", dest, resp.StatusCode, bytes.TrimSpace(raw[:min(len(raw), 300)]))
	}
	if err != nil {
		// The destination said yes; a body cut short changes nothing.
		q.log.Debug("federation queue: reading transaction answer", "destination", dest, "err", err)
	}
	var result fclient.RespSend
	if json.Unmarshal(raw, &result) == nil {
		for id, r := range result.PDUs {
			if r.Error != "" {
				q.log.Info("federation queue: destination refused a PDU", "destination", dest, "event_id", id, "error", r.Error)
			}
		}
	}
	return resp.StatusCode, nil
}

// loadPDUs reads the events' JSON, in order, leaving out the ones gone.
func (q *Queue) loadPDUs(ctx context.Context, eventIDs []string) ([]json.RawMessage, error) {
	if q.cfg.PDUs == nil {
		q.log.Warn("federation queue: PDUs queued but no PDU source; sending without them", "events", len(eventIDs))
		return []json.RawMessage{}, nil
	}
	found, err := q.cfg.PDUs(ctx, eventIDs)
	if err != nil {
		return nil, fmt.Errorf("read PDUs: %w", err)
	}
	out := make([]json.RawMessage, 0, len(eventIDs))
	for _, id := range eventIDs {
		if ev, ok := found[id]; ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

func destinationsOf(edus []EDU) []spec.ServerName {
	seen := make(map[spec.ServerName]bool, len(edus))
	var out []spec.ServerName
	for _, e := range edus {
		if !seen[e.Destination] {
			seen[e.Destination] = true
			out = append(out, e.Destination)
		}
	}
	return out
}

// newTxnID is a transaction id: unique among ours, and safe in a path
// segment (gomatrixserverlib's TransactionID: [0-9A-Za-z\-_]).
func newTxnID() string {
	return strconv.FormatInt(time.Now().UnixMilli(), 36) + "-" + randomID(6)
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = cryptorand.Read(b)
	return hex.EncodeToString(b)
}

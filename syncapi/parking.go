package syncapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// Parked long-polls.
//
// A long-poll that waits inside its handler holds what net/http keeps for
// a request in progress: the connection's goroutine with the stack it grew
// serving the request, a second goroutine reading ahead to notice the
// client leave, the connection's read and write buffers, the request. That
// came to about 40 KiB per idle long-poll. A parked one hijacks its
// connection instead and returns: what waits is the connection, the
// request's parameters and a timer, and the notifier calls it back
// (Notifier.ListenFunc). Woken, it builds its response on a goroutine of
// its own, writes it to the connection, and hands the connection back to
// the client listener (Parking.Listener), whose server reads the client's
// next request from it as from a new connection, so keep-alive is kept.
//
// The price: nobody reads from a parked connection, so a client that goes
// away is noticed at the answer (at the latest at the timeout), and the
// access log records the request when it parks.

// parkingDrain bounds how long closing the listener waits for the parked
// syncs to answer.
const parkingDrain = 5 * time.Second

// parkedBuildTimeout bounds one build of a parked sync's response, which
// no client request bounds any more.
const parkedBuildTimeout = time.Minute

// Parking holds the parked long-polls of one client listener.
type Parking struct {
	conns chan net.Conn
	done  chan struct{}

	mu      sync.Mutex
	closing bool
	parked  map[*parkedSync]struct{}
	active  sync.WaitGroup

	// last is the last settled response served to each device by a
	// parked sync (see parkQuiet).
	last *bounded.Map[deviceKey, servedSync]
}

// lastServedMax bounds Parking.last.
const lastServedMax = 100_000

type deviceKey struct{ user, device string }

// servedSync is a response's next_batch and the mark of its read.
type servedSync struct {
	next SyncToken
	mark Mark
}

// served records resp as the last response to dev, if it is settled.
func (p *Parking) served(dev *userapi.Device, resp *syncResponse, mark Mark) {
	k := deviceKey{dev.UserID, dev.DeviceID}
	if !resp.settled || mark.u == nil {
		p.last.Delete(k)
		return
	}
	p.last.Put(k, servedSync{next: resp.next, mark: mark})
}

// lastServed returns the last settled response to dev.
func (p *Parking) lastServed(dev *userapi.Device) (servedSync, bool) {
	return p.last.Get(deviceKey{dev.UserID, dev.DeviceID})
}

// NewParking makes a Parking; Listener connects it to the client listener
// and WithParking to the sync API.
func NewParking() *Parking {
	return &Parking{conns: make(chan net.Conn, 64), done: make(chan struct{}), parked: make(map[*parkedSync]struct{}),
		last: bounded.New[deviceKey, servedSync](lastServedMax)}
}

// WithParking lets long-polls park (see Parking): only for the sync API
// whose routes the listener made by p.Listener serves.
func WithParking(p *Parking) Option {
	return func(a *API) { a.parking = p }
}

// Listener wraps the client listener: Accept hands out its connections and
// those of answered parked syncs. Closing it answers every parked sync at
// once, waiting a little for them. Call it once.
func (p *Parking) Listener(ln net.Listener) net.Listener {
	l := &parkingListener{Listener: ln, p: p, accepted: make(chan accepted)}
	go l.acceptLoop()
	return l
}

type parkingListener struct {
	net.Listener
	p         *Parking
	accepted  chan accepted
	closeOnce sync.Once
}

type accepted struct {
	c   net.Conn
	err error
}

func (l *parkingListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- accepted{c, err}:
		case <-l.p.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *parkingListener) Accept() (net.Conn, error) {
	select {
	case a := <-l.accepted:
		return a.c, a.err
	case c := <-l.p.conns:
		return c, nil
	case <-l.p.done:
		return nil, net.ErrClosed
	}
}

func (l *parkingListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(l.p.close)
	return err
}

// close answers the parked syncs and stops taking connections back.
func (p *Parking) close() {
	p.mu.Lock()
	p.closing = true
	parked := make([]*parkedSync, 0, len(p.parked))
	for ps := range p.parked {
		parked = append(parked, ps)
	}
	p.mu.Unlock()
	for _, ps := range parked {
		go ps.expire()
	}
	drained := make(chan struct{})
	go func() { p.active.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(parkingDrain):
	}
	close(p.done)
	// Connections handed back as the listener closed wait for an Accept
	// that will not come.
	go func() {
		for c := range p.conns {
			c.Close()
		}
	}()
}

// giveBack hands an answered connection to the listener.
func (p *Parking) giveBack(c net.Conn) {
	select {
	case p.conns <- c:
	case <-p.done:
		c.Close()
	}
}

// stopping reports whether the listener closed.
func (p *Parking) stopping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

func (p *Parking) add(ps *parkedSync) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.parked[ps] = struct{}{}
	p.active.Add(1)
	return true
}

// remove ends what add began; a sync that add refused (the listener
// closing) was never counted.
func (p *Parking) remove(ps *parkedSync) {
	p.mu.Lock()
	_, added := p.parked[ps]
	delete(p.parked, ps)
	p.mu.Unlock()
	if added {
		p.active.Done()
	}
}

// The states of a parked sync.
const (
	parkedWaiting = iota
	parkedBuilding
	parkedDone
)

// parkedSync is a long-poll waiting without a goroutine.
type parkedSync struct {
	a   *API
	n   *Notifier
	req *syncRequest
	// ctx carries the request's values (the logger), not its end.
	ctx      context.Context
	method   string
	url      *url.URL
	keepOpen bool
	// header holds what the middleware set for the response (CORS).
	header   http.Header
	conn     net.Conn
	deadline time.Time

	mu      sync.Mutex
	state   int
	again   bool // woken while building
	expired bool // timed out, or the server stops
	resp    *syncResponse
	release func()
	// mark is where the user's wake-ups stood at the registration that
	// preceded resp's read.
	mark     Mark
	timer    *time.Timer
	finished bool
}

// park hijacks the connection of a long-poll that found nothing yet and
// leaves it waiting for the notifier. wake and release are its
// registration with the notifier, made before resp was built. It reports
// false when the sync must wait in its handler instead (no parking for
// this listener, an HTTP/2 request, a change that came meanwhile).
func (a *API) park(w http.ResponseWriter, r *http.Request, req *syncRequest, n *Notifier, resp *syncResponse,
	wake <-chan struct{}, release func(), deadline time.Time) bool {
	if a.parking == nil || isClosed(wake) || isClosed(n.Done()) {
		return false
	}
	ps := a.hijack(w, r, req, n, resp, deadline)
	if ps == nil {
		return false
	}
	if !a.parking.add(ps) {
		release()
		go ps.finish(resp, nil)
		return true
	}
	ps.mu.Lock()
	var err error
	ps.release, ps.mark, err = n.ListenFunc(ps.ctx, req.dev.UserID, ps.woken)
	release()
	if err != nil {
		ps.mu.Unlock()
		go ps.finish(nil, err)
		return true
	}
	ps.timer = time.AfterFunc(time.Until(deadline), ps.expire)
	// A change between the first registration and the second woke the
	// first only; resp predates it, so the second's mark is not resp's.
	changed := isClosed(wake)
	if changed {
		ps.mark = Mark{}
	} else {
		ps.state = parkedWaiting
	}
	ps.mu.Unlock()
	if changed {
		go ps.run()
	}
	return true
}

// parkQuiet parks a long-poll without reading anything when its token is
// the next_batch of its device's last response and no wake-up of the user
// came since that response's read: nothing they would see has committed
// since. Under load most long-polls come back this way, so this spares
// each of them a read of every stream. It reports false when the sync
// must be built as usual.
func (a *API) parkQuiet(w http.ResponseWriter, r *http.Request, req *syncRequest, n *Notifier, deadline time.Time) bool {
	if a.parking == nil {
		return false
	}
	last, ok := a.parking.lastServed(req.dev)
	if !ok || last.next != *req.since || !n.Quiet(req.dev.UserID, last.mark) {
		return false
	}
	resp := &syncResponse{NextBatch: req.since.String(), settled: true, next: *req.since}
	ps := a.hijack(w, r, req, n, resp, deadline)
	if ps == nil {
		return false
	}
	if !a.parking.add(ps) {
		go ps.finish(resp, nil)
		return true
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.timer = time.AfterFunc(time.Until(deadline), ps.expire)
	if release, ok := n.ListenFuncIfQuiet(req.dev.UserID, last.mark, ps.woken); ok {
		ps.release, ps.mark, ps.state = release, last.mark, parkedWaiting
		return true
	}
	// Woken since the check: build as a woken sync does.
	ps.release = func() {}
	go ps.run()
	return true
}

// hijack takes over a long-poll's connection for a parked sync whose
// response so far is resp, in the building state; nil when the connection
// cannot be taken (HTTP/2).
func (a *API) hijack(w http.ResponseWriter, r *http.Request, req *syncRequest, n *Notifier, resp *syncResponse, deadline time.Time) *parkedSync {
	header := w.Header().Clone()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil
	}
	if k := brw.Reader.Buffered(); k > 0 {
		// The client sent its next request already: serve it after.
		ahead, _ := brw.Reader.Peek(k)
		conn = &prefixedConn{Conn: conn, prefix: bytes.NewReader(bytes.Clone(ahead))}
	}
	return &parkedSync{a: a, n: n, req: req, ctx: context.WithoutCancel(r.Context()), method: r.Method, url: r.URL,
		keepOpen: !r.Close, header: header, conn: conn, deadline: deadline, resp: resp, state: parkedBuilding}
}

// woken is the notifier's call: build again.
func (ps *parkedSync) woken() {
	ps.mu.Lock()
	switch ps.state {
	case parkedWaiting:
		ps.state = parkedBuilding
		ps.mu.Unlock()
		ps.run()
		return
	case parkedBuilding:
		ps.again = true
	}
	ps.mu.Unlock()
}

// expire ends the wait: the timeout, or the server stopping.
func (ps *parkedSync) expire() {
	ps.mu.Lock()
	ps.expired = true
	if ps.state != parkedWaiting {
		ps.mu.Unlock()
		return // the build in progress sees expired
	}
	ps.state = parkedBuilding
	resp := ps.resp
	ps.mu.Unlock()
	ps.finish(resp.aged(), nil)
}

// run builds the response until it has something or the wait is over,
// as the loop of API.sync does, registering with the notifier before each
// read.
func (ps *parkedSync) run() {
	for {
		ps.mu.Lock()
		ps.again = false
		over := ps.expired || isClosed(ps.n.Done())
		resp := ps.resp
		ps.mu.Unlock()
		if over {
			ps.finish(resp.aged(), nil)
			return
		}
		release, mark, err := ps.n.ListenFunc(ps.ctx, ps.req.dev.UserID, ps.woken)
		ps.mu.Lock()
		ps.release()
		ps.release = func() {}
		if err == nil {
			ps.release, ps.mark = release, mark
		}
		ps.mu.Unlock()
		if err != nil {
			ps.finish(nil, err)
			return
		}
		resp, err = ps.build()
		if err != nil || !resp.empty() {
			ps.finish(resp, err)
			return
		}
		ps.mu.Lock()
		ps.resp = resp
		if !ps.again && !ps.expired {
			ps.state = parkedWaiting
			ps.mu.Unlock()
			return
		}
		ps.mu.Unlock()
	}
}

// build is buildSync for a parked sync. No handler is below it any more:
// a panic is its error here, as the router's recovery would make it.
func (ps *parkedSync) build() (resp *syncResponse, err error) {
	ctx, cancel := context.WithTimeout(ps.ctx, parkedBuildTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic building a parked sync: %v\n%s", p, debug.Stack())
		}
	}()
	return ps.a.buildSync(ctx, ps.req)
}

// finish answers the sync with resp, or with err, on its connection, then
// gives the connection back to the listener (or closes it).
func (ps *parkedSync) finish(resp *syncResponse, err error) {
	ps.mu.Lock()
	if ps.finished {
		ps.mu.Unlock()
		return
	}
	ps.finished = true
	ps.state = parkedDone
	if ps.timer != nil {
		ps.timer.Stop()
	}
	if ps.release != nil {
		ps.release()
	}
	mark := ps.mark
	ps.mu.Unlock()
	if err == nil {
		ps.a.parking.served(ps.req.dev, resp, mark)
	}
	defer ps.a.parking.remove(ps)
	// A stopping server serves no next request: say so, and close.
	keepOpen := ps.keepOpen && !ps.a.parking.stopping()

	ctx, cancel := context.WithTimeout(ps.ctx, parkedBuildTimeout)
	defer cancel()
	rec := &recorder{header: ps.header}
	if err == nil {
		err = ps.a.respond(ctx, rec, resp, ps.req.dev)
	}
	if err != nil {
		r := (&http.Request{Method: ps.method, URL: ps.url, Header: http.Header{}}).WithContext(ctx)
		rec = &recorder{header: ps.header}
		mxhttp.WriteError(rec, r, err)
	}
	var out bytes.Buffer
	// Room for the header too: the body is copied in once.
	out.Grow(rec.body.Len() + 1024)
	hr := &http.Response{StatusCode: rec.status, ProtoMajor: 1, ProtoMinor: 1, Header: rec.header,
		ContentLength: int64(rec.body.Len()), Body: io.NopCloser(&rec.body), Close: !keepOpen}
	if rec.status == 0 {
		hr.StatusCode = http.StatusOK
	}
	hr.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	_ = hr.Write(&out)
	_ = ps.conn.SetWriteDeadline(time.Now().Add(parkedBuildTimeout))
	if _, err := ps.conn.Write(out.Bytes()); err != nil || !keepOpen {
		ps.conn.Close()
		return
	}
	_ = ps.conn.SetWriteDeadline(time.Time{})
	ps.a.parking.giveBack(ps.conn)
}

// recorder is the http.ResponseWriter of a parked sync's answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// prefixedConn is a connection whose first bytes were read already.
type prefixedConn struct {
	net.Conn
	prefix *bytes.Reader
}

func (c *prefixedConn) Read(b []byte) (int, error) {
	if c.prefix.Len() > 0 {
		return c.prefix.Read(b)
	}
	return c.Conn.Read(b)
}

var (
	_ http.ResponseWriter = (*recorder)(nil)
	_ net.Listener        = (*parkingListener)(nil)
)

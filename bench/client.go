package bench

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// requestTimeout bounds every request but the long-polls, which get their
// own timeout plus this much.
const requestTimeout = 60 * time.Second

// client speaks the few client-server endpoints the scenarios need, over
// one transport tuned for many concurrent requests to one host.
type client struct {
	base string
	tr   *http.Transport
	hc   *http.Client
	// rateLimited counts 429s waited out during setup.
	rateLimited atomic.Int64
}

func newClient(base string) *client {
	tr := &http.Transport{
		DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		// Every worker and every long-poll keeps its connection between
		// requests: the default of 2 idle connections per host would make
		// most requests dial.
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: MaxConnections,
		IdleConnTimeout:     90 * time.Second,
		// Compression costs both sides CPU that loopback does not need.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	return &client{base: base, tr: tr, hc: &http.Client{Transport: tr}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// apiError is a response other than 2xx.
type apiError struct {
	Method, Path string
	Status       int
	Errcode      string `json:"errcode"`
	Message      string `json:"error"`
	RetryAfterMS int64  `json:"retry_after_ms"`
	// Body is the raw body, for the UIA 401 of /register.
	Body []byte `json:"-"`
}

func (e *apiError) Error() string {
	if e.Errcode == "" {
		return fmt.Sprintf("%s %s: HTTP %d", e.Method, e.Path, e.Status)
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, e.Errcode, e.Message)
}

func isStatus(err error, status int) bool {
	var e *apiError
	return errors.As(err, &e) && e.Status == status
}

// errRateLimitedAdvice explains a 429 in the measured phase, where waiting
// it out would measure the rate limiter instead of the server.
const errRateLimitedAdvice = "the server rate-limits the benchmark: turn rate limits off " +
	"(Weft: WEFT_RATE_LIMITS_ENABLED=false; Synapse: raise rc_message and rc_registration)"

// measured turns a rate-limit error of the measured phase into a fatal one.
func measured(err error) error {
	if isStatus(err, http.StatusTooManyRequests) {
		return fmt.Errorf("%s: %w", errRateLimitedAdvice, err)
	}
	return err
}

// request is one call: path is below base and may carry a query; body and
// out are JSON (nil for none).
type request struct {
	method, path, token string
	body, out           any
	timeout             time.Duration
	// trace, when set, is attached to the request (the long-polls use it
	// to learn when they are on the wire).
	trace *httptrace.ClientTrace
	// size, when set, receives the length of the response body.
	size *int
}

// do sends one request. The returned time is when the whole response body
// had arrived, before it was decoded.
func (c *client) do(ctx context.Context, q request) (time.Time, error) {
	var body io.Reader
	if q.body != nil {
		b, err := json.Marshal(q.body)
		if err != nil {
			return time.Time{}, err
		}
		body = bytes.NewReader(b)
	}
	if q.timeout == 0 {
		q.timeout = requestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	if q.trace != nil {
		ctx = httptrace.WithClientTrace(ctx, q.trace)
	}
	req, err := http.NewRequestWithContext(ctx, q.method, c.base+q.path, body)
	if err != nil {
		return time.Time{}, err
	}
	if q.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if q.token != "" {
		req.Header.Set("Authorization", "Bearer "+q.token)
	}
	path, _, _ := strings.Cut(q.path, "?")
	res, err := c.hc.Do(req)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s %s: %w", q.method, path, err)
	}
	data, err := io.ReadAll(res.Body)
	res.Body.Close()
	at := time.Now()
	if err != nil {
		return at, fmt.Errorf("%s %s: %w", q.method, path, err)
	}
	if q.size != nil {
		*q.size = len(data)
	}
	if res.StatusCode/100 != 2 {
		e := &apiError{Method: q.method, Path: path, Status: res.StatusCode, Body: data}
		json.Unmarshal(data, e) // a body that is not a Matrix error leaves the status
		return at, e
	}
	if q.out != nil {
		if err := json.Unmarshal(data, q.out); err != nil {
			return at, fmt.Errorf("%s %s: response: %w", q.method, path, err)
		}
	}
	return at, nil
}

// setupRetries is how long setup waits out rate limits per request.
const setupRetries = 30 * time.Second

// setup runs f, waiting out 429s as the server asks, up to setupRetries:
// setup is not measured, so a slow start is better than none.
func (c *client) setup(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(setupRetries)
	for {
		err := f()
		var e *apiError
		if !errors.As(err, &e) || e.Status != http.StatusTooManyRequests {
			return err
		}
		wait := time.Duration(max(e.RetryAfterMS, 100)) * time.Millisecond
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%s (or use -shared-secret to create users): %w", errRateLimitedAdvice, err)
		}
		c.rateLimited.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// user is an account with one device.
type user struct {
	ID, Token string
}

const clientPrefix = "/_matrix/client/v3"

// register creates localpart with /register and the dummy stage. The
// dummy stage is tried at once; a server that wants the session of its
// 401 first gets a second request with it.
func (c *client) register(ctx context.Context, localpart, password string) (*user, error) {
	type auth struct {
		Type    string `json:"type"`
		Session string `json:"session,omitempty"`
	}
	body := map[string]any{"username": localpart, "password": password,
		"initial_device_display_name": "weft bench", "auth": auth{Type: "m.login.dummy"}}
	var out struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	q := request{method: http.MethodPost, path: clientPrefix + "/register", body: body, out: &out}
	_, err := c.do(ctx, q)
	var e *apiError
	if errors.As(err, &e) && e.Status == http.StatusUnauthorized {
		var uia struct {
			Session string `json:"session"`
			Flows   []struct {
				Stages []string `json:"stages"`
			} `json:"flows"`
		}
		json.Unmarshal(e.Body, &uia)
		if !hasDummyFlow(uia.Flows) {
			return nil, fmt.Errorf("registration needs more than m.login.dummy (%s); use -shared-secret", e.Body)
		}
		body["auth"] = auth{Type: "m.login.dummy", Session: uia.Session}
		_, err = c.do(ctx, q)
	}
	if isStatus(err, http.StatusForbidden) {
		return nil, fmt.Errorf("%w (registration closed? use -shared-secret)", err)
	}
	if err != nil {
		return nil, err
	}
	return &user{ID: out.UserID, Token: out.AccessToken}, nil
}

func hasDummyFlow(flows []struct {
	Stages []string `json:"stages"`
}) bool {
	for _, f := range flows {
		if len(f.Stages) == 1 && f.Stages[0] == "m.login.dummy" {
			return true
		}
	}
	return false
}

// registerShared creates localpart with Synapse's shared-secret admin
// registration: a nonce, then the account with an HMAC-SHA1 of
// nonce\0username\0password\0notadmin keyed by the secret.
func (c *client) registerShared(ctx context.Context, secret, localpart, password string) (*user, error) {
	var n struct {
		Nonce string `json:"nonce"`
	}
	const path = "/_synapse/admin/v1/register"
	if _, err := c.do(ctx, request{method: http.MethodGet, path: path, out: &n}); err != nil {
		return nil, err
	}
	var out struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
	}
	body := map[string]any{"nonce": n.Nonce, "username": localpart, "password": password,
		"admin": false, "mac": SharedSecretMAC(secret, n.Nonce, localpart, password)}
	if _, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body, out: &out}); err != nil {
		return nil, err
	}
	return &user{ID: out.UserID, Token: out.AccessToken}, nil
}

// SharedSecretMAC is the mac of a shared-secret registration of a user who
// is not an admin and has no user type, hex-encoded, as Synapse checks it.
func SharedSecretMAC(secret, nonce, username, password string) string {
	m := hmac.New(sha1.New, []byte(secret))
	for _, part := range []string{nonce, username, password} {
		m.Write([]byte(part))
		m.Write([]byte{0})
	}
	m.Write([]byte("notadmin"))
	return hex.EncodeToString(m.Sum(nil))
}

// createRoom makes a room anyone may join, kept out of the directory.
// tag goes into the create event: in room version 12 the room id is the
// hash of that event, so one user's rooms created in the same millisecond
// would otherwise be the same room (Weft answers M_ROOM_IN_USE).
func (c *client) createRoom(ctx context.Context, u *user, tag string) (string, error) {
	var out struct {
		RoomID string `json:"room_id"`
	}
	body := map[string]any{"preset": "public_chat", "visibility": "private",
		"creation_content": map[string]any{tagKey + ".room": tag}}
	_, err := c.do(ctx, request{method: http.MethodPost, path: clientPrefix + "/createRoom", token: u.Token, body: body, out: &out})
	return out.RoomID, err
}

func (c *client) join(ctx context.Context, u *user, roomID string) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: clientPrefix + "/join/" + url.PathEscape(roomID),
		token: u.Token, body: map[string]any{}})
	return err
}

// benchTag marks a message of a run; the sync side finds it in content.
type benchTag struct {
	Run string `json:"run"`
	Seq int    `json:"seq"`
}

// parseTag reads the tag of a message of some run.
func parseTag(raw json.RawMessage) (benchTag, bool) {
	var t benchTag
	if len(raw) == 0 || json.Unmarshal(raw, &t) != nil || t.Run == "" {
		return benchTag{}, false
	}
	return t, true
}

// tagKey is the content key of the tag, namespaced as the spec asks of
// custom keys.
const tagKey = "dev.weft.bench"

// send sends message seq of the run as u; the transaction id is unique per
// run and message, so a retried request could not post twice.
func (c *client) send(ctx context.Context, u *user, roomID, run string, seq int) error {
	content := map[string]any{"msgtype": "m.text", "body": "weft bench message " + strconv.Itoa(seq),
		tagKey: benchTag{Run: run, Seq: seq}}
	path := clientPrefix + "/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/wb" + run + "-" + strconv.Itoa(seq)
	_, err := c.do(ctx, request{method: http.MethodPut, path: path, token: u.Token, body: content})
	return err
}

// syncResponse is the part of a /sync response the scenarios read.
type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Limited bool `json:"limited"`
				Events  []struct {
					Content struct {
						// Raw: events of others may hold anything here.
						Tag json.RawMessage `json:"dev.weft.bench"`
					} `json:"content"`
				} `json:"events"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// sync is GET /sync; since "" is an initial sync, filter "" the server's
// default. It returns when the response had arrived.
func (c *client) sync(ctx context.Context, u *user, since, filter string, timeout time.Duration, trace *httptrace.ClientTrace) (*syncResponse, time.Time, error) {
	v := url.Values{}
	if since != "" {
		v.Set("since", since)
		v.Set("timeout", strconv.FormatInt(timeout.Milliseconds(), 10))
	}
	if filter != "" {
		v.Set("filter", filter)
	}
	path := clientPrefix + "/sync"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out syncResponse
	at, err := c.do(ctx, request{method: http.MethodGet, path: path, token: u.Token, out: &out,
		timeout: timeout + requestTimeout, trace: trace})
	return &out, at, err
}

// roomFilter is a /sync filter for only the messages of rooms: no
// state, ephemeral events, account data or presence, and the largest
// timeline servers allow, so a busy room is rarely cut (limited).
func roomFilter(rooms []string) map[string]any {
	none := map[string]any{"types": []string{}}
	return map[string]any{
		"presence":     none,
		"account_data": none,
		"room": map[string]any{
			"rooms":        rooms,
			"timeline":     map[string]any{"types": []string{"m.room.message"}, "limit": 100},
			"state":        none,
			"ephemeral":    none,
			"account_data": none,
		},
	}
}

// uploadFilter stores f as one of u's filters and returns its id, which
// /sync then takes as clients pass it (POST /user/{userId}/filter).
func (c *client) uploadFilter(ctx context.Context, u *user, f any) (string, error) {
	var out struct {
		FilterID string `json:"filter_id"`
	}
	path := clientPrefix + "/user/" + url.PathEscape(u.ID) + "/filter"
	if _, err := c.do(ctx, request{method: http.MethodPost, path: path, token: u.Token, body: f, out: &out}); err != nil {
		return "", err
	}
	if out.FilterID == "" {
		return "", errors.New("filter upload answered no filter_id")
	}
	return out.FilterID, nil
}

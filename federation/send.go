package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// processTimeout bounds the processing of one transaction. Processing
// does not stop when the sender gives up waiting: its retry of the same
// transaction joins the processing and gets its answer.
const processTimeout = 5 * time.Minute

// Transactions serves PUT /_matrix/federation/v1/send/{txnId} (spec:
// "Transactions"): the PDUs are checked and go to the roomserver's input,
// the EDUs to their handlers in the registry, and the answer is recorded
// so that a retried transaction gets it again without being processed
// twice. The answer is given only once every PDU's input has answered:
// the roomserver commits before it answers, so a 200 means every
// accepted PDU is stored.
type Transactions struct {
	DB   *sql.DB
	EDUs *EDURegistry
	// Rooms takes the PDUs (roomserver.API provides it).
	Rooms roomInput
	// Keys verifies the PDUs' signatures (a *KeyRing).
	Keys gomatrixserverlib.JSONVerifier
	// Queue, when set, learns from each transaction that its origin is
	// reachable (see Queue.DestinationUp).
	Queue *Queue
	Log   *slog.Logger

	// mu guards active: the transaction each origin has in processing.
	mu     sync.Mutex
	active map[spec.ServerName]*inflight
}

// roomInput is what /send needs of the roomserver: its input, where
// remote events are checked against the auth rules and stored.
type roomInput interface {
	Input(ctx context.Context, req roomserver.InputRequest) (roomserver.InputResponse, error)
}

// inflight is a transaction being processed; done closes when resp and
// err are set.
type inflight struct {
	txnID string
	done  chan struct{}
	resp  json.RawMessage
	err   error
}

// Routes registers the endpoint on r, which must authenticate requests
// (see Authenticator.Router). A trailing slash is accepted, as older
// Synapse versions send one.
func (t *Transactions) Routes(r *mux.Router) {
	h := mxhttp.JSON(t.send)
	r.Handle("/_matrix/federation/v1/send/{txnId}", h).Methods(http.MethodPut)
	r.Handle("/_matrix/federation/v1/send/{txnId}/", h).Methods(http.MethodPut)
}

// transactionBody is what the handler reads of a transaction. PDUs and
// EDUs are taken raw: one malformed unit does not spoil the others.
type transactionBody struct {
	Origin *string           `json:"origin"`
	PDUs   []json.RawMessage `json:"pdus"`
	EDUs   []json.RawMessage `json:"edus"`
}

// parseTransaction reads a transaction body: 400 M_NOT_JSON or
// M_BAD_JSON for one that is not a JSON object of the right shape or
// carries more than 50 PDUs or 100 EDUs (spec; Synapse answers 400 too).
func parseTransaction(raw []byte) (transactionBody, error) {
	var body transactionBody
	if err := mxhttp.DecodeJSON(raw, &body); err != nil {
		return body, err
	}
	if len(body.PDUs) > MaxTransactionPDUs || len(body.EDUs) > MaxTransactionEDUs {
		return body, mxhttp.BadJSON("A transaction carries at most %d PDUs and %d EDUs; this one has %d and %d",
			MaxTransactionPDUs, MaxTransactionEDUs, len(body.PDUs), len(body.EDUs))
	}
	return body, nil
}

func (t *Transactions) send(r *http.Request) (any, error) {
	origin := Origin(r.Context())
	if origin == "" {
		return nil, mxhttp.Internal(errors.New("federation /send served without authentication"))
	}
	txnID, err := url.PathUnescape(mux.Vars(r)["txnId"])
	if err != nil || txnID == "" {
		return nil, mxhttp.InvalidParam("Invalid transaction id")
	}
	raw, err := readBody(r)
	if err != nil {
		return nil, err
	}
	body, err := parseTransaction(raw)
	if err != nil {
		return nil, err
	}
	// Synapse and Dendrite ignore the body's origin and use the signed
	// one; a body naming another server than the signature is refused
	// rather than ignored, as it cannot be a correct sender's. One without
	// an origin is taken.
	if body.Origin != nil && spec.ServerName(*body.Origin) != origin {
		return nil, mxhttp.Forbidden("The transaction's origin %q is not the server that signed the request (%s)", *body.Origin, origin)
	}
	if t.Queue != nil {
		t.Queue.DestinationUp(r.Context(), origin)
	}
	return t.once(r.Context(), origin, txnID, body)
}

// once processes origin's transaction txnID unless it is being processed
// (then it waits for that answer) or was processed (then it answers as
// then). An origin sends one transaction at a time (spec: the sender
// waits for a 200 before sending another): a second one from the same
// origin while the first is processed gets 429, as Synapse answers.
func (t *Transactions) once(ctx context.Context, origin spec.ServerName, txnID string, body transactionBody) (json.RawMessage, error) {
	t.mu.Lock()
	if f := t.active[origin]; f != nil {
		t.mu.Unlock()
		if f.txnID != txnID {
			return nil, mxhttp.LimitExceeded(time.Second)
		}
		select {
		case <-f.done:
			return f.resp, f.err
		case <-ctx.Done():
			return nil, mxhttp.Internal(ctx.Err())
		}
	}
	if t.active == nil {
		t.active = make(map[spec.ServerName]*inflight)
	}
	f := &inflight{txnID: txnID, done: make(chan struct{})}
	t.active[origin] = f
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.active, origin)
		t.mu.Unlock()
		close(f.done)
	}()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), processTimeout)
	defer cancel()
	f.resp, f.err = t.process(pctx, origin, txnID, body)
	return f.resp, f.err
}

// process handles a transaction not being processed already.
func (t *Transactions) process(ctx context.Context, origin spec.ServerName, txnID string, body transactionBody) (json.RawMessage, error) {
	stored, err := t.DB.FederationInboundResponse(ctx, string(origin), txnID)
	if err == nil {
		return stored, nil
	}
	if !errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.Internal(err)
	}
	results, err := t.pduResults(ctx, origin, body.PDUs)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	for _, raw := range body.EDUs {
		if err := t.handleEDU(ctx, origin, raw); err != nil {
			return nil, mxhttp.Internal(err)
		}
	}
	resp, err := json.Marshal(fclient.RespSend{PDUs: results})
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if err := t.DB.StoreFederationInboundResponse(ctx, string(origin), txnID, resp); err != nil {
		return nil, mxhttp.Internal(err)
	}
	return resp, nil
}

// pduResults submits the PDUs to the roomserver, the rooms in parallel
// and each room's PDUs in the order they came, and returns the result of
// each by event id: {} when the PDU was accepted, an error when it was
// refused. A PDU of a room we do not know, or that does not parse, gets
// no entry, as in Synapse: its event id cannot be known without the room
// version. An error is a failure of ours (database, bus): the transaction
// fails unrecorded, and the sender's retry submits its PDUs again.
func (t *Transactions) pduResults(ctx context.Context, origin spec.ServerName, pdus []json.RawMessage) (map[string]fclient.PDUResult, error) {
	byRoom := make(map[string][]json.RawMessage)
	var rooms []string
	for _, raw := range pdus {
		var head struct {
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(raw, &head) != nil || head.RoomID == "" {
			continue
		}
		if _, ok := byRoom[head.RoomID]; !ok {
			rooms = append(rooms, head.RoomID)
		}
		byRoom[head.RoomID] = append(byRoom[head.RoomID], raw)
	}
	results := make(map[string]fclient.PDUResult, len(pdus))
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, roomID := range rooms {
		wg.Go(func() {
			res, err := t.roomPDUs(ctx, origin, roomID, byRoom[roomID])
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			maps.Copy(results, res)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return results, nil
}

// roomPDUs handles the PDUs of one room, in order (spec: "Checks
// performed on receipt of a PDU"): all of them are refused when the
// room's server ACL denies origin (spec: "ACLs MUST be applied to all
// PDUs"); one that fails verifyPDUs is dropped with an error; the others
// go to the roomserver, redacted if their content hash failed, and get
// its answer.
func (t *Transactions) roomPDUs(ctx context.Context, origin spec.ServerName, roomID string, raws []json.RawMessage) (map[string]fclient.PDUResult, error) {
	info, err := t.DB.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		t.logger().DebugContext(ctx, "federation: PDUs of an unknown room ignored", "origin", origin, "room_id", roomID, "pdus", len(raws))
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(info.Version))
	if err != nil {
		return nil, fmt.Errorf("room %s: %w", roomID, err)
	}
	results := make(map[string]fclient.PDUResult, len(raws))
	allows, err := roomACL(ctx, &t.DB.Queries, roomID)
	if err != nil {
		return nil, err
	}
	if !allows(origin) {
		// Only parsed, to name them: a denied server costs no key lookups.
		for _, raw := range raws {
			if pdu, err := parsePDU(ver, raw); err == nil {
				results[pdu.EventID()] = fclient.PDUResult{Error: "Server " + string(origin) + " is denied by the room's server ACL"}
			}
		}
		return results, nil
	}
	pdus, errs, err := verifyPDUs(ctx, t.Keys, ver, raws)
	if err != nil {
		return nil, err
	}
	for i, pdu := range pdus {
		if pdu == nil {
			continue
		}
		id := pdu.EventID()
		if errs[i] != nil {
			t.logger().InfoContext(ctx, "federation: PDU dropped", "origin", origin, "event_id", id, "err", errs[i])
			results[id] = fclient.PDUResult{Error: errs[i].Error()}
			continue
		}
		_, err := t.Rooms.Input(ctx, roomserver.InputRequest{RoomID: roomID,
			Remote: &roomserver.RemoteEvent{Origin: string(origin), Event: json.RawMessage(pdu.JSON())}})
		var me *mxhttp.Error
		switch {
		case err == nil:
			results[id] = fclient.PDUResult{}
		case errors.As(err, &me) && me.Status < http.StatusInternalServerError:
			t.logger().InfoContext(ctx, "federation: PDU refused", "origin", origin, "event_id", id, "err", err)
			results[id] = fclient.PDUResult{Error: me.Message}
		default:
			return nil, fmt.Errorf("input of %s from %s: %w", id, origin, err)
		}
	}
	return results, nil
}

// handleEDU dispatches one EDU to its type's handler; malformed EDUs and
// unknown types are ignored.
func (t *Transactions) handleEDU(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	var edu struct {
		Type    string          `json:"edu_type"`
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(raw, &edu) != nil || edu.Type == "" {
		t.logger().DebugContext(ctx, "federation: malformed EDU ignored", "origin", origin)
		return nil
	}
	content := bytes.TrimSpace(edu.Content)
	if len(content) == 0 || content[0] != '{' {
		t.logger().DebugContext(ctx, "federation: EDU without a content object ignored", "origin", origin, "edu_type", edu.Type)
		return nil
	}
	h := t.EDUs.handler(edu.Type)
	if h == nil {
		return nil
	}
	return h(ctx, origin, content)
}

func (t *Transactions) logger() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

// readBody reads the request body (the Authenticator left it readable),
// with the request size limit's error.
func readBody(r *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, mxhttp.TooLarge("Request body is larger than %d bytes", tooBig.Limit)
		}
		return nil, mxhttp.BadJSON("Could not read the request body")
	}
	return buf.Bytes(), nil
}

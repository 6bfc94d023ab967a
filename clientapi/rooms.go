package clientapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// maxTypeBytes bounds event types and state keys (spec: Size limits).
const maxTypeBytes = 255

// maxTxnIDBytes bounds client transaction ids, which the spec leaves
// unbounded, well above what clients use (UUIDs, timestamps with counters).
const maxTxnIDBytes = 1024

func (a *API) roomRoutes(r *mux.Router) {
	handle(r, "/createRoom", a.authedJSON(a.createRoom), http.MethodPost)
	handle(r, "/rooms/{roomId}/send/{eventType}/{txnId}", a.authedJSON(a.sendMessage), http.MethodPut)
	// The state key may be empty, and then the trailing slash is optional
	// (room_state.yaml), so each state path comes in three shapes.
	for _, p := range []string{"/{eventType}/{stateKey}", "/{eventType}", "/{eventType}/"} {
		handle(r, "/rooms/{roomId}/state"+p, a.authedJSON(a.putState), http.MethodPut)
		handle(r, "/rooms/{roomId}/state"+p, a.authedJSON(a.getStateEvent), http.MethodGet)
	}
	handle(r, "/rooms/{roomId}/state", a.authedJSON(a.getState), http.MethodGet)
	handle(r, "/rooms/{roomId}/event/{eventId}", a.authedJSON(a.getEvent), http.MethodGet)
	handle(r, "/rooms/{roomId}/redact/{eventId}/{txnId}", a.authedJSON(a.redact), http.MethodPut)
}

// eventIDResponse is the answer of every endpoint that sends an event.
type eventIDResponse struct {
	EventID string `json:"event_id"`
}

// sendMessage is PUT /rooms/{roomId}/send/{eventType}/{txnId}: a message
// event, idempotent per device and path through the transaction id.
func (a *API) sendMessage(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	eventType, err := typeVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	txnID, err := txnIDVar(r)
	if err != nil {
		return nil, err
	}
	inputID := txnInputID("send", dev, roomID, eventType, txnID)
	content, prev, err := a.beginTxn(r, dev, inputID)
	if prev != nil || err != nil {
		return prev, err
	}
	ne := &roomserver.NewEvent{Sender: dev.UserID, Type: eventType, Content: content, DeviceID: dev.DeviceID, TxnID: txnID}
	if eventType == spec.MRoomRedaction {
		// Spec v1.18: redactions may come through /send in every room
		// version, with redacts in the content.
		if err := a.redactionFromContent(ctx, dev.UserID, roomID, ne); err != nil {
			return nil, err
		}
	}
	return a.input(ctx, inputID, roomID, ne)
}

// redact is PUT /rooms/{roomId}/redact/{eventId}/{txnId} with {reason?}.
func (a *API) redact(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	target, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(target, "$") {
		return nil, mxhttp.InvalidParam("Bad event id %q", target)
	}
	txnID, err := txnIDVar(r)
	if err != nil {
		return nil, err
	}
	inputID := txnInputID("redact", dev, roomID, target, txnID)
	content, prev, err := a.beginTxn(r, dev, inputID)
	if prev != nil || err != nil {
		return prev, err
	}
	var body struct {
		Reason *string `json:"reason"`
	}
	if err := json.Unmarshal(content, &body); err != nil {
		return nil, mxhttp.BadJSON("reason must be a string")
	}
	if err := a.mayRedact(ctx, dev.UserID, roomID, target); err != nil {
		return nil, err
	}
	return a.input(ctx, inputID, roomID, &roomserver.NewEvent{Sender: dev.UserID, Type: spec.MRoomRedaction, Content: content,
		Redacts: target, DeviceID: dev.DeviceID, TxnID: txnID})
}

// redactionFromContent takes the redacted event of an m.room.redaction
// sent through /send from its content, checks that the sender may redact
// it, and moves it to the top level for room versions before 11, whose
// redactions carry it there (room_send.yaml).
func (a *API) redactionFromContent(ctx context.Context, userID, roomID string, ne *roomserver.NewEvent) error {
	var content map[string]json.RawMessage
	if err := json.Unmarshal(ne.Content, &content); err != nil {
		return mxhttp.BadJSON("Content must be a JSON object")
	}
	var target string
	if err := json.Unmarshal(content["redacts"], &target); err != nil || !strings.HasPrefix(target, "$") {
		return mxhttp.BadJSON("An m.room.redaction needs redacts, the id of the event to redact, in its content")
	}
	if err := a.mayRedact(ctx, userID, roomID, target); err != nil {
		return err
	}
	version, err := a.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return err
	}
	// Before room version 11 redacts is a top-level key only.
	if beforeV11(version) {
		delete(content, "redacts")
		if ne.Content, err = json.Marshal(content); err != nil {
			return mxhttp.Internal(err)
		}
	}
	ne.Redacts = target
	return nil
}

// beforeV11 reports whether a room version predates version 11, which
// moved redacts into the content of redactions and dropped creator from
// the content of m.room.create.
func beforeV11(version string) bool {
	switch version {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10":
		return true
	}
	return false
}

// mayRedact refuses a redaction the server would not apply, as Synapse
// does: the auth rules let any member send a redaction, but only the
// sender of an event or a user with the redact level has it take effect
// (spec: redaction.yaml). The create event and server ACLs are never
// redacted. An event this room does not hold counts as unknown, so that
// the answer tells nothing about other rooms.
func (a *API) mayRedact(ctx context.Context, userID, roomID, targetID string) error {
	target, _, err := a.rooms.Event(ctx, targetID)
	found := err == nil && target.RoomID == roomID && !target.Rejected
	if err != nil && !isNotFound(err) {
		return err
	}
	if found && (target.Type == spec.MRoomCreate || target.Type == "m.room.server_acl") {
		return mxhttp.Forbidden("Redacting %s events is not permitted", target.Type)
	}
	power, err := a.rooms.Power(ctx, roomID)
	if err != nil {
		return err
	}
	if power.UserLevel(userID) >= power.Levels().Redact {
		return nil
	}
	if !found {
		return mxhttp.NotFound("Could not find event %s", targetID)
	}
	if target.Sender != userID {
		return mxhttp.Forbidden("You don't have permission to redact events sent by others")
	}
	return nil
}

// putState is PUT /rooms/{roomId}/state/{eventType}/{stateKey}.
func (a *API) putState(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	eventType, err := typeVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := stateKeyVar(r)
	if err != nil {
		return nil, err
	}
	content, err := readContent(r)
	if err != nil {
		return nil, err
	}
	if eventType == spec.MRoomCanonicalAlias && stateKey == "" {
		if err := a.checkCanonicalAlias(ctx, roomID, content); err != nil {
			return nil, err
		}
	}
	if eventType == spec.MRoomMember && membershipOf(content) == spec.Invite {
		if localpart, err := a.users.LocalpartOf(stateKey); err == nil {
			if err := a.checkInvitable(ctx, localpart, stateKey); err != nil {
				return nil, err
			}
		}
	}
	// Setting state to what the same user already set it to sends nothing
	// and answers the event that holds it, as Synapse does: a client
	// retrying a state PUT, which has no transaction id, makes no
	// duplicate.
	cur, err := a.rooms.CurrentStateEvent(ctx, roomID, eventType, stateKey)
	if err != nil {
		return nil, err
	}
	if cur != nil && string(cur.SenderID()) == dev.UserID && !cur.Redacted() {
		if canon, err := gomatrixserverlib.CanonicalJSON(content); err == nil && bytes.Equal(canon, cur.Content()) {
			return eventIDResponse{cur.EventID()}, nil
		}
	}
	if err := limit(a.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	return a.input(ctx, "", roomID, &roomserver.NewEvent{Sender: dev.UserID, Type: eventType, StateKey: &stateKey, Content: content})
}

// checkCanonicalAlias validates a new m.room.canonical_alias
// (room_state.yaml): each alias it adds to the room's current one must be
// valid (400 M_INVALID_PARAM) and point at this room (400 M_BAD_ALIAS).
// Aliases already in the current event are not checked again, nor are
// removals. Aliases of other servers would need a federation query, which
// does not exist yet, so only their syntax is checked.
func (a *API) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	type aliases struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	var next aliases
	if err := json.Unmarshal(content, &next); err != nil {
		return mxhttp.InvalidParam("alias must be a string and alt_aliases a list of strings")
	}
	known := map[string]bool{}
	cur, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil {
		return err
	}
	if cur != nil {
		var prev aliases
		_ = json.Unmarshal(cur.Content(), &prev)
		if prev.Alias != nil {
			known[*prev.Alias] = true
		}
		for _, al := range prev.AltAliases {
			known[al] = true
		}
	}
	added := next.AltAliases
	if next.Alias != nil && *next.Alias != "" {
		added = append([]string{*next.Alias}, added...)
	}
	for _, alias := range added {
		if known[alias] {
			continue
		}
		_, domain, err := parseAlias(alias)
		if err != nil {
			return err
		}
		if domain != a.users.ServerName() {
			continue
		}
		target, err := a.db.AliasRoom(ctx, alias)
		if err != nil && !errors.Is(err, sql.ErrNotFound) {
			return mxhttp.Internal(err)
		}
		if target != roomID {
			return mxhttp.Errorf(http.StatusBadRequest, "M_BAD_ALIAS", "The alias %s does not point to this room", alias)
		}
	}
	return nil
}

// input sends one event and answers its id.
func (a *API) input(ctx context.Context, inputID, roomID string, ne *roomserver.NewEvent) (any, error) {
	resp, err := a.rooms.Input(ctx, roomserver.InputRequest{InputID: inputID, RoomID: roomID, NewEvent: ne})
	if err != nil {
		return nil, err
	}
	if len(resp.EventIDs) != 1 {
		return nil, mxhttp.Internal(errors.New("room input made no event"))
	}
	a.active(ctx, ne.Sender)
	return eventIDResponse{resp.EventIDs[0]}, nil
}

// beginTxn starts the client transaction inputID: a new transaction
// passes the rate limit and gets the request's content; a retry is
// answered with the event the transaction already made (prev), without
// being rate limited (spec: Transaction identifiers) or its body read.
// Only a request the limit or its body would refuse is looked up here: a
// retry that passes both goes on to the roomserver, whose commit finds it
// handled and answers it the same way, which spares every new
// transaction a read (such a retry counts against the limit).
func (a *API) beginTxn(r *http.Request, dev *userapi.Device, inputID string) (content json.RawMessage, prev *eventIDResponse, err error) {
	if err = limit(a.messageLimit, dev.UserID); err == nil {
		if content, err = readContent(r); err == nil {
			return content, nil, nil
		}
	}
	resp, found, prevErr := a.rooms.PreviousInput(r.Context(), inputID)
	if prevErr != nil {
		return nil, nil, prevErr
	}
	if found && len(resp.EventIDs) > 0 {
		return nil, &eventIDResponse{resp.EventIDs[0]}, nil
	}
	return nil, nil, err
}

// txnInputID is the roomserver input id of a client transaction. The spec
// scopes a transaction id to one device and one endpoint path (Transaction
// identifiers), so the id covers the endpoint, the device and every path
// variable; it is hashed because those are arbitrary client strings.
func txnInputID(endpoint string, dev *userapi.Device, parts ...string) string {
	key, _ := json.Marshal(append([]string{endpoint, dev.UserID, dev.DeviceID}, parts...))
	sum := sha256.Sum256(key)
	return "txn:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// getEvent is GET /rooms/{roomId}/event/{eventId}: 404 M_NOT_FOUND for an
// event that is unknown, in another room, or hidden from the user by
// history visibility alike, so that the answer does not tell which.
func (a *API) getEvent(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	notFound := mxhttp.NotFound("Event not found")
	ev, pdu, err := a.rooms.Event(ctx, eventID)
	if isNotFound(err) {
		return nil, notFound
	}
	if err != nil {
		return nil, err
	}
	if ev.RoomID != roomID || ev.Outlier || ev.Rejected {
		return nil, notFound
	}
	membership, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	visible, err := a.rooms.VisibleTo(ctx, dev.UserID, membership, ev)
	if err != nil {
		return nil, err
	}
	if !visible {
		return nil, notFound
	}
	return a.clientEvent(ctx, roomID, pdu, dev)
}

// getState is GET /rooms/{roomId}/state.
func (a *API) getState(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	state, err := a.readableState(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	pdus := state.atLeave
	if state.current {
		if pdus, err = a.rooms.CurrentState(ctx, roomID); err != nil {
			return nil, err
		}
	}
	return ClientRoomEvents(ctx, a.sent, roomID, pdus, dev, time.Now())
}

// getStateEvent is GET /rooms/{roomId}/state/{eventType}/{stateKey}: the
// content, or with ?format=event the whole client event (spec v1.16).
func (a *API) getStateEvent(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	eventType, err := typeVar(r, "eventType")
	if err != nil {
		return nil, err
	}
	stateKey, err := stateKeyVar(r)
	if err != nil {
		return nil, err
	}
	format := r.URL.Query().Get("format")
	switch format {
	case "", "content", "event":
	default:
		return nil, mxhttp.InvalidParam("format must be content or event")
	}
	state, err := a.readableState(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	var pdu gomatrixserverlib.PDU
	if state.current {
		if pdu, err = a.rooms.CurrentStateEvent(ctx, roomID, eventType, stateKey); err != nil {
			return nil, err
		}
	} else {
		for _, e := range state.atLeave {
			if e.Type() == eventType && e.StateKeyEquals(stateKey) {
				pdu = e
			}
		}
	}
	if pdu == nil {
		return nil, mxhttp.NotFound("The room has no state %s with key %q", eventType, stateKey)
	}
	if format == "event" {
		return a.clientEvent(ctx, roomID, pdu, dev)
	}
	return json.RawMessage(pdu.Content()), nil
}

// roomState is the state of a room a user may read: the current state,
// or the state as it was when they left (rooms.yaml).
type roomState struct {
	current bool
	atLeave []gomatrixserverlib.PDU
}

// readableState decides which state of a room the user may read: joined
// users and anyone in a world-readable room read the current state; users
// who left or were banned read the state at their departure, their own
// membership event included; anyone else gets 403 M_FORBIDDEN, whether
// the room exists or not.
func (a *API) readableState(ctx context.Context, roomID, userID string) (roomState, error) {
	membership, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomState{}, err
	}
	switch membership {
	case spec.Join:
		return roomState{current: true}, nil
	case spec.Leave, spec.Ban:
		member, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
		if err != nil {
			return roomState{}, err
		}
		if member == nil {
			break
		}
		ev, _, err := a.rooms.Event(ctx, member.EventID())
		if err != nil {
			return roomState{}, err
		}
		before, err := a.rooms.StateBefore(ctx, ev)
		if err != nil {
			return roomState{}, err
		}
		state := make([]gomatrixserverlib.PDU, 0, len(before)+1)
		for _, e := range before {
			if !(e.Type() == spec.MRoomMember && e.StateKeyEquals(userID)) {
				state = append(state, e)
			}
		}
		return roomState{atLeave: append(state, member)}, nil
	}
	vis, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return roomState{}, err
	}
	if vis != nil {
		if v, err := vis.HistoryVisibility(); err == nil && string(v) == roomserver.VisWorldReadable {
			return roomState{current: true}, nil
		}
	}
	return roomState{}, mxhttp.Forbidden("You aren't a member of the room and weren't previously a member of the room")
}

// readContent reads an event content from the request body: a JSON object.
func readContent(r *http.Request) (json.RawMessage, error) {
	var content json.RawMessage
	if err := mxhttp.ReadJSON(r, &content); err != nil {
		return nil, err
	}
	return content, nil
}

// roomIDPath is the {roomId} path variable, which must be a room id.
func roomIDPath(r *http.Request) (string, error) {
	id, err := pathVar(r, "roomId")
	if err != nil {
		return "", err
	}
	if !isRoomID(id) || len(id) > maxTypeBytes || strings.ContainsRune(id, 0) {
		return "", mxhttp.InvalidParam("Bad room id %q", id)
	}
	return id, nil
}

// typeVar is an event type path variable: not empty, at most 255 bytes
// (413 M_TOO_LARGE past that, as Synapse answers oversized events).
func typeVar(r *http.Request, name string) (string, error) {
	t, err := pathVar(r, name)
	if err != nil {
		return "", err
	}
	if t == "" || strings.ContainsRune(t, 0) {
		return "", mxhttp.InvalidParam("Bad event type %q", t)
	}
	if len(t) > maxTypeBytes {
		return "", mxhttp.TooLarge("Event type is longer than %d bytes", maxTypeBytes)
	}
	return t, nil
}

// stateKeyVar is the {stateKey} path variable; empty when the path has none.
func stateKeyVar(r *http.Request) (string, error) {
	k, err := pathVar(r, "stateKey")
	if err != nil {
		return "", err
	}
	if strings.ContainsRune(k, 0) {
		return "", mxhttp.InvalidParam("Bad state key")
	}
	if len(k) > maxTypeBytes {
		return "", mxhttp.TooLarge("State key is longer than %d bytes", maxTypeBytes)
	}
	return k, nil
}

// txnIDVar is the {txnId} path variable.
func txnIDVar(r *http.Request) (string, error) {
	t, err := pathVar(r, "txnId")
	if err != nil {
		return "", err
	}
	if t == "" || strings.ContainsRune(t, 0) || len(t) > maxTxnIDBytes {
		return "", mxhttp.InvalidParam("Bad transaction id")
	}
	return t, nil
}

// isNotFound reports whether err is a 404 Matrix error.
func isNotFound(err error) bool {
	var me *mxhttp.Error
	return errors.As(err, &me) && me.Status == http.StatusNotFound
}

// membershipOf reads the membership of m.room.member content ("" when it
// has none).
func membershipOf(content json.RawMessage) string {
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(content, &c)
	return c.Membership
}

package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// receiptFullyRead is the read marker, which the receipt endpoint takes
// as a receipt type but which lives in room account data (spec: Read
// markers).
const receiptFullyRead = "m.fully_read"

// threadMain names the main timeline as a receipt's thread.
const threadMain = "main"

// maxThreadHops bounds the walk up an event's relations to find its thread
// (spec: "a maximum of 3 hops is recommended").
const maxThreadHops = 3

func (a *API) receiptRoutes(r *mux.Router) {
	handle(r, "/rooms/{roomId}/receipt/{receiptType}/{eventId}", a.authedJSON(a.postReceipt), http.MethodPost)
	handle(r, "/rooms/{roomId}/read_markers", a.authedJSON(a.postReadMarkers), http.MethodPost)
}

// postReceipt is POST /rooms/{roomId}/receipt/{receiptType}/{eventId}:
// m.read and m.read.private move the caller's receipt (in the thread of
// the body's thread_id, unthreaded without one) and reset their unread
// counts; m.fully_read moves the read marker, as /read_markers does.
// Errors: 400 M_INVALID_PARAM for an unknown receipt type, a malformed
// event id or a bad thread_id; 403 M_FORBIDDEN when the caller is not
// joined; 404 M_NOT_FOUND when the event is not one of the room's that
// they may see.
func (a *API) postReceipt(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	typ, err := pathVar(r, "receiptType")
	if err != nil {
		return nil, err
	}
	switch typ {
	case sql.ReceiptRead, sql.ReceiptReadPrivate, receiptFullyRead:
	default:
		return nil, mxhttp.InvalidParam("Receipt type must be %s, %s or %s", sql.ReceiptRead, sql.ReceiptReadPrivate, receiptFullyRead)
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(eventID, "$") {
		return nil, mxhttp.InvalidParam("A valid event id must be specified")
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := readOptionalJSON(r, &body); err != nil {
		return nil, err
	}
	threadID := ""
	if raw, ok := body["thread_id"]; ok {
		// Spec: 400 M_INVALID_PARAM for a thread_id that is not a
		// non-empty string or comes with an incompatible receipt type.
		if json.Unmarshal(raw, &threadID) != nil || threadID == "" {
			return nil, mxhttp.InvalidParam("thread_id field must be a non-empty string")
		}
		if typ == receiptFullyRead {
			return nil, mxhttp.InvalidParam("thread_id is not compatible with %s receipts", receiptFullyRead)
		}
	}
	ev, err := a.receiptEvent(ctx, roomID, eventID, dev)
	if err != nil {
		return nil, err
	}
	if typ == receiptFullyRead {
		return struct{}{}, a.setFullyRead(ctx, dev, ev)
	}
	if threadID != "" {
		ok, err := a.eventInThread(ctx, ev, threadID)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, mxhttp.InvalidParam("event_id %s is not related to thread %s", eventID, threadID)
		}
	}
	return struct{}{}, a.putReceipt(ctx, dev, ev, typ, threadID)
}

// readMarkersRequest is the body of POST /read_markers. Each field is an
// event id; absent or empty fields are left alone (as Synapse does).
type readMarkersRequest struct {
	FullyRead   *string `json:"m.fully_read"`
	Read        *string `json:"m.read"`
	ReadPrivate *string `json:"m.read.private"`
}

// postReadMarkers is POST /rooms/{roomId}/read_markers: the fully read
// marker and, as with the receipt endpoint, unthreaded m.read and
// m.read.private receipts. Every event is checked before anything is
// written, so a bad one changes nothing.
func (a *API) postReadMarkers(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	if err := forbidGuest(dev); err != nil {
		return nil, err
	}
	var req readMarkersRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	type mark struct {
		typ string
		ev  sql.Event
	}
	var marks []mark
	for _, m := range []struct {
		typ string
		id  *string
	}{{sql.ReceiptRead, req.Read}, {sql.ReceiptReadPrivate, req.ReadPrivate}, {receiptFullyRead, req.FullyRead}} {
		if m.id == nil || *m.id == "" {
			continue
		}
		if !strings.HasPrefix(*m.id, "$") {
			return nil, mxhttp.InvalidParam("%s must be an event id", m.typ)
		}
		ev, err := a.receiptEvent(ctx, roomID, *m.id, dev)
		if err != nil {
			return nil, err
		}
		marks = append(marks, mark{m.typ, ev})
	}
	for _, m := range marks {
		if m.typ == receiptFullyRead {
			err = a.setFullyRead(ctx, dev, m.ev)
		} else {
			err = a.putReceipt(ctx, dev, m.ev, m.typ, "")
		}
		if err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

// receiptEvent returns the event a receipt or marker points at: one of
// the room's timeline events that the caller, who must be joined (403
// M_FORBIDDEN), may see; 404 M_NOT_FOUND otherwise, alike for an unknown
// event, another room's and a hidden one.
func (a *API) receiptEvent(ctx context.Context, roomID, eventID string, dev *userapi.Device) (sql.Event, error) {
	membership, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return sql.Event{}, err
	}
	if membership != spec.Join {
		return sql.Event{}, mxhttp.Forbidden("You are not joined to this room")
	}
	notFound := mxhttp.NotFound("Event not found")
	ev, _, err := a.rooms.Event(ctx, eventID)
	if isNotFound(err) {
		return sql.Event{}, notFound
	}
	if err != nil {
		return sql.Event{}, err
	}
	if ev.RoomID != roomID || ev.Outlier || ev.Rejected || ev.StreamPos == 0 {
		return sql.Event{}, notFound
	}
	visible, err := a.rooms.VisibleTo(ctx, dev.UserID, membership, ev)
	if err != nil {
		return sql.Event{}, err
	}
	if !visible {
		return sql.Event{}, notFound
	}
	return ev, nil
}

// putReceipt stores a receipt and, in the same transaction, marks the
// caller's notifications up to the event as read and queues a public one
// for the room's other servers. A receipt behind the one stored is
// ignored, as Synapse ignores it; the reset is then a no-op, since the
// stored receipt already reset further.
func (a *API) putReceipt(ctx context.Context, dev *userapi.Device, ev sql.Event, typ, threadID string) error {
	var stored bool
	var wakeRemote func()
	err := a.db.WithTx(ctx, func(q *sql.Queries) error {
		if err := q.ResetCountsNID(ctx, dev.UserID, ev.RoomNID, threadID, ev.StreamPos); err != nil {
			return err
		}
		ts := time.Now().UnixMilli()
		var err error
		_, stored, err = q.PutReceipt(ctx, sql.Receipt{RoomNID: ev.RoomNID, Type: typ, UserID: dev.UserID, ThreadID: threadID,
			EventID: ev.EventID, EventPos: ev.StreamPos, TS: ts})
		// Private receipts never leave the server (spec: m.read.private).
		if err != nil || !stored || typ != sql.ReceiptRead || a.remoteReceipts == nil {
			return err
		}
		wakeRemote, err = a.remoteReceipts.QueueReceipt(ctx, q, ev.RoomID, dev.UserID, ev.EventID, threadID, ts)
		return err
	})
	if err != nil {
		return err
	}
	if !stored {
		return nil
	}
	if wakeRemote != nil {
		wakeRemote()
	}
	if typ == sql.ReceiptReadPrivate {
		// Nobody else ever sees it.
		a.wake.Users(dev.UserID)
	} else {
		a.wake.Rooms(ev.RoomID)
	}
	return nil
}

// RemoteReceipts tells the other servers in a room about a local user's
// read receipts: federation's queue, as m.receipt EDUs.
type RemoteReceipts interface {
	// QueueReceipt queues, in the caller's transaction tx, userID's m.read
	// receipt at eventID (in thread threadID, "" for none) made at ts,
	// and returns what wakes the senders, to call after the commit.
	QueueReceipt(ctx context.Context, tx *sql.Queries, roomID, userID, eventID, threadID string, ts int64) (func(), error)
}

// WithRemoteReceipts tells other servers about local users' read receipts
// through f; without it they are not told.
func WithRemoteReceipts(f RemoteReceipts) Option {
	return func(a *API) { a.remoteReceipts = f }
}

// setFullyRead moves the caller's fully read marker (room account data
// m.fully_read) to ev, unless it is already at or past it (as Synapse
// does; a marker at an event no longer known is passed).
func (a *API) setFullyRead(ctx context.Context, dev *userapi.Device, ev sql.Event) error {
	pos, err := a.db.UpdateAccountData(ctx, dev.Localpart, ev.RoomID, receiptFullyRead, func(q *sql.Queries, old []byte) ([]byte, error) {
		var cur struct {
			EventID string `json:"event_id"`
		}
		if old != nil && json.Unmarshal(old, &cur) == nil && cur.EventID != "" {
			prev, err := q.EventByID(ctx, cur.EventID)
			if err != nil && !errors.Is(err, sql.ErrNotFound) {
				return nil, err
			}
			if err == nil && prev.StreamPos >= ev.StreamPos {
				return nil, nil
			}
		}
		return json.Marshal(map[string]string{"event_id": ev.EventID})
	})
	if err != nil {
		return err
	}
	if pos != 0 {
		a.wake.Users(dev.UserID)
	}
	return nil
}

// eventInThread reports whether a receipt in thread threadID may point at
// ev, as Synapse judges it: for "main", ev must not be in a thread; for a
// thread root's id, ev must be in that thread, or be the root, or relate
// (with any relation) to the root.
func (a *API) eventInThread(ctx context.Context, ev sql.Event, threadID string) (bool, error) {
	thread, top, err := a.threadOf(ctx, ev)
	if err != nil {
		return false, err
	}
	if threadID == threadMain {
		return thread == threadMain, nil
	}
	if thread == threadID {
		return true, nil
	}
	if thread != threadMain || top != threadID {
		return false, nil
	}
	return a.db.HasThreadReplies(ctx, ev.RoomNID, threadID)
}

// threadOf walks up ev's relations: thread is the root of the first
// m.thread relation met ("main" when there is none within maxThreadHops),
// top the last event reached (ev itself when it relates to nothing).
func (a *API) threadOf(ctx context.Context, ev sql.Event) (thread, top string, err error) {
	top = ev.EventID
	for range maxThreadHops {
		relType, parent, err := a.db.EventRelation(ctx, top)
		if errors.Is(err, sql.ErrNotFound) {
			break
		}
		if err != nil {
			return "", "", err
		}
		if relType == "m.thread" {
			return parent, parent, nil
		}
		top = parent
	}
	return threadMain, top, nil
}

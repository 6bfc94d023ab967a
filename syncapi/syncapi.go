// Package syncapi serves the reading side of rooms: the timeline endpoints
// (/messages, /context, timestamp_to_event), the relations API and the
// thread list, and later /sync. It reads the database directly and asks
// the roomserver only for what the roomserver owns (membership, history
// visibility); what a user may see is decided by syncapi/view.
package syncapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
	"github.com/weft-chat/weft/userapi"
)

// Rooms is what the sync API needs of the roomserver (roomserver.API has
// it).
type Rooms interface {
	view.Rooms
	Event(ctx context.Context, eventID string) (sql.Event, gomatrixserverlib.PDU, error)
	RecentEvent(eventID string) (sql.Event, gomatrixserverlib.PDU, bool)
	RecentTimeline(roomNID, lo, hi int64, n int, roomLast int64) ([]sql.Event, bool)
}

// Authed wraps a handler with the access-token check of the client API
// (clientapi.API.Authed), so every endpoint authenticates the same way.
type Authed func(h clientapi.AuthedHandler) mxhttp.Handler

// API serves the sync API's endpoints.
type API struct {
	db     *sql.DB
	rooms  Rooms
	authed Authed
	log    *slog.Logger
	// presence is nil when presence is off.
	presence Presence
	// parking is nil when long-polls wait in their handlers.
	parking *Parking
	// backfill is nil when federation is off (see WithBackfill).
	backfill Backfiller
	// filters keeps compiled sync filters: a client sends the same
	// filter, an id or inline JSON, with every sync, and an uploaded
	// filter never changes (a new one gets a new id).
	filters *bounded.Map[filterKey, *syncFilter]
	// events formats events for clients (the database, or
	// clientapi.Sent in front of it: WithClientEvents).
	events    clientapi.EventStore
	timelines timelineReads
	heads     headReads
	parsed    parsed
}

// Option tunes the sync API at construction.
type Option func(*API)

// WithClientEvents formats events with store (clientapi.API.Sent: the
// transaction ids of the events its clients sent are in memory).
func WithClientEvents(store clientapi.EventStore) Option {
	return func(a *API) { a.events = store }
}

// New makes the sync API.
func New(db *sql.DB, rooms Rooms, authed Authed, log *slog.Logger, opts ...Option) *API {
	a := &API{db: db, rooms: rooms, authed: authed, log: log, filters: bounded.New[filterKey, *syncFilter](filterCacheMax),
		timelines: newTimelineReads(rooms.RecentTimeline), parsed: newParsed(rooms.RecentEvent), events: db}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Routes registers the endpoints built so far on the client router.
func (a *API) Routes(r *mux.Router) {
	v3 := func(path string, h clientapi.AuthedHandler) {
		for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
			r.Handle(prefix+path, a.authed(h)).Methods(http.MethodGet)
		}
	}
	v1 := func(path string, h clientapi.AuthedHandler) {
		r.Handle("/_matrix/client/v1"+path, a.authed(h)).Methods(http.MethodGet)
	}
	v3("/rooms/{roomId}/messages", a.messages)
	v3("/rooms/{roomId}/context/{eventId}", a.eventContext)
	v1("/rooms/{roomId}/timestamp_to_event", a.timestampToEvent)
	v1("/rooms/{roomId}/relations/{eventId}", a.relations)
	v1("/rooms/{roomId}/relations/{eventId}/{relType}", a.relations)
	v1("/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", a.relations)
	v1("/rooms/{roomId}/threads", a.threads)
}

// open checks the caller may read the room and gives their view of it,
// with the room's row.
func (a *API) open(ctx context.Context, roomID string, dev *userapi.Device) (*view.Viewer, sql.RoomInfo, error) {
	v, err := view.Open(ctx, a.rooms, a.db, roomID, dev.UserID)
	if err != nil {
		return nil, sql.RoomInfo{}, err
	}
	info, err := a.db.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		// Open lets nobody into an unknown room; this is a room deleted
		// between the two reads.
		return nil, sql.RoomInfo{}, mxhttp.Forbidden("User %s is not in room %s", dev.UserID, roomID)
	}
	if err != nil {
		return nil, sql.RoomInfo{}, fmt.Errorf("load room %s: %w", roomID, err)
	}
	return v, info, nil
}

// pathVar returns a path variable, unescaped (routes match encoded paths
// because Matrix ids contain reserved characters).
func pathVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", mxhttp.InvalidParam("Bad %s in path", name)
	}
	return v, nil
}

// queryInt reads an optional non-negative integer parameter: def when
// absent, 400 M_INVALID_PARAM when not a number or negative.
func queryInt(r *http.Request, name string, def int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("%s must be a non-negative integer", name)
	}
	return n, nil
}

// queryLimit reads a limit: def when absent, capped at max.
func queryLimit(r *http.Request, def, max int) (int, error) {
	n, err := queryInt(r, "limit", int64(def))
	if err != nil {
		return 0, err
	}
	return int(min(n, int64(max))), nil
}

// queryDir reads dir: "b" is backwards. required makes its absence an
// error; otherwise it defaults to b.
func queryDir(r *http.Request, required bool) (backward bool, err error) {
	switch d := r.URL.Query().Get("dir"); {
	case d == "b":
		return true, nil
	case d == "f":
		return false, nil
	case d == "" && !required:
		return true, nil
	}
	return false, mxhttp.InvalidParam(`dir must be "b" or "f"`)
}

// queryToken reads an optional token parameter.
func queryToken(r *http.Request, name string) (*Token, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return nil, nil
	}
	t, err := ParseToken(s)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// writeJSON answers 200 with v.
func writeJSON(w http.ResponseWriter, v any) error {
	return mxhttp.WriteJSON(w, http.StatusOK, v)
}

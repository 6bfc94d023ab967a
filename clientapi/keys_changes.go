package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// SyncTokenParser reads a /sync token into stream positions, answering
// 400 M_INVALID_PARAM for anything else. The sync API owns the token
// format (syncapi.ParseSyncPositions); it imports this package, so the
// parser is handed over at registration.
type SyncTokenParser func(token string) (sql.StreamPositions, error)

// KeyChangesRoute registers GET /keys/changes, reading its tokens with
// parse.
func (a *API) KeyChangesRoute(r *mux.Router, parse SyncTokenParser) {
	handle(r, "/keys/changes", a.authedJSON(func(r *http.Request, dev *userapi.Device) (any, error) {
		return a.keyChanges(r, dev, parse)
	}), http.MethodGet)
}

// keyChanges is GET /keys/changes: the users whose device lists changed
// for the caller since from, and those the caller no longer shares a room
// with, by the rules of a sync's device_lists (sql.DeviceListChanges). The
// window runs to now: the spec calls to "a hint" for the server's caches,
// and Synapse ignores it too, so a client never misses a change that
// happened after its to. to is checked when given, not required (Synapse).
func (a *API) keyChanges(r *http.Request, dev *userapi.Device, parse SyncTokenParser) (any, error) {
	q := r.URL.Query()
	if q.Get("from") == "" {
		return nil, mxhttp.MissingParam("from is required")
	}
	from, err := parse(q.Get("from"))
	if err != nil {
		return nil, err
	}
	if s := q.Get("to"); s != "" {
		if _, err := parse(s); err != nil {
			return nil, err
		}
	}
	ctx := r.Context()
	now, err := a.db.SyncPositions(ctx)
	if err != nil {
		return nil, err
	}
	mems, err := a.db.SyncMemberships(ctx, dev.UserID)
	if err != nil {
		return nil, err
	}
	lists, err := a.db.DeviceListChanges(ctx, dev.UserID, mems, from, now)
	if err != nil {
		return nil, err
	}
	if lists.Changed == nil {
		lists.Changed = []string{}
	}
	if lists.Left == nil {
		lists.Left = []string{}
	}
	return map[string][]string{"changed": lists.Changed, "left": lists.Left}, nil
}

package syncapi

import (
	"math"
	"net/http"
	"strconv"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/userapi"
)

// timestampToEvent is GET /v1/rooms/{roomId}/timestamp_to_event: the
// event the caller may see closest to a time, at or after it (dir=f) or
// at or before it (dir=b); 404 M_NOT_FOUND when there is none within the
// scan budget. Only local history is searched: asking other servers
// (federation timestamp_to_event) comes with federation.
func (a *API) timestampToEvent(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	rawTS := r.URL.Query().Get("ts")
	if rawTS == "" {
		return mxhttp.MissingParam("Missing ts")
	}
	ts, err := strconv.ParseInt(rawTS, 10, 64)
	if err != nil {
		return mxhttp.InvalidParam("ts must be an integer")
	}
	backward, err := queryDir(r, true)
	if err != nil {
		return err
	}
	v, info, err := a.open(ctx, roomID, dev)
	if err != nil {
		return err
	}
	// The cursor (ts, stream) starts just outside ts so that events at ts
	// itself are found in either direction.
	curTS, curStream := ts, int64(0)
	if backward {
		curStream = math.MaxInt64
	}
	for n, scanned := 50, 0; scanned < scanBudget; n = min(n*2, maxBatch) {
		evs, err := a.db.TimelineByTimestamp(ctx, info.NID, curTS, curStream, !backward, n)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			ok, err := v.Shows(ctx, ev)
			if err != nil {
				return err
			}
			if ok {
				return writeJSON(w, map[string]any{"event_id": ev.EventID, "origin_server_ts": ev.OriginServerTS})
			}
			curTS, curStream = ev.OriginServerTS, ev.StreamPos
		}
		scanned += len(evs)
		if len(evs) < n {
			break
		}
	}
	dir := "forward"
	if backward {
		dir = "backward"
	}
	return mxhttp.NotFound("Unable to find event from %d in %s direction", ts, dir)
}

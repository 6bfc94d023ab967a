package syncapi

import (
	"context"
	"net/http"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Relations API limits: Synapse's default and cap.
const (
	relationsDefaultLimit = 5
	relationsMaxLimit     = 1000
	// relationsRecursion is how many relation hops recurse=true follows:
	// the spec asks for at least 3, and so many is what Synapse follows.
	relationsRecursion = 3
)

// relationsResponse is the body of GET /relations.
type relationsResponse struct {
	Chunk          []ClientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch,omitempty"`
	PrevBatch      string        `json:"prev_batch,omitempty"`
	RecursionDepth *int          `json:"recursion_depth,omitempty"`
}

// relations is GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]:
// the children of an event the caller may see, newest first by default.
// 404 M_NOT_FOUND when the parent is unknown or hidden from the caller.
func (a *API) relations(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return err
	}
	q := sql.RelationQuery{ParentID: eventID, MaxDepth: 1}
	if q.RelType, err = pathVar(r, "relType"); err != nil {
		return err
	}
	if q.EventType, err = pathVar(r, "eventType"); err != nil {
		return err
	}
	if q.Backward, err = queryDir(r, false); err != nil {
		return err
	}
	limit, err := queryLimit(r, relationsDefaultLimit, relationsMaxLimit)
	if err != nil {
		return err
	}
	from, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	to, err := queryToken(r, "to")
	if err != nil {
		return err
	}
	var resp relationsResponse
	switch rec := r.URL.Query().Get("recurse"); rec {
	case "":
	case "false":
		// Given, so the field is mandatory: direct children are depth 1.
		depth := 1
		resp.RecursionDepth = &depth
	case "true":
		depth := relationsRecursion
		q.MaxDepth, resp.RecursionDepth = depth, &depth
	default:
		return mxhttp.InvalidParam(`recurse must be true or false`)
	}
	v, info, err := a.open(ctx, roomID, dev)
	if err != nil {
		return err
	}
	if _, err := a.visibleEvent(ctx, v, roomID, eventID); err != nil {
		return err
	}
	q.RoomNID = info.NID
	start, end := sql.TopoStart, sql.TopoEnd
	if q.Backward {
		start, end = end, start
	}
	if from != nil {
		if start, err = a.boundary(ctx, info.NID, *from); err != nil {
			return err
		}
	}
	if to != nil {
		if end, err = a.boundary(ctx, info.NID, *to); err != nil {
			return err
		}
	}
	fetch := func(ctx context.Context, lo, hi sql.TopoPos, backward bool, n int) ([]sql.Event, error) {
		q := q
		q.Lo, q.Hi, q.Backward, q.Limit = lo, hi, backward, n
		return a.db.Relations(ctx, q)
	}
	p, err := paginate(ctx, fetch, start, end, q.Backward, limit, func(ev sql.Event) (bool, error) { return v.Shows(ctx, ev) })
	if err != nil {
		return err
	}
	if resp.Chunk, err = a.serve(ctx, v, dev, p.events, serveOptions{bundle: true}); err != nil {
		return err
	}
	if p.more {
		resp.NextBatch = TopoToken(p.next)
	}
	if from != nil {
		resp.PrevBatch = r.URL.Query().Get("from")
	}
	return writeJSON(w, resp)
}

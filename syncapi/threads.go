package syncapi

import (
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Thread list limits: Synapse's default and cap.
const (
	threadsDefaultLimit = 5
	threadsMaxLimit     = 100
)

// threadsResponse is the body of GET /threads.
type threadsResponse struct {
	Chunk     []ClientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch,omitempty"`
}

// threads is GET /v1/rooms/{roomId}/threads: the room's thread roots the
// caller may see, most recently active first, each with its bundled
// aggregations. Activity is the stream position of a thread's newest
// event, so the tokens are stream tokens ("s<position>": threads active
// at or before it).
func (a *API) threads(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	participant := ""
	switch inc := r.URL.Query().Get("include"); inc {
	case "", "all":
	case "participated":
		participant = dev.UserID
	default:
		return mxhttp.InvalidParam(`include must be "all" or "participated"`)
	}
	limit, err := queryLimit(r, threadsDefaultLimit, threadsMaxLimit)
	if err != nil {
		return err
	}
	if limit == 0 {
		return mxhttp.InvalidParam("limit must be greater than zero")
	}
	upTo := int64(math.MaxInt64)
	from, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	if from != nil {
		upTo = from.Stream
		if !from.IsStream {
			upTo = from.Topo.Stream
		}
	}
	v, info, err := a.open(ctx, roomID, dev)
	if err != nil {
		return err
	}
	var roots []sql.Event
	more := true
	for scanned := 0; len(roots) < limit && scanned < scanBudget; {
		n := limit - len(roots) + 1
		found, err := a.db.ThreadRoots(ctx, info.NID, upTo, participant, n)
		if err != nil {
			return fmt.Errorf("threads of %s: %w", roomID, err)
		}
		scanned += len(found)
		nids := make([]int64, len(found))
		for i, t := range found {
			nids[i] = t.RootNID
		}
		loaded, err := a.db.EventsByNID(ctx, nids)
		if err != nil {
			return err
		}
		byNID := make(map[int64]sql.Event, len(loaded))
		for _, e := range loaded {
			byNID[e.NID] = e
		}
		for i, t := range found {
			if len(roots) == limit {
				break
			}
			upTo = t.Latest - 1
			root := byNID[t.RootNID]
			ok, err := v.Sees(ctx, root)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if v.Ignores(root) {
				// The spec: a root from an ignored user is returned
				// redacted, as a client aggregating locally would show it.
				if root, err = redacted(root); err != nil {
					return err
				}
			}
			roots = append(roots, root)
			if len(roots) == limit {
				// More if this batch has roots left, or was full.
				more = i < len(found)-1 || len(found) == n
			}
		}
		if len(found) < n {
			if len(roots) < limit {
				more = false
			}
			break
		}
	}
	resp := threadsResponse{}
	if resp.Chunk, err = a.serve(ctx, v, dev, roots, serveOptions{bundle: true}); err != nil {
		return err
	}
	if more {
		resp.NextBatch = "s" + strconv.FormatInt(upTo, 10)
	}
	return writeJSON(w, resp)
}

// redacted is an event stripped as a redaction would strip it.
func redacted(ev sql.Event) (sql.Event, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(ev.RoomVersion))
	if err != nil {
		return sql.Event{}, err
	}
	js, err := verImpl.RedactEventJSON(ev.JSON)
	if err != nil {
		return sql.Event{}, fmt.Errorf("redact %s: %w", ev.EventID, err)
	}
	ev.JSON = js
	return ev, nil
}

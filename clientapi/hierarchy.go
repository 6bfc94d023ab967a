package clientapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/userapi"
)

// GET /_matrix/client/v1/rooms/{roomId}/hierarchy (space_hierarchy.yaml):
// a depth-first walk of a space's m.space.child events, as Synapse's room
// summary handler walks it. Only rooms this server has are described: a
// child on another server would be fetched over federation, which does not
// exist yet, so it stays listed in its parent's children_state but is
// skipped, like a child the user may not preview.

// Limits of one request: the spec asks servers to apply defaults and
// maxima. Synapse's default page is 50 rooms; the depth cap bounds the
// walk on long chains.
const (
	hierarchyDefaultLimit = 50
	hierarchyMaxLimit     = 100
	hierarchyMaxDepth     = 20
)

// hierarchyRoom is one room of a /hierarchy page (SpaceHierarchyRoomsChunk).
type hierarchyRoom struct {
	roomsummary.Preview
	ChildrenState []roomsummary.SpaceChild `json:"children_state"`
}

type hierarchyResponse struct {
	Rooms     []hierarchyRoom `json:"rooms"`
	NextBatch string          `json:"next_batch,omitempty"`
}

// hierarchyQuery is a /hierarchy request's parameters.
type hierarchyQuery struct {
	suggestedOnly bool
	limit         int
	maxDepth      int
	skip          int // rooms already returned by earlier pages
}

// hierarchyToken is a next_batch token: the walk's parameters, which later
// pages may not change, and how many rooms earlier pages returned. The
// walk is deterministic for a given room state, so a page is found again
// by walking the same tree and skipping those rooms: no session is kept on
// the server, and a token stays valid as long as the space does not
// change (a change may shift rooms across pages, as in Synapse).
type hierarchyToken struct {
	Room          string `json:"r"`
	SuggestedOnly bool   `json:"s"`
	MaxDepth      int    `json:"d"`
	Skip          int    `json:"n"`
}

func (t hierarchyToken) String() string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

// parseHierarchyQuery reads and checks the query parameters: 400
// M_INVALID_PARAM for a limit that is not a positive integer, a max_depth
// that is negative, a bad suggested_only, or a from token that is unknown
// or was made with other parameters.
func parseHierarchyQuery(r *http.Request, roomID string) (hierarchyQuery, error) {
	q := hierarchyQuery{limit: hierarchyDefaultLimit, maxDepth: hierarchyMaxDepth}
	v := r.URL.Query()
	switch s := v.Get("suggested_only"); s {
	case "", "false":
	case "true":
		q.suggestedOnly = true
	default:
		return q, mxhttp.InvalidParam("suggested_only must be true or false")
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return q, mxhttp.InvalidParam("limit must be an integer greater than zero")
		}
		q.limit = min(n, hierarchyMaxLimit)
	}
	if s := v.Get("max_depth"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, mxhttp.InvalidParam("max_depth must be a non-negative integer")
		}
		q.maxDepth = min(n, hierarchyMaxDepth)
	}
	if from := v.Get("from"); from != "" {
		var tok hierarchyToken
		raw, err := base64.RawURLEncoding.DecodeString(from)
		if err != nil || json.Unmarshal(raw, &tok) != nil || tok.Room != roomID || tok.Skip < 0 {
			return q, mxhttp.InvalidParam("Unknown pagination token")
		}
		if tok.SuggestedOnly != q.suggestedOnly || tok.MaxDepth != q.maxDepth {
			return q, mxhttp.InvalidParam("suggested_only and max_depth cannot change on paginated requests")
		}
		q.skip = tok.Skip
	}
	return q, nil
}

// hierarchy is GET /rooms/{roomId}/hierarchy: 403 M_FORBIDDEN when the
// user may not preview the space (which is also the answer for a room this
// server does not know, as the spec lists it).
func (a *API) hierarchy(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	q, err := parseHierarchyQuery(r, roomID)
	if err != nil {
		return nil, err
	}
	root, found, err := a.loadRoomAccess(ctx, roomID)
	if err != nil {
		return nil, err
	}
	ok := false
	if found {
		if _, ok, err = a.mayPreview(ctx, root, dev.UserID); err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, mxhttp.Forbidden("You are not allowed to view this room.")
	}
	return a.walkHierarchy(ctx, dev.UserID, roomID, q)
}

// walkHierarchy walks the space tree depth first from roomID, as Synapse
// does: a room's children are visited in the spec's order before its
// siblings, each room at most once (which breaks loops), and the children
// of a room the user may not preview are not visited.
func (a *API) walkHierarchy(ctx context.Context, userID, roomID string, q hierarchyQuery) (hierarchyResponse, error) {
	type entry struct {
		roomID string
		depth  int
	}
	resp := hierarchyResponse{Rooms: []hierarchyRoom{}}
	stack := []entry{{roomID, 0}}
	seen := map[string]bool{}
	listed := 0 // rooms listed so far, on earlier pages and this one
	for len(stack) > 0 && len(resp.Rooms) < q.limit {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[e.roomID] {
			continue
		}
		seen[e.roomID] = true
		acc, found, err := a.loadRoomAccess(ctx, e.roomID)
		if err != nil {
			return resp, err
		}
		if !found {
			continue
		}
		if _, ok, err := a.mayPreview(ctx, acc, userID); err != nil || !ok {
			if err != nil {
				return resp, err
			}
			continue
		}
		children := []roomsummary.SpaceChild{}
		if acc.RoomType == "m.space" {
			if children, err = a.summaries().SpaceChildren(ctx, e.roomID, q.suggestedOnly); err != nil {
				return resp, err
			}
		}
		if listed >= q.skip {
			p, err := a.previewRoom(ctx, acc)
			if err != nil {
				return resp, err
			}
			resp.Rooms = append(resp.Rooms, hierarchyRoom{Preview: p, ChildrenState: children})
		}
		listed++
		if e.depth < q.maxDepth {
			// Pushed last first, so that the first child is visited next.
			for _, c := range slices.Backward(children) {
				stack = append(stack, entry{c.StateKey, e.depth + 1})
			}
		}
	}
	if slices.ContainsFunc(stack, func(e entry) bool { return !seen[e.roomID] }) {
		resp.NextBatch = hierarchyToken{Room: roomID, SuggestedOnly: q.suggestedOnly, MaxDepth: q.maxDepth, Skip: listed}.String()
	}
	return resp, nil
}

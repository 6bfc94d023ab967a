package federation

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// Events serves the room history endpoints of the federation API to the
// servers taking part in a room: state and state_ids (spec: "Retrieving
// events"), event, event_auth ("Retrieving event authorisation
// information"), backfill and get_missing_events ("Backfilling and
// retrieving missing events") and timestamp_to_event.
//
// Every endpoint that names a room answers 404 M_NOT_FOUND for a room this
// server does not have, and 403 M_FORBIDDEN when the requesting server is
// denied by the room's m.room.server_acl (spec: "Server Access Control
// Lists") or has no joined user in the room now (as Synapse's
// assert_host_in_room). Events are served as stored, in the room
// version's format; those that history visibility hides from the
// requesting server (event, backfill, get_missing_events) are served
// redacted, as Synapse's filter_events_for_server does.
type Events struct {
	DB         *sql.DB
	ServerName spec.ServerName
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Limits the spec leaves to the server, as Synapse sets them.
const (
	backfillMaxLimit      = 100
	missingEventsDefault  = 10
	missingEventsMaxLimit = 20
	// idsPerQuery bounds the event ids looked up in one statement.
	idsPerQuery = 500
)

// Routes registers the endpoints on r, which must authenticate requests
// (see Authenticator.Router).
func (e *Events) Routes(r *mux.Router) {
	const v1 = "/_matrix/federation/v1"
	r.Handle(v1+"/state/{roomId}", mxhttp.JSON(e.state)).Methods(http.MethodGet)
	r.Handle(v1+"/state_ids/{roomId}", mxhttp.JSON(e.stateIDs)).Methods(http.MethodGet)
	r.Handle(v1+"/event/{eventId}", mxhttp.JSON(e.event)).Methods(http.MethodGet)
	r.Handle(v1+"/event_auth/{roomId}/{eventId}", mxhttp.JSON(e.eventAuth)).Methods(http.MethodGet)
	r.Handle(v1+"/backfill/{roomId}", mxhttp.JSON(e.backfill)).Methods(http.MethodGet)
	r.Handle(v1+"/get_missing_events/{roomId}", mxhttp.JSON(e.missingEvents)).Methods(http.MethodPost)
	r.Handle(v1+"/timestamp_to_event/{roomId}", mxhttp.JSON(e.timestampToEvent)).Methods(http.MethodGet)
}

func (e *Events) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// pduTransaction is the Transaction wrapper of /event and /backfill answers.
type pduTransaction struct {
	Origin         spec.ServerName   `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

// pathRoom checks the room of the path for the requesting server.
func (e *Events) pathRoom(r *http.Request) (sql.RoomInfo, error) {
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return sql.RoomInfo{}, err
	}
	if !strings.HasPrefix(roomID, "!") {
		return sql.RoomInfo{}, mxhttp.InvalidParam("%q is not a room id", roomID)
	}
	return e.enterRoom(r.Context(), roomID, Origin(r.Context()))
}

// enterRoom checks that origin may read roomID's history: the room exists
// here (404 M_NOT_FOUND), its server ACL lets origin in and one of
// origin's users is joined to it now (403 M_FORBIDDEN).
func (e *Events) enterRoom(ctx context.Context, roomID string, origin spec.ServerName) (sql.RoomInfo, error) {
	info, err := e.DB.Room(ctx, roomID)
	if errors.Is(err, sql.ErrNotFound) {
		return info, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return info, mxhttp.Internal(err)
	}
	if origin == "" {
		return info, mxhttp.Forbidden("The request is not authenticated")
	}
	allowed, err := e.aclAllows(ctx, roomID, origin)
	if err != nil {
		return info, mxhttp.Internal(err)
	}
	if !allowed {
		return info, mxhttp.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	joined, err := e.DB.ServerHasMembership(ctx, info.NID, string(origin), spec.Join)
	if err != nil {
		return info, mxhttp.Internal(err)
	}
	if !joined {
		return info, mxhttp.Forbidden("Server %s is not in room %s", origin, roomID)
	}
	return info, nil
}

// aclAllows applies the room's current m.room.server_acl to a server.
func (e *Events) aclAllows(ctx context.Context, roomID string, server spec.ServerName) (bool, error) {
	allows, err := roomACL(ctx, &e.DB.Queries, roomID)
	if err != nil {
		return false, err
	}
	return allows(server), nil
}

// roomACL reads the room's current m.room.server_acl once and returns
// the check of a server against it (m.room.server_acl: the port is
// ignored; an IP literal is denied when allow_ip_literals is false; deny
// wins over allow; no allow entry matching denies). A room without the
// event allows everyone. q may be a transaction's.
func roomACL(ctx context.Context, q *sql.Queries, roomID string) (func(spec.ServerName) bool, error) {
	everyone := func(spec.ServerName) bool { return true }
	ev, err := q.CurrentStateEvent(ctx, roomID, sql.StateKey{Type: "m.room.server_acl"})
	if errors.Is(err, sql.ErrNotFound) {
		return everyone, nil
	}
	if err != nil {
		return nil, err
	}
	var parsed struct {
		Content struct {
			AllowIPLiterals any `json:"allow_ip_literals"`
			Allow           any `json:"allow"`
			Deny            any `json:"deny"`
		} `json:"content"`
	}
	if json.Unmarshal(ev.JSON, &parsed) != nil {
		return everyone, nil // unreadable content is no ACL
	}
	c := parsed.Content
	return func(server spec.ServerName) bool { return aclAllows(c.AllowIPLiterals, c.Allow, c.Deny, server) }, nil
}

// aclAllows is the ACL check on decoded content fields. Entries that are
// not strings match nothing, as in Synapse.
func aclAllows(allowIPLiterals, allow, deny any, server spec.ServerName) bool {
	host, _, ok := spec.ParseAndValidateServerName(server)
	if !ok {
		return false
	}
	if v, isBool := allowIPLiterals.(bool); isBool && !v {
		if net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")) != nil {
			return false
		}
	}
	matches := func(list any) bool {
		entries, _ := list.([]any)
		for _, entry := range entries {
			if p, ok := entry.(string); ok && globMatch(strings.ToLower(p), strings.ToLower(host)) {
				return true
			}
		}
		return false
	}
	return !matches(deny) && matches(allow)
}

// globMatch matches s against a glob where * is any run of characters
// and ? any one character (appendices: "Glob-style matching"), in linear
// time: a * backtracks only to the last star seen.
func globMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// roomEvent loads an event of the room; 404 M_NOT_FOUND when it is not
// stored or belongs to another room.
func (e *Events) roomEvent(ctx context.Context, room sql.RoomInfo, eventID string) (sql.Event, error) {
	ev, err := e.DB.EventByID(ctx, eventID)
	if errors.Is(err, sql.ErrNotFound) || (err == nil && ev.RoomNID != room.NID) {
		return ev, mxhttp.NotFound("Could not find event %s in room %s", eventID, room.RoomID)
	}
	if err != nil {
		return ev, mxhttp.Internal(err)
	}
	return ev, nil
}

// eventsByID loads the stored events among ids that belong to the room,
// in no set order.
func (e *Events) eventsByID(ctx context.Context, roomNID int64, ids []string) ([]sql.Event, error) {
	var out []sql.Event
	for chunk := range slices.Chunk(ids, idsPerQuery) {
		evs, err := e.DB.EventsByID(ctx, chunk)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if ev.RoomNID == roomNID {
				out = append(out, ev)
			}
		}
	}
	return out, nil
}

// stateBefore returns the room state just before an event in the room
// (the state the spec's state and state_ids answer with) and its auth
// chain. 404 M_NOT_FOUND for an unknown event or an outlier, whose state
// this server does not know.
func (e *Events) stateBefore(r *http.Request) (state, chain []sql.Event, err error) {
	ctx := r.Context()
	room, err := e.pathRoom(r)
	if err != nil {
		return nil, nil, err
	}
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, mxhttp.MissingParam("event_id is required")
	}
	ev, err := e.roomEvent(ctx, room, eventID)
	if err != nil {
		return nil, nil, err
	}
	if ev.Outlier {
		return nil, nil, mxhttp.NotFound("The state at event %s is not known", eventID)
	}
	if state, err = e.snapshotEvents(ctx, ev.StateBeforeNID); err != nil {
		return nil, nil, mxhttp.Internal(err)
	}
	if chain, err = e.authChain(ctx, room.NID, state); err != nil {
		return nil, nil, mxhttp.Internal(err)
	}
	return state, chain, nil
}

// snapshotEvents loads the events of a state snapshot, oldest first.
func (e *Events) snapshotEvents(ctx context.Context, snapshot int64) ([]sql.Event, error) {
	state, err := e.DB.SnapshotEvents(ctx, snapshot)
	if err != nil {
		return nil, err
	}
	sortByDepth(state)
	return state, nil
}

// state is GET /state/{roomId}?event_id=…: {pdus, auth_chain}.
func (e *Events) state(r *http.Request) (any, error) {
	state, chain, err := e.stateBefore(r)
	if err != nil {
		return nil, err
	}
	pdus, err := federationPDUs(state)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	auth, err := federationPDUs(chain)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return map[string][]json.RawMessage{"pdus": pdus, "auth_chain": auth}, nil
}

// stateIDs is GET /state_ids/{roomId}?event_id=…: {pdu_ids,
// auth_chain_ids}.
func (e *Events) stateIDs(r *http.Request) (any, error) {
	state, chain, err := e.stateBefore(r)
	if err != nil {
		return nil, err
	}
	return map[string][]string{"pdu_ids": idsOfEvents(state), "auth_chain_ids": idsOfEvents(chain)}, nil
}

// event is GET /event/{eventId}: a transaction holding the event,
// redacted if the requesting server may not see it.
func (e *Events) event(r *http.Request) (any, error) {
	ctx := r.Context()
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	ev, err := e.DB.EventByID(ctx, eventID)
	if errors.Is(err, sql.ErrNotFound) {
		return nil, mxhttp.NotFound("Could not find event %s", eventID)
	}
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if _, err := e.enterRoom(ctx, ev.RoomID, Origin(ctx)); err != nil {
		return nil, err
	}
	pdus, err := e.forServer(ctx, Origin(ctx), []sql.Event{ev})
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return pduTransaction{Origin: e.ServerName, OriginServerTS: e.now().UnixMilli(), PDUs: pdus}, nil
}

// eventAuth is GET /event_auth/{roomId}/{eventId}: the event's auth
// events and theirs, recursively.
func (e *Events) eventAuth(r *http.Request) (any, error) {
	ctx := r.Context()
	room, err := e.pathRoom(r)
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	ev, err := e.roomEvent(ctx, room, eventID)
	if err != nil {
		return nil, err
	}
	chain, err := e.authChain(ctx, room.NID, []sql.Event{ev})
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	pdus, err := federationPDUs(chain)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return map[string][]json.RawMessage{"auth_chain": pdus}, nil
}

// authChain returns the auth chain of events: their auth events and
// theirs, recursively, without the events themselves unless one is
// another's auth event; oldest first. It walks the chain breadth first,
// one query per level.
func (e *Events) authChain(ctx context.Context, roomNID int64, events []sql.Event) ([]sql.Event, error) {
	seen := make(map[string]bool)
	var chain []sql.Event
	for evs := events; len(evs) > 0; {
		// Reading the references of a room's whole state is worth every
		// core.
		auths := make([][]string, len(evs))
		inParallel(len(evs), func(lo, hi int) {
			for i := lo; i < hi; i++ {
				_, auths[i] = eventRefs(evs[i].JSON)
			}
		})
		var next []string
		for _, auth := range auths {
			for _, id := range auth {
				if !seen[id] {
					seen[id] = true
					next = append(next, id)
				}
			}
		}
		if len(next) == 0 {
			break
		}
		var err error
		if evs, err = e.eventsByID(ctx, roomNID, next); err != nil {
			return nil, err
		}
		chain = append(chain, evs...)
	}
	sortByDepth(chain)
	return chain, nil
}

// backfill is GET /backfill/{roomId}?v=…&limit=…: the events given in v
// and those before them, up to limit (at most 100), walking prev_events
// newest first (highest depth, then latest stream position), as
// Synapse's get_backfill_events does. Outliers are not walked into: their
// place in the room's history is unknown. The answer is newest first.
func (e *Events) backfill(r *http.Request) (any, error) {
	ctx := r.Context()
	room, err := e.pathRoom(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	seeds := q["v"]
	if len(seeds) == 0 {
		return nil, mxhttp.MissingParam("v is required")
	}
	rawLimit := q.Get("limit")
	if rawLimit == "" {
		return nil, mxhttp.MissingParam("limit is required")
	}
	limit, err := strconv.Atoi(rawLimit)
	if err != nil || limit < 0 {
		return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	limit = min(limit, backfillMaxLimit)
	evs, err := e.walkBack(ctx, room, seeds, limit)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	pdus, err := e.forServer(ctx, Origin(ctx), evs)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	return pduTransaction{Origin: e.ServerName, OriginServerTS: e.now().UnixMilli(), PDUs: pdus}, nil
}

// walkBack collects up to limit events from the seeds back through
// prev_events, newest first. The room's timeline just below the newest
// seed is read in one query to answer most prev_events lookups, so a
// linear stretch of history costs two queries, not one per event.
func (e *Events) walkBack(ctx context.Context, room sql.RoomInfo, seeds []string, limit int) ([]sql.Event, error) {
	if limit == 0 {
		return nil, nil
	}
	found, err := e.eventsByID(ctx, room.NID, seeds)
	if err != nil || len(found) == 0 {
		return nil, err
	}
	known := make(map[string]sql.Event)
	maxDepth := int64(0)
	for _, ev := range found {
		maxDepth = max(maxDepth, ev.Depth)
	}
	window, err := e.DB.TimelineEvents(ctx, room.NID, sql.TopoStart, sql.TopoPos{Depth: maxDepth, Stream: math.MaxInt64}, true, 2*limit)
	if err != nil {
		return nil, err
	}
	for _, ev := range window {
		known[ev.EventID] = ev
	}
	queue := &eventHeap{}
	queued := make(map[string]bool)
	for _, ev := range found {
		if !queued[ev.EventID] {
			queued[ev.EventID] = true
			heap.Push(queue, ev)
		}
	}
	var out []sql.Event
	for queue.Len() > 0 && len(out) < limit {
		ev := heap.Pop(queue).(sql.Event)
		out = append(out, ev)
		prev, _ := eventRefs(ev.JSON)
		var missing []string
		for _, id := range prev {
			if queued[id] {
				continue
			}
			if _, ok := known[id]; !ok {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			evs, err := e.eventsByID(ctx, room.NID, missing)
			if err != nil {
				return nil, err
			}
			for _, m := range evs {
				known[m.EventID] = m
			}
		}
		for _, id := range prev {
			if p, ok := known[id]; ok && !queued[id] && !p.Outlier {
				queued[id] = true
				heap.Push(queue, p)
			}
		}
	}
	return out, nil
}

// eventHeap pops the newest event first: highest depth, then highest
// stream position.
type eventHeap []sql.Event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	return h[j].Key().Less(h[i].Key())
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(sql.Event)) }
func (h *eventHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// missingEventsRequest is the body of POST /get_missing_events/{roomId}.
type missingEventsRequest struct {
	Limit          *int     `json:"limit"`
	MinDepth       int64    `json:"min_depth"`
	EarliestEvents []string `json:"earliest_events"`
	LatestEvents   []string `json:"latest_events"`
}

// missingEvents is POST /get_missing_events/{roomId}: a breadth-first
// walk of the prev_events of latest_events, skipping earliest_events and
// events below min_depth, up to limit events (default 10, at most 20 as
// in Synapse). The answer is oldest first, approximately.
func (e *Events) missingEvents(r *http.Request) (any, error) {
	ctx := r.Context()
	room, err := e.pathRoom(r)
	if err != nil {
		return nil, err
	}
	var body missingEventsRequest
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.EarliestEvents == nil || body.LatestEvents == nil {
		return nil, mxhttp.BadJSON("earliest_events and latest_events are required")
	}
	limit := missingEventsDefault
	if body.Limit != nil {
		if *body.Limit < 0 {
			return nil, mxhttp.InvalidParam("limit must not be negative")
		}
		limit = min(*body.Limit, missingEventsMaxLimit)
	}
	seen := make(map[string]bool)
	for _, id := range body.EarliestEvents {
		seen[id] = true
	}
	var latest []string
	for _, id := range body.LatestEvents {
		if !seen[id] {
			seen[id] = true
			latest = append(latest, id)
		}
	}
	front, err := e.eventsByID(ctx, room.NID, latest)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	var found []sql.Event
	for len(front) > 0 && len(found) < limit {
		var ids []string
		for _, ev := range front {
			prev, _ := eventRefs(ev.JSON)
			for _, id := range prev {
				if !seen[id] {
					seen[id] = true
					ids = append(ids, id)
				}
			}
		}
		evs, err := e.eventsByID(ctx, room.NID, ids)
		if err != nil {
			return nil, mxhttp.Internal(err)
		}
		// The lookup does not keep the order of ids: put it back, so that
		// which events a limit cuts off does not depend on the engine.
		order := make(map[string]int, len(ids))
		for i, id := range ids {
			order[id] = i
		}
		slices.SortFunc(evs, func(a, b sql.Event) int { return order[a.EventID] - order[b.EventID] })
		front = front[:0:0]
		for _, ev := range evs {
			if ev.Depth < body.MinDepth {
				continue
			}
			front = append(front, ev)
			if len(found) < limit {
				found = append(found, ev)
			}
		}
	}
	slices.Reverse(found)
	pdus, err := e.forServer(ctx, Origin(ctx), found)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	return map[string][]json.RawMessage{"events": pdus}, nil
}

// timestampToEvent is GET /timestamp_to_event/{roomId}?ts=…&dir=f|b: the
// room's timeline event closest to ts at or after it (f) or at or before
// it (b); 404 M_NOT_FOUND when there is none. As in Synapse, the event is
// not filtered for visibility: only its id and timestamp are given.
func (e *Events) timestampToEvent(r *http.Request) (any, error) {
	ctx := r.Context()
	room, err := e.pathRoom(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	rawTS := q.Get("ts")
	if rawTS == "" {
		return nil, mxhttp.MissingParam("ts is required")
	}
	ts, err := strconv.ParseInt(rawTS, 10, 64)
	if err != nil {
		return nil, mxhttp.InvalidParam("ts must be an integer")
	}
	var forward bool
	switch q.Get("dir") {
	case "f":
		forward = true
	case "b":
	case "":
		return nil, mxhttp.MissingParam("dir is required")
	default:
		return nil, mxhttp.InvalidParam("dir must be f or b")
	}
	// The cursor starts just outside ts, so that events at ts itself are
	// found in either direction.
	stream := int64(0)
	if !forward {
		stream = math.MaxInt64
	}
	evs, err := e.DB.TimelineByTimestamp(ctx, room.NID, ts, stream, forward, 1)
	if err != nil {
		return nil, mxhttp.Internal(err)
	}
	if len(evs) == 0 {
		dir := "forward"
		if !forward {
			dir = "backward"
		}
		return nil, mxhttp.NotFound("Unable to find event from %d in %s direction", ts, dir)
	}
	return map[string]any{"event_id": evs[0].EventID, "origin_server_ts": evs[0].OriginServerTS}, nil
}

// History visibility settings (spec: "History visibility"), most
// permissive first.
var visibilityRank = map[string]int{"world_readable": 0, "shared": 1, "invited": 2, "joined": 3}

// knownVisibility maps a missing or unknown setting to shared (spec:
// "if no history_visibility is set, or if the value is not understood,
// the visibility is assumed to be shared").
func knownVisibility(v string) string {
	if _, ok := visibilityRank[v]; !ok {
		return "shared"
	}
	return v
}

// snapshotView is what decides a server's view of the events that follow
// one state snapshot: the history visibility then, and the memberships
// its users had then.
type snapshotView struct {
	visibility  string
	memberships []string
}

// forServer returns events in federation format for server, redacting
// those it may not see. The spec's history visibility rules apply to the
// server as a whole, as in Synapse's filter_events_for_server: a
// world_readable or shared event is visible (the server is in the room
// now, or it could not ask); an invited one if one of its users was
// invited or joined at the event; a joined one if one was joined. "At the
// event" is the state before it, except that a history_visibility event
// counts with the more permissive of its old and new settings, and a
// membership event of the server's user counts with the new membership
// too (the spec's "before or after" for users).
func (e *Events) forServer(ctx context.Context, server spec.ServerName, evs []sql.Event) ([]json.RawMessage, error) {
	views := make(map[int64]*snapshotView)
	suffix := ":" + string(server)
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		v, ok := views[ev.StateBeforeNID]
		if !ok {
			var err error
			if v, err = e.snapshotView(ctx, ev.StateBeforeNID, server); err != nil {
				return nil, err
			}
			views[ev.StateBeforeNID] = v
		}
		vis := v.visibility
		memberships := v.memberships
		if ev.StateKey != nil {
			switch {
			case ev.Type == spec.MRoomHistoryVisibility && *ev.StateKey == "":
				if after := knownVisibility(contentString(ev.JSON, "history_visibility")); visibilityRank[after] < visibilityRank[vis] {
					vis = after
				}
			case ev.Type == spec.MRoomMember && strings.HasSuffix(*ev.StateKey, suffix):
				memberships = append(slices.Clip(memberships), contentString(ev.JSON, "membership"))
			}
		}
		js := ev.JSON
		if !visibleWith(vis, memberships) {
			verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(ev.RoomVersion))
			if err != nil {
				return nil, err
			}
			if js, err = verImpl.RedactEventJSON(js); err != nil {
				return nil, err
			}
		}
		pdu, err := federationJSON(js)
		if err != nil {
			return nil, err
		}
		out = append(out, pdu)
	}
	return out, nil
}

// visibleWith applies the rules to a server whose users had memberships.
func visibleWith(vis string, memberships []string) bool {
	if vis == "world_readable" || vis == "shared" {
		return true
	}
	for _, m := range memberships {
		if m == spec.Join || (m == spec.Invite && vis == "invited") {
			return true
		}
	}
	return false
}

// snapshotView reads a snapshot's history visibility and, when it
// depends on membership, the memberships of server's users in it.
func (e *Events) snapshotView(ctx context.Context, snapshot int64, server spec.ServerName) (*snapshotView, error) {
	v := &snapshotView{visibility: "shared"}
	nid, err := e.DB.SnapshotKey(ctx, snapshot, sql.StateKey{Type: spec.MRoomHistoryVisibility})
	if err != nil {
		return nil, err
	}
	if nid != 0 {
		evs, err := e.DB.EventsByNID(ctx, []int64{nid})
		if err != nil {
			return nil, err
		}
		if len(evs) == 1 {
			v.visibility = knownVisibility(contentString(evs[0].JSON, "history_visibility"))
		}
	}
	if v.visibility == "world_readable" || v.visibility == "shared" {
		return v, nil
	}
	members, err := e.DB.SnapshotServerMembers(ctx, snapshot, string(server))
	if err != nil {
		return nil, err
	}
	nids := make([]int64, 0, len(members))
	for _, n := range members {
		nids = append(nids, n)
	}
	for chunk := range slices.Chunk(nids, idsPerQuery) {
		evs, err := e.DB.EventsByNID(ctx, chunk)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			v.memberships = append(v.memberships, contentString(ev.JSON, "membership"))
		}
	}
	return v, nil
}

// contentString reads a string field of an event's content ("" when
// absent or not a string).
func contentString(eventJSON []byte, field string) string {
	var ev struct {
		Content map[string]json.RawMessage `json:"content"`
	}
	if json.Unmarshal(eventJSON, &ev) != nil {
		return ""
	}
	var s string
	_ = json.Unmarshal(ev.Content[field], &s)
	return s
}

// eventRefs reads an event's prev_events and auth_events in either
// format: [event id, hashes] pairs (room versions 1 and 2) or event ids.
func eventRefs(eventJSON []byte) (prev, auth []string) {
	var ev struct {
		Prev []json.RawMessage `json:"prev_events"`
		Auth []json.RawMessage `json:"auth_events"`
	}
	if json.Unmarshal(eventJSON, &ev) != nil {
		return nil, nil
	}
	ids := func(refs []json.RawMessage) []string {
		out := make([]string, 0, len(refs))
		for _, raw := range refs {
			var id string
			if json.Unmarshal(raw, &id) == nil {
				out = append(out, id)
				continue
			}
			var pair []json.RawMessage
			if json.Unmarshal(raw, &pair) == nil && len(pair) > 0 && json.Unmarshal(pair[0], &id) == nil {
				out = append(out, id)
			}
		}
		return out
	}
	return ids(ev.Prev), ids(ev.Auth)
}

// federationPDUs is federationJSON of each event.
func federationPDUs(evs []sql.Event) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		pdu, err := federationJSON(ev.JSON)
		if err != nil {
			return nil, err
		}
		out = append(out, pdu)
	}
	return out, nil
}

// federationJSON is a stored event as other servers get it: the PDU as
// signed, without the unsigned data this server added, except the
// stripped room state of invites and knocks that travels with them (as
// Synapse keeps it).
func federationJSON(eventJSON []byte) (json.RawMessage, error) {
	if !bytes.Contains(eventJSON, []byte(`"unsigned"`)) {
		return eventJSON, nil
	}
	var ev map[string]json.RawMessage
	if err := json.Unmarshal(eventJSON, &ev); err != nil {
		return nil, err
	}
	var unsigned map[string]json.RawMessage
	_ = json.Unmarshal(ev["unsigned"], &unsigned)
	kept := make(map[string]json.RawMessage)
	for _, k := range []string{"invite_room_state", "knock_room_state"} {
		if v, ok := unsigned[k]; ok {
			kept[k] = v
		}
	}
	delete(ev, "unsigned")
	if len(kept) > 0 {
		raw, err := json.Marshal(kept)
		if err != nil {
			return nil, err
		}
		ev["unsigned"] = raw
	}
	return json.Marshal(ev)
}

func idsOfEvents(evs []sql.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID
	}
	return out
}

// sortByDepth orders events oldest first: by depth, then stream position,
// then event id (outliers have no stream position).
func sortByDepth(evs []sql.Event) {
	slices.SortFunc(evs, func(a, b sql.Event) int {
		switch {
		case a.Key().Less(b.Key()):
			return -1
		case b.Key().Less(a.Key()):
			return 1
		}
		return strings.Compare(a.EventID, b.EventID)
	})
}

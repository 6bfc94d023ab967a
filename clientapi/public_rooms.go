package clientapi

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// publicRoom is one entry of the published room directory
// (PublishedRoomsChunk in list_public_rooms.yaml).
type publicRoom struct {
	RoomID           string  `json:"room_id"`
	NumJoinedMembers int     `json:"num_joined_members"`
	WorldReadable    bool    `json:"world_readable"`
	GuestCanJoin     bool    `json:"guest_can_join"`
	Name             string  `json:"name,omitempty"`
	Topic            string  `json:"topic,omitempty"`
	AvatarURL        string  `json:"avatar_url,omitempty"`
	CanonicalAlias   string  `json:"canonical_alias,omitempty"`
	JoinRule         string  `json:"join_rule,omitempty"`
	RoomType         *string `json:"room_type,omitempty"`
}

type publicRoomsResponse struct {
	Chunk     []publicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	// As in Synapse: the rooms listed with the room_types filter applied,
	// before the search term.
	TotalRoomCountEstimate int `json:"total_room_count_estimate"`
}

// publicRoomsQuery is what both forms of /publicRooms ask.
type publicRoomsQuery struct {
	limit      int // 0: no limit (Synapse)
	since      string
	search     string
	roomTypes  []*string // nil entry: rooms without a type; empty: any type
	noNetworks bool      // a third-party network was asked for: none exist
}

// publicRoomsGET is GET /publicRooms. The spec gives it no security, so
// it answers without an access token; a token that is sent must be valid.
func (d *directory) publicRoomsGET(r *http.Request) (any, error) {
	if token, ok := userapi.AccessTokenFrom(r); ok {
		if _, err := d.users.Authenticate(r.Context(), token); err != nil {
			return nil, err
		}
	}
	if err := d.checkDirectoryServer(r); err != nil {
		return nil, err
	}
	q := publicRoomsQuery{since: r.URL.Query().Get("since")}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		q.limit = n
	}
	return d.listPublicRooms(r.Context(), q)
}

// publicRoomsPOST is POST /publicRooms, with a filter. Guests may use it,
// as in Synapse.
func (d *directory) publicRoomsPOST(r *http.Request, _ *userapi.Device) (any, error) {
	if err := d.checkDirectoryServer(r); err != nil {
		return nil, err
	}
	var body struct {
		Limit  *int    `json:"limit"`
		Since  *string `json:"since"`
		Filter *struct {
			GenericSearchTerm *string   `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool    `json:"include_all_networks"`
		ThirdPartyInstanceID *string `json:"third_party_instance_id"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	var q publicRoomsQuery
	if body.Limit != nil {
		if *body.Limit < 0 {
			return nil, mxhttp.InvalidParam("limit must not be negative")
		}
		q.limit = *body.Limit
	}
	if body.Since != nil {
		q.since = *body.Since
	}
	if f := body.Filter; f != nil {
		if f.GenericSearchTerm != nil {
			q.search = strings.ToLower(strings.TrimSpace(*f.GenericSearchTerm))
		}
		q.roomTypes = f.RoomTypes
	}
	if body.ThirdPartyInstanceID != nil {
		if body.IncludeAllNetworks {
			return nil, mxhttp.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
		}
		// A list of an application service's network: no application
		// service has published one here.
		q.noNetworks = true
	}
	return d.listPublicRooms(r.Context(), q)
}

// checkDirectoryServer answers the server query parameter: this server's
// directory, or 404 for another's until federation can fetch it.
func (d *directory) checkDirectoryServer(r *http.Request) error {
	server := r.URL.Query().Get("server")
	if server == "" || server == d.users.ServerName() {
		return nil
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return mxhttp.InvalidParam("%q is not a valid server name", server)
	}
	return mxhttp.NotFound("Fetching the room directory of %s is not supported yet: this server only lists its own", server)
}

// listPublicRooms pages through the published rooms: most joined members
// first, then by room id. A since token is the (members, room id) key of
// the room it continues from and the direction (keyset paging), never an
// offset, so rooms published or unpublished between pages shift nothing,
// and a room whose member count does not change between pages is listed
// exactly once; a room whose count changes may move across the key, as in
// Synapse.
func (d *directory) listPublicRooms(ctx context.Context, q publicRoomsQuery) (any, error) {
	resp := publicRoomsResponse{Chunk: []publicRoom{}}
	var key roomListKey
	if q.since != "" {
		var ok bool
		if key, ok = parseRoomListToken(q.since); !ok {
			return nil, mxhttp.InvalidParam("Invalid since token")
		}
	}
	if q.noNetworks {
		return resp, nil
	}
	published, err := d.db.PublishedRooms(ctx)
	if err != nil {
		return nil, err
	}
	summaries, err := d.summaries.get(ctx, published, d.loadSummary)
	if err != nil {
		return nil, err
	}
	var rooms []publicRoom
	for _, s := range summaries {
		if !s.listed || !typeMatches(s.room.RoomType, q.roomTypes) {
			continue
		}
		resp.TotalRoomCountEstimate++
		if q.search == "" || s.matches(q.search) {
			rooms = append(rooms, s.room)
		}
	}
	slices.SortFunc(rooms, func(a, b publicRoom) int { return roomListKeyOf(a).compare(roomListKeyOf(b)) })

	start, end := 0, len(rooms)
	switch {
	case q.since == "":
	case key.forward:
		start, _ = slices.BinarySearchFunc(rooms, key, keyAfter)
	default:
		end, _ = slices.BinarySearchFunc(rooms, key, keyAtOrAfter)
	}
	if q.limit > 0 && end-start > q.limit {
		if q.since != "" && !key.forward {
			start = end - q.limit
		} else {
			end = start + q.limit
		}
	}
	if start >= end {
		return resp, nil
	}
	resp.Chunk = rooms[start:end]
	if start > 0 {
		resp.PrevBatch = roomListKeyOf(rooms[start]).token(false)
	}
	if end < len(rooms) {
		resp.NextBatch = roomListKeyOf(rooms[end-1]).token(true)
	}
	return resp, nil
}

// typeMatches applies the room_types filter: nil in the list stands for
// rooms without a type; an empty list lets every room through.
func typeMatches(roomType *string, want []*string) bool {
	if len(want) == 0 {
		return true
	}
	for _, w := range want {
		if (w == nil && roomType == nil) || (w != nil && roomType != nil && *w == *roomType) {
			return true
		}
	}
	return false
}

// roomListKey is a position in the directory's order; with a direction it
// is a since token.
type roomListKey struct {
	members int
	roomID  string
	forward bool
}

func roomListKeyOf(r publicRoom) roomListKey {
	return roomListKey{members: r.NumJoinedMembers, roomID: r.RoomID}
}

// compare orders keys as the directory lists them: more members first,
// then room id.
func (k roomListKey) compare(o roomListKey) int {
	if c := cmp.Compare(o.members, k.members); c != 0 {
		return c
	}
	return strings.Compare(k.roomID, o.roomID)
}

// keyAfter and keyAtOrAfter are search functions that find, in a sorted
// list, the first room after the key and the first room not before it.
func keyAfter(r publicRoom, k roomListKey) int {
	if roomListKeyOf(r).compare(k) <= 0 {
		return -1
	}
	return 1
}

func keyAtOrAfter(r publicRoom, k roomListKey) int {
	if roomListKeyOf(r).compare(k) < 0 {
		return -1
	}
	return 1
}

// token encodes the key: "f" (the rooms after it) or "b" (the rooms
// before it), the member count and the room id, opaque to clients.
func (k roomListKey) token(forward bool) string {
	dir := "b"
	if forward {
		dir = "f"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(dir + strconv.Itoa(k.members) + ":" + k.roomID))
}

func parseRoomListToken(tok string) (roomListKey, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) < 2 || (raw[0] != 'f' && raw[0] != 'b') {
		return roomListKey{}, false
	}
	count, roomID, ok := strings.Cut(string(raw[1:]), ":")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 0 || !strings.HasPrefix(roomID, "!") {
		return roomListKey{}, false
	}
	return roomListKey{members: n, roomID: roomID, forward: raw[0] == 'f'}, true
}

// roomSummary is what the directory shows of a room, read at a stream
// position of the room.
type roomSummary struct {
	pos  int64
	room publicRoom
	// listed: the room may appear at all. Like Synapse, the directory
	// leaves out rooms nobody is joined to and rooms that are neither
	// joinable by request (public, knock, knock_restricted) nor
	// world_readable, whatever their visibility: the spec allows it.
	listed bool
}

// matches is the generic_search_term filter: the lower-cased term in the
// name, topic or canonical alias, as in Synapse.
func (s roomSummary) matches(term string) bool {
	for _, f := range []string{s.room.Name, s.room.Topic, s.room.CanonicalAlias} {
		if strings.Contains(strings.ToLower(f), term) {
			return true
		}
	}
	return false
}

// summaryCache keeps the summary of each published room. Every event a
// room commits moves its last_stream_pos, so a summary read at the room's
// current position is current: a listing reads the positions (one query)
// and only rooms that changed since.
type summaryCache struct {
	mu sync.Mutex
	m  map[string]roomSummary
}

// summaryLoaders bounds the rooms loaded at once for one listing.
const summaryLoaders = 8

// get returns the summaries of the published rooms, loading the ones the
// cache lacks or holds at an older position, and forgets rooms no longer
// published.
func (c *summaryCache) get(ctx context.Context, published []sql.PublishedRoom,
	load func(context.Context, string) (roomSummary, error)) ([]roomSummary, error) {
	out := make([]roomSummary, len(published))
	var stale []int
	c.mu.Lock()
	for i, p := range published {
		if s, ok := c.m[p.RoomID]; ok && s.pos == p.LastStreamPos {
			out[i] = s
		} else {
			stale = append(stale, i)
		}
	}
	c.mu.Unlock()

	errs := make([]error, len(stale))
	sem := make(chan struct{}, summaryLoaders)
	var wg sync.WaitGroup
	for j, i := range stale {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// The position is read before the state, so the summary is at
			// least as new as the position it is cached under.
			s, err := load(ctx, published[i].RoomID)
			s.pos = published[i].LastStreamPos
			out[i], errs[j] = s, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range stale {
		if cur, ok := c.m[out[i].room.RoomID]; !ok || cur.pos <= out[i].pos {
			c.m[out[i].room.RoomID] = out[i]
		}
	}
	if len(c.m) > len(published) {
		keep := make(map[string]bool, len(published))
		for _, p := range published {
			keep[p.RoomID] = true
		}
		for id := range c.m {
			if !keep[id] {
				delete(c.m, id)
			}
		}
	}
	return out, nil
}

// loadSummary reads a room's directory entry from its current state and
// joined member count.
func (d *directory) loadSummary(ctx context.Context, roomID string) (roomSummary, error) {
	s := roomSummary{room: publicRoom{RoomID: roomID}}
	n, err := d.db.JoinedMemberCount(ctx, roomID)
	if err != nil {
		return s, err
	}
	s.room.NumJoinedMembers = n
	for _, typ := range []string{"m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", spec.MRoomCanonicalAlias,
		"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access"} {
		ev, err := d.rooms.CurrentStateEvent(ctx, roomID, typ, "")
		if err != nil {
			return s, err
		}
		if ev == nil {
			continue
		}
		var content map[string]json.RawMessage
		if json.Unmarshal(ev.Content(), &content) != nil {
			continue
		}
		// A field of the wrong type reads as unset.
		str := func(k string) string {
			var v string
			_ = json.Unmarshal(content[k], &v)
			return v
		}
		switch typ {
		case "m.room.create":
			var t string
			if raw, ok := content["type"]; ok && json.Unmarshal(raw, &t) == nil {
				s.room.RoomType = &t
			}
		case "m.room.name":
			s.room.Name = str("name")
		case "m.room.topic":
			// The topic property is the plain text; empty means no topic
			// (m.room.topic), whatever m.topic holds.
			s.room.Topic = str("topic")
		case "m.room.avatar":
			s.room.AvatarURL = str("url")
		case spec.MRoomCanonicalAlias:
			s.room.CanonicalAlias = str("alias")
		case "m.room.join_rules":
			s.room.JoinRule = str("join_rule")
		case "m.room.history_visibility":
			s.room.WorldReadable = str("history_visibility") == "world_readable"
		case "m.room.guest_access":
			s.room.GuestCanJoin = str("guest_access") == "can_join"
		}
	}
	switch s.room.JoinRule {
	case "public", "knock", "knock_restricted":
		s.listed = true
	}
	s.listed = (s.listed || s.room.WorldReadable) && s.room.NumJoinedMembers > 0
	return s, nil
}

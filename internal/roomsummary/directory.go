package roomsummary

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// PublicRoom is one entry of the published room directory
// (PublishedRoomsChunk in list_public_rooms.yaml).
type PublicRoom struct {
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

// PublicRooms is a page of the directory (public_rooms_response.yaml).
type PublicRooms struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	// As in Synapse: the rooms listed with the room_types filter applied,
	// before the search term.
	TotalRoomCountEstimate int `json:"total_room_count_estimate"`
}

// DirectoryQuery is what both forms of /publicRooms ask, in both APIs.
type DirectoryQuery struct {
	Limit     int // 0: no limit (Synapse)
	Since     string
	Search    string    // lower-cased, trimmed generic_search_term
	RoomTypes []*string // nil entry: rooms without a type; empty: any type
	// NoNetworks: a third-party network was asked for, and none exist.
	NoNetworks bool
	// Federated leaves out rooms whose m.room.create says m.federate
	// false, for another server's request (Synapse's from_federation).
	Federated bool
}

// Directory lists the published rooms, keeping the summary of each.
type Directory struct {
	reader *Reader
	cache  summaryCache
}

// NewDirectory makes a directory listing reading rooms through r.
func NewDirectory(r *Reader) *Directory {
	return &Directory{reader: r, cache: summaryCache{m: make(map[string]roomSummary)}}
}

// List pages through the published rooms: most joined members first, then
// by room id. A since token is the (members, room id) key of the room it
// continues from and the direction (keyset paging), never an offset, so
// rooms published or unpublished between pages shift nothing, and a room
// whose member count does not change between pages is listed exactly
// once; a room whose count changes may move across the key, as in
// Synapse. 400 M_INVALID_PARAM for a since token it did not make.
func (d *Directory) List(ctx context.Context, q DirectoryQuery) (PublicRooms, error) {
	resp := PublicRooms{Chunk: []PublicRoom{}}
	var key roomListKey
	if q.Since != "" {
		var ok bool
		if key, ok = parseRoomListToken(q.Since); !ok {
			return resp, mxhttp.InvalidParam("Invalid since token")
		}
	}
	if q.NoNetworks {
		return resp, nil
	}
	published, err := d.reader.DB.PublishedRooms(ctx)
	if err != nil {
		return resp, err
	}
	summaries, err := d.cache.get(ctx, published, d.loadSummary)
	if err != nil {
		return resp, err
	}
	var rooms []PublicRoom
	for _, s := range summaries {
		if !s.listed || (q.Federated && !s.federate) || !typeMatches(s.room.RoomType, q.RoomTypes) {
			continue
		}
		resp.TotalRoomCountEstimate++
		if q.Search == "" || s.matches(q.Search) {
			rooms = append(rooms, s.room)
		}
	}
	slices.SortFunc(rooms, func(a, b PublicRoom) int { return roomListKeyOf(a).compare(roomListKeyOf(b)) })

	start, end := 0, len(rooms)
	switch {
	case q.Since == "":
	case key.forward:
		start, _ = slices.BinarySearchFunc(rooms, key, keyAfter)
	default:
		end, _ = slices.BinarySearchFunc(rooms, key, keyAtOrAfter)
	}
	if q.Limit > 0 && end-start > q.Limit {
		if q.Since != "" && !key.forward {
			start = end - q.Limit
		} else {
			end = start + q.Limit
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

func roomListKeyOf(r PublicRoom) roomListKey {
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
func keyAfter(r PublicRoom, k roomListKey) int {
	if roomListKeyOf(r).compare(k) <= 0 {
		return -1
	}
	return 1
}

func keyAtOrAfter(r PublicRoom, k roomListKey) int {
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
	room PublicRoom
	// listed: the room may appear at all. Like Synapse, the directory
	// leaves out rooms nobody is joined to and rooms that are neither
	// joinable by request (public, knock, knock_restricted) nor
	// world_readable, whatever their visibility: the spec allows it.
	listed bool
	// federate is m.room.create's m.federate (true when unset).
	federate bool
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
func (d *Directory) loadSummary(ctx context.Context, roomID string) (roomSummary, error) {
	s := roomSummary{room: PublicRoom{RoomID: roomID}, federate: true}
	n, err := d.reader.DB.JoinedMemberCount(ctx, roomID)
	if err != nil {
		return s, err
	}
	s.room.NumJoinedMembers = n
	for _, typ := range []string{"m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", spec.MRoomCanonicalAlias,
		"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access"} {
		ev, err := d.reader.Rooms.CurrentStateEvent(ctx, roomID, typ, "")
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
			// Only a boolean false stops federation (m.room.create).
			var federate bool
			if raw, ok := content["m.federate"]; ok && json.Unmarshal(raw, &federate) == nil && !federate {
				s.federate = false
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

// DirectoryRequest is the body of POST /publicRooms, in the client API
// and the federation API alike.
type DirectoryRequest struct {
	Limit  *int    `json:"limit"`
	Since  *string `json:"since"`
	Filter *struct {
		GenericSearchTerm *string   `json:"generic_search_term"`
		RoomTypes         []*string `json:"room_types"`
	} `json:"filter"`
	IncludeAllNetworks   bool    `json:"include_all_networks"`
	ThirdPartyInstanceID *string `json:"third_party_instance_id"`
}

// Query checks the request and turns it into a query: 400
// M_INVALID_PARAM for a negative limit, or a third_party_instance_id
// with include_all_networks (as Synapse).
func (b DirectoryRequest) Query() (DirectoryQuery, error) {
	var q DirectoryQuery
	if b.Limit != nil {
		if *b.Limit < 0 {
			return q, mxhttp.InvalidParam("limit must not be negative")
		}
		q.Limit = *b.Limit
	}
	if b.Since != nil {
		q.Since = *b.Since
	}
	if f := b.Filter; f != nil {
		if f.GenericSearchTerm != nil {
			q.Search = strings.ToLower(strings.TrimSpace(*f.GenericSearchTerm))
		}
		q.RoomTypes = f.RoomTypes
	}
	if b.ThirdPartyInstanceID != nil {
		if b.IncludeAllNetworks {
			return q, mxhttp.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
		}
		// A list of an application service's network: no application
		// service has published one here.
		q.NoNetworks = true
	}
	return q, nil
}

package clientapi_test

import (
	"cmp"
	"context"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/sql/sqltest"
)

// listedRoom is a room the directory should list, with its member count.
type listedRoom struct {
	id      id.RoomID
	members int
}

// directoryOrder sorts rooms as the directory lists them: most joined
// members first, then by room id.
func directoryOrder(rooms []listedRoom) []id.RoomID {
	rooms = slices.Clone(rooms)
	slices.SortFunc(rooms, func(a, b listedRoom) int {
		if c := cmp.Compare(b.members, a.members); c != 0 {
			return c
		}
		return strings.Compare(string(a.id), string(b.id))
	})
	out := make([]id.RoomID, len(rooms))
	for i, r := range rooms {
		out[i] = r.id
	}
	return out
}

// publicRoomsPage is one answer of /publicRooms.
type publicRoomsPage struct {
	Chunk []struct {
		RoomID           id.RoomID `json:"room_id"`
		NumJoinedMembers int       `json:"num_joined_members"`
		WorldReadable    *bool     `json:"world_readable"`
		GuestCanJoin     *bool     `json:"guest_can_join"`
		Name             string    `json:"name"`
		Topic            string    `json:"topic"`
		AvatarURL        string    `json:"avatar_url"`
		CanonicalAlias   string    `json:"canonical_alias"`
		JoinRule         string    `json:"join_rule"`
		RoomType         *string   `json:"room_type"`
	} `json:"chunk"`
	NextBatch  *string `json:"next_batch"`
	PrevBatch  *string `json:"prev_batch"`
	TotalCount *int    `json:"total_room_count_estimate"`
}

func (p publicRoomsPage) ids() []id.RoomID {
	out := make([]id.RoomID, len(p.Chunk))
	for i, c := range p.Chunk {
		out[i] = c.RoomID
	}
	return out
}

// publicRooms fetches one page with GET (body nil) or POST (body set).
func (e dirEnv) publicRooms(token string, limit int, since string, body map[string]any) publicRoomsPage {
	e.t.Helper()
	var page publicRoomsPage
	if body == nil {
		q := url.Values{}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		if since != "" {
			q.Set("since", since)
		}
		e.hs.do("GET", "/publicRooms?"+q.Encode(), token, nil).expect(e.t, 200).JSON(e.t, &page)
	} else {
		b := map[string]any{}
		for k, v := range body {
			b[k] = v
		}
		if limit > 0 {
			b["limit"] = limit
		}
		if since != "" {
			b["since"] = since
		}
		e.hs.do("POST", "/publicRooms", token, b).expect(e.t, 200).JSON(e.t, &page)
	}
	if page.TotalCount == nil {
		e.t.Fatalf("no total_room_count_estimate")
	}
	return page
}

// pageThrough follows next_batch from the start, then prev_batch back from
// the last page, checking that both directions list want exactly once, in
// order, in pages of limit rooms, with the tokens present exactly where
// there are rooms beyond the page.
func (e dirEnv) pageThrough(token string, limit int, body map[string]any, want []id.RoomID, wantTotal int) {
	t := e.t
	t.Helper()
	var got []id.RoomID
	var pages []publicRoomsPage
	since := ""
	for len(pages) <= len(want)+1 {
		p := e.publicRooms(token, limit, since, body)
		if *p.TotalCount != wantTotal {
			t.Fatalf("limit %d page %d: total_room_count_estimate %d, want %d", limit, len(pages), *p.TotalCount, wantTotal)
		}
		if (p.PrevBatch != nil) != (len(pages) > 0) {
			t.Fatalf("limit %d page %d: prev_batch %v", limit, len(pages), p.PrevBatch)
		}
		got = append(got, p.ids()...)
		pages = append(pages, p)
		if p.NextBatch == nil {
			break
		}
		if len(p.Chunk) != limit {
			t.Fatalf("limit %d page %d: %d rooms before the last page", limit, len(pages)-1, len(p.Chunk))
		}
		since = *p.NextBatch
	}
	if !slices.Equal(got, want) {
		t.Fatalf("limit %d forward: got %v\nwant %v", limit, got, want)
	}
	if want := max(1, (len(want)+limit-1)/limit); len(pages) != want {
		t.Fatalf("limit %d: %d pages, want %d", limit, len(pages), want)
	}
	// Backwards from the last page: the same pages, in reverse.
	back := pages[len(pages)-1].ids()
	for i := len(pages) - 1; pages[i].PrevBatch != nil; i-- {
		p := e.publicRooms(token, limit, *pages[i].PrevBatch, body)
		if !slices.Equal(p.ids(), pages[i-1].ids()) {
			t.Fatalf("limit %d: backwards page %d = %v, want %v", limit, i-1, p.ids(), pages[i-1].ids())
		}
		if (p.PrevBatch != nil) != (i-1 > 0) || p.NextBatch == nil {
			t.Fatalf("limit %d: backwards page %d tokens prev %v next %v", limit, i-1, p.PrevBatch, p.NextBatch)
		}
		pages[i-1] = p
		back = append(p.ids(), back...)
	}
	if !slices.Equal(back, want) {
		t.Fatalf("limit %d backward: got %v\nwant %v", limit, back, want)
	}
}

// TestPublicRoomsPaging publishes 23 rooms with member counts from 1 to 5
// (many ties) and pages through them with every limit from 1 to 23, both
// ways, with GET and POST; rooms the directory must leave out are mixed in.
// Then rooms are published and unpublished between pages: the others are
// still listed exactly once.
func TestPublicRoomsPaging(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			ctx := context.Background()
			alice := e.user("alice")
			others := []*mautrix.Client{e.user("u1"), e.user("u2"), e.user("u3"), e.user("u4")}
			publish := func(members int) id.RoomID {
				room := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public"})
				for _, u := range others[:members-1] {
					e.join(u, room)
				}
				return room
			}
			const n = 23
			var rooms []listedRoom
			for i := range n {
				members := 1 + (i*3)%5
				rooms = append(rooms, listedRoom{publish(members), members})
			}
			// Left out: an unpublished room, a published invite-only room
			// (Synapse lists only rooms one can join or read), and a
			// published room nobody is joined to any more.
			e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Visibility: "public"})
			empty := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public"})
			if _, err := alice.LeaveRoom(ctx, empty); err != nil {
				t.Fatal(err)
			}
			want := directoryOrder(rooms)

			// Everything at once: no limit, a limit of 0, a limit past the end.
			for _, limit := range []int{0, n, n + 5} {
				p := e.publicRooms("", limit, "", nil)
				if !slices.Equal(p.ids(), want) || p.NextBatch != nil || p.PrevBatch != nil || *p.TotalCount != n {
					t.Fatalf("limit %d: %v next %v prev %v total %d\nwant %v", limit, p.ids(), p.NextBatch, p.PrevBatch, *p.TotalCount, want)
				}
				for i, c := range p.Chunk {
					if c.NumJoinedMembers != rooms[slices.IndexFunc(rooms, func(r listedRoom) bool { return r.id == c.RoomID })].members {
						t.Fatalf("room %d %s: num_joined_members %d", i, c.RoomID, c.NumJoinedMembers)
					}
				}
			}
			for limit := 1; limit <= n; limit++ {
				e.pageThrough("", limit, nil, want, n)
			}
			for _, limit := range []int{1, 4, 7} {
				e.pageThrough(alice.AccessToken, limit, map[string]any{"filter": map[string]any{}}, want, n)
			}

			// Changes between pages. Keyset tokens keep every room that
			// stays put exactly once: a room published ahead of the
			// position is not listed, an unpublished one disappears,
			// nothing is repeated or skipped.
			first := e.publicRooms("", 5, "", nil)
			big := publish(5)
			gone := want[12]
			e.hs.do("PUT", "/directory/list/room/"+url.PathEscape(string(gone)), alice.AccessToken,
				map[string]any{"visibility": "private"}).expect(t, 200)
			got := first.ids()
			for since := first.NextBatch; since != nil; {
				p := e.publicRooms("", 5, *since, nil)
				got = append(got, p.ids()...)
				since = p.NextBatch
			}
			wantAfter := slices.DeleteFunc(slices.Clone(want), func(r id.RoomID) bool { return r == gone })
			if !slices.Equal(got, wantAfter) {
				t.Fatalf("paging across changes: got %v\nwant %v", got, wantAfter)
			}
			// A fresh listing has them both right.
			rooms = append(slices.DeleteFunc(rooms, func(r listedRoom) bool { return r.id == gone }), listedRoom{big, 5})
			if p := e.publicRooms("", 0, "", nil); !slices.Equal(p.ids(), directoryOrder(rooms)) || *p.TotalCount != n {
				t.Fatalf("fresh listing after the changes: %v total %d\nwant %v", p.ids(), *p.TotalCount, directoryOrder(rooms))
			}
		})
	}
}

// TestPublicRoomsFilter covers generic_search_term (case-insensitive, in
// name, topic and canonical alias), room_types, and the fields of each
// entry.
func TestPublicRoomsFilter(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			ctx := context.Background()
			alice, bob := e.user("alice"), e.user("bob")
			create := func(req *mautrix.ReqCreateRoom) id.RoomID {
				req.Preset, req.Visibility = "public_chat", "public"
				return e.createRoom(alice, req)
			}
			named := create(&mautrix.ReqCreateRoom{Name: "Cheese Lovers"})
			topical := create(&mautrix.ReqCreateRoom{Topic: "All about CHEESE and wine"})
			aliased := create(&mautrix.ReqCreateRoom{})
			fromage := e.alias("Fromage")
			if _, err := alice.CreateAlias(ctx, id.RoomAlias(fromage), aliased); err != nil {
				t.Fatal(err)
			}
			if _, err := alice.SendStateEvent(ctx, aliased, event.StateCanonicalAlias, "", map[string]any{"alias": fromage}); err != nil {
				t.Fatal(err)
			}
			wine := create(&mautrix.ReqCreateRoom{Name: "Wine only", Topic: "no dairy"})
			space := create(&mautrix.ReqCreateRoom{Name: "cheese space", CreationContent: map[string]any{"type": "m.space"}})
			e.join(bob, wine)

			search := func(term string, types []any) publicRoomsPage {
				t.Helper()
				f := map[string]any{"generic_search_term": term}
				if types != nil {
					f["room_types"] = types
				}
				return e.publicRooms(alice.AccessToken, 0, "", map[string]any{"filter": f})
			}
			all := directoryOrder([]listedRoom{{named, 1}, {topical, 1}, {aliased, 1}, {wine, 2}, {space, 1}})
			subset := func(ids ...id.RoomID) []id.RoomID {
				return slices.DeleteFunc(slices.Clone(all), func(r id.RoomID) bool { return !slices.Contains(ids, r) })
			}
			for _, c := range []struct {
				term  string
				types []any
				want  []id.RoomID
				total int
			}{
				{"", nil, all, 5},
				{"cheese", nil, subset(named, topical, space), 5},
				{"  ChEeSe ", nil, subset(named, topical, space), 5},
				{"FROMAGE", nil, subset(aliased), 5},
				{"romag", nil, subset(aliased), 5},
				{":" + e.server, nil, subset(aliased), 5},
				{"dairy", nil, subset(wine), 5},
				{"nothing like it", nil, nil, 5},
				{"", []any{}, all, 5},
				{"", []any{nil}, subset(named, topical, aliased, wine), 4},
				{"", []any{"m.space"}, subset(space), 1},
				{"", []any{nil, "m.space"}, all, 5},
				{"", []any{"org.example.other"}, nil, 0},
				{"cheese", []any{"m.space"}, subset(space), 1},
				{"cheese", []any{nil}, subset(named, topical), 4},
			} {
				p := search(c.term, c.types)
				if !slices.Equal(p.ids(), c.want) || *p.TotalCount != c.total {
					t.Errorf("search %q types %v: %v total %d, want %v total %d", c.term, c.types, p.ids(), *p.TotalCount, c.want, c.total)
				}
			}
			// Paging a filtered listing: the tokens page the filtered list.
			e.pageThrough(alice.AccessToken, 1, map[string]any{"filter": map[string]any{"generic_search_term": "cheese"}},
				subset(named, topical, space), 5)
			e.pageThrough(alice.AccessToken, 2, map[string]any{"filter": map[string]any{"room_types": []any{nil}}},
				subset(named, topical, aliased, wine), 4)

			// The fields of an entry, from the room's current state.
			for typ, content := range map[event.Type]map[string]any{
				event.StateHistoryVisibility: {"history_visibility": "world_readable"},
				event.StateGuestAccess:       {"guest_access": "can_join"},
				event.StateRoomAvatar:        {"url": "mxc://example.org/cheese"},
				event.StateJoinRules:         {"join_rule": "knock"},
			} {
				if _, err := alice.SendStateEvent(ctx, named, typ, "", content); err != nil {
					t.Fatalf("set %s: %v", typ.Type, err)
				}
			}
			p := search("lovers", nil)
			if len(p.Chunk) != 1 {
				t.Fatalf("search lovers: %v", p.ids())
			}
			c := p.Chunk[0]
			if c.Name != "Cheese Lovers" || c.AvatarURL != "mxc://example.org/cheese" || c.JoinRule != "knock" ||
				c.WorldReadable == nil || !*c.WorldReadable || c.GuestCanJoin == nil || !*c.GuestCanJoin ||
				c.NumJoinedMembers != 1 || c.RoomType != nil || c.Topic != "" || c.CanonicalAlias != "" {
				t.Fatalf("entry of the named room: %+v", c)
			}
			p = search("fromage", nil)
			if c := p.Chunk[0]; c.CanonicalAlias != fromage || c.JoinRule != "public" || *c.WorldReadable || *c.GuestCanJoin || c.Name != "" {
				t.Fatalf("entry of the aliased room: %+v", c)
			}
			if c := search("dairy", nil).Chunk[0]; c.Topic != "no dairy" || c.NumJoinedMembers != 2 {
				t.Fatalf("entry of the wine room: %+v", c)
			}
			if c := search("", []any{"m.space"}).Chunk[0]; c.RoomType == nil || *c.RoomType != "m.space" {
				t.Fatalf("entry of the space: %+v", c)
			}
			// Current state, not a stale copy: a renamed room is found by
			// its new name only.
			if _, err := alice.SendStateEvent(ctx, wine, event.StateRoomName, "", map[string]any{"name": "Port and Stilton"}); err != nil {
				t.Fatal(err)
			}
			if p := search("stilton", nil); !slices.Equal(p.ids(), []id.RoomID{wine}) {
				t.Fatalf("search by the new name: %v", p.ids())
			}
			if p := search("wine only", nil); len(p.Chunk) != 0 {
				t.Fatalf("search by the old name: %v", p.ids())
			}
			// Neither joinable by request nor world_readable: left out.
			if _, err := alice.SendStateEvent(ctx, wine, event.StateJoinRules, "", map[string]any{"join_rule": "invite"}); err != nil {
				t.Fatal(err)
			}
			if p := search("", nil); slices.Contains(p.ids(), wine) || *p.TotalCount != 4 {
				t.Fatalf("an invite-only room is listed: %v total %d", p.ids(), *p.TotalCount)
			}
		})
	}
}

// TestPublicRoomsErrors covers authentication, the server parameter,
// third-party networks and bad input on both forms.
func TestPublicRoomsErrors(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			e := startDirEnv(t, engine)
			alice := e.user("alice")
			room := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public"})
			tok := alice.AccessToken
			one := []id.RoomID{room}

			// GET needs no token (list_public_rooms.yaml has no security);
			// a token that is sent must be valid.
			if p := e.publicRooms("", 0, "", nil); !slices.Equal(p.ids(), one) {
				t.Fatalf("anonymous GET: %v", p.ids())
			}
			if p := e.publicRooms(tok, 0, "", nil); !slices.Equal(p.ids(), one) {
				t.Fatalf("GET with a token: %v", p.ids())
			}
			res, err := alice.PublicRooms(context.Background(), &mautrix.ReqPublicRooms{Limit: 10, Server: e.server})
			if err != nil || len(res.Chunk) != 1 || res.Chunk[0].RoomID != room || res.TotalRoomCountEstimate != 1 {
				t.Fatalf("mautrix PublicRooms with server=ours: %+v, %v", res, err)
			}
			e.hs.do("GET", "/publicRooms", "nonsense", nil).expectError(t, 401, "M_UNKNOWN_TOKEN")
			for _, q := range []string{"limit=abc", "limit=-1", "limit=1.5", "since=garbage", "since=" + url.QueryEscape("f3:nope"), "server=" + url.QueryEscape("bad server")} {
				e.hs.do("GET", "/publicRooms?"+q, "", nil).expectError(t, 400, "M_INVALID_PARAM")
			}
			// Another server's directory needs federation, which does not
			// exist yet.
			e.hs.do("GET", "/publicRooms?server=elsewhere.example", "", nil).expectError(t, 404, "M_NOT_FOUND")
			e.hs.do("POST", "/publicRooms?server=elsewhere.example", tok, map[string]any{}).expectError(t, 404, "M_NOT_FOUND")

			// POST needs a token; guests may use it, as in Synapse.
			e.hs.do("POST", "/publicRooms", "", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
			if p := e.publicRooms(e.guestToken(), 0, "", map[string]any{}); !slices.Equal(p.ids(), one) {
				t.Fatalf("guest POST: %v", p.ids())
			}
			e.hs.do("POST", "/publicRooms", tok, "not json").expectError(t, 400, "M_NOT_JSON")
			e.hs.do("POST", "/publicRooms", tok, "[]").expectError(t, 400, "M_BAD_JSON")
			for _, body := range []map[string]any{
				{"limit": "ten"}, {"since": 5}, {"filter": "cheese"}, {"filter": map[string]any{"room_types": "m.space"}},
				{"filter": map[string]any{"generic_search_term": 5}}, {"include_all_networks": "yes"},
			} {
				e.hs.do("POST", "/publicRooms", tok, body).expectError(t, 400, "M_BAD_JSON")
			}
			for _, body := range []map[string]any{
				{"limit": -1}, {"since": "garbage"},
				{"include_all_networks": true, "third_party_instance_id": "irc"},
			} {
				e.hs.do("POST", "/publicRooms", tok, body).expectError(t, 400, "M_INVALID_PARAM")
			}
			// No application service publishes a third-party network here:
			// a network's list is empty; all networks is this list.
			if p := e.publicRooms(tok, 0, "", map[string]any{"third_party_instance_id": "irc"}); len(p.Chunk) != 0 || *p.TotalCount != 0 || p.NextBatch != nil {
				t.Fatalf("third-party network list: %+v", p)
			}
			if p := e.publicRooms(tok, 0, "", map[string]any{"include_all_networks": true}); !slices.Equal(p.ids(), one) {
				t.Fatalf("all networks: %v", p.ids())
			}
			// A token whose rooms all went away meanwhile: an empty last page.
			second := e.createRoom(alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public"})
			p := e.publicRooms("", 1, "", nil)
			if p.NextBatch == nil || p.PrevBatch != nil || *p.TotalCount != 2 {
				t.Fatalf("two rooms, limit 1: %+v", p)
			}
			rest := second
			if p.ids()[0] == second {
				rest = room
			}
			e.hs.do("PUT", "/directory/list/room/"+url.PathEscape(string(rest)), tok, map[string]any{"visibility": "private"}).expect(t, 200)
			if p := e.publicRooms("", 1, *p.NextBatch, nil); len(p.Chunk) != 0 || p.NextBatch != nil || *p.TotalCount != 1 {
				t.Fatalf("page after the last room: %+v", p)
			}
		})
	}
}

package federation

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// publicRoomsPage is the part of a /publicRooms answer the tests read.
type publicRoomsPage struct {
	Chunk []struct {
		RoomID           string `json:"room_id"`
		Name             string `json:"name"`
		NumJoinedMembers int    `json:"num_joined_members"`
		WorldReadable    bool   `json:"world_readable"`
		JoinRule         string `json:"join_rule"`
	} `json:"chunk"`
	NextBatch string `json:"next_batch"`
	PrevBatch string `json:"prev_batch"`
	Total     int    `json:"total_room_count_estimate"`
}

func (e *fedEnv) publicRooms(method, query string, body any) publicRoomsPage {
	e.t.Helper()
	code, out := e.call(fedRemote, method, "/_matrix/federation/v1/publicRooms"+query, body)
	if code != 200 {
		e.t.Fatalf("%s publicRooms%s: %d %s", method, query, code, out)
	}
	raw, _ := json.Marshal(out)
	var page publicRoomsPage
	if err := json.Unmarshal(raw, &page); err != nil {
		e.t.Fatal(err)
	}
	return page
}

func (p publicRoomsPage) ids() []string {
	var out []string
	for _, r := range p.Chunk {
		out = append(out, r.RoomID)
	}
	return out
}

// TestFederationPublicRooms lists the published rooms to another server:
// as the client API lists them, less the rooms that do not federate.
func TestFederationPublicRooms(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		e := newFedEnv(t, db)
		public := map[string]any{"join_rule": "public"}
		alpha, _ := e.createRoomWith("10", nil, public, "shared")
		e.state(alpha, fedAlice, "m.room.name", "", map[string]any{"name": "Alpha"})
		e.member(alpha, fedBob, fedBob, "join") // two members: listed first
		beta, _ := e.createRoomWith("10", nil, map[string]any{"join_rule": "invite"}, "world_readable")
		e.state(beta, fedAlice, "m.room.name", "", map[string]any{"name": "Beta"})
		local, _ := e.createRoomWith("10", map[string]any{"m.federate": false}, public, "shared")
		unpublished, _ := e.createRoomWith("10", nil, public, "shared")
		for _, id := range []string{alpha, beta, local} {
			if err := db.SetRoomPublished(ctx, id, true); err != nil {
				t.Fatal(err)
			}
		}

		page := e.publicRooms("GET", "", nil)
		if !slices.Equal(page.ids(), []string{alpha, beta}) || page.Total != 2 || page.NextBatch != "" {
			t.Fatalf("GET publicRooms: %+v (local %s, unpublished %s)", page, local, unpublished)
		}
		if c := page.Chunk[0]; c.Name != "Alpha" || c.NumJoinedMembers != 2 || c.JoinRule != "public" || c.WorldReadable {
			t.Errorf("alpha listed as %+v", c)
		}
		if c := page.Chunk[1]; c.Name != "Beta" || !c.WorldReadable {
			t.Errorf("beta listed as %+v", c)
		}
		first := e.publicRooms("GET", "?limit=1", nil)
		if !slices.Equal(first.ids(), []string{alpha}) || first.NextBatch == "" {
			t.Fatalf("limit 1: %+v", first)
		}
		second := e.publicRooms("GET", "?limit=1&since="+url.QueryEscape(first.NextBatch), nil)
		if !slices.Equal(second.ids(), []string{beta}) || second.NextBatch != "" || second.PrevBatch == "" {
			t.Fatalf("second page: %+v", second)
		}
		if got := e.publicRooms("POST", "", map[string]any{"filter": map[string]any{"generic_search_term": "ALPH"}}); !slices.Equal(got.ids(), []string{alpha}) {
			t.Errorf("search: %v", got.ids())
		}
		if got := e.publicRooms("POST", "", map[string]any{"limit": 1, "since": first.NextBatch}); !slices.Equal(got.ids(), []string{beta}) {
			t.Errorf("POST second page: %v", got.ids())
		}
		if got := e.publicRooms("POST", "", map[string]any{"third_party_instance_id": "irc"}); len(got.Chunk) != 0 {
			t.Errorf("a third-party network lists no room here: %v", got.ids())
		}
		if got := e.publicRooms("GET", "?third_party_instance_id=irc", nil); len(got.Chunk) != 0 {
			t.Errorf("GET a third-party network: %v", got.ids())
		}
		if got := e.publicRooms("GET", "?include_all_networks=true&third_party_instance_id=irc", nil); len(got.Chunk) != 2 {
			t.Errorf("include_all_networks wins on GET: %v", got.ids())
		}

		for _, c := range []struct {
			method, query string
			body          any
			status        int
			errcode       string
		}{
			{"GET", "?limit=lots", nil, 400, "M_INVALID_PARAM"},
			{"GET", "?limit=-2", nil, 400, "M_INVALID_PARAM"},
			{"GET", "?since=garbage", nil, 400, "M_INVALID_PARAM"},
			{"GET", "?include_all_networks=maybe", nil, 400, "M_INVALID_PARAM"},
			{"POST", "", map[string]any{"limit": -1}, 400, "M_INVALID_PARAM"},
			{"POST", "", map[string]any{"since": "garbage"}, 400, "M_INVALID_PARAM"},
			{"POST", "", map[string]any{"include_all_networks": true, "third_party_instance_id": "irc"}, 400, "M_INVALID_PARAM"},
			{"POST", "", map[string]any{"limit": "ten"}, 400, "M_BAD_JSON"},
			{"POST", "", nil, 400, "M_NOT_JSON"},
		} {
			e.expectError(fedRemote, c.method, "/_matrix/federation/v1/publicRooms"+c.query, c.body, c.status, c.errcode)
		}

		// federation.allow_public_rooms off (the default): 403.
		closed := mxhttp.NewRouter()
		summaries := &roomsummary.Reader{DB: db, Rooms: e.rs}
		(&RoomDirectory{DB: db, ServerName: ours, Summaries: summaries, List: roomsummary.NewDirectory(summaries)}).Routes(closed)
		e.mux = closed
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/publicRooms", nil, 403, "M_FORBIDDEN")
		e.expectError(fedRemote, "POST", "/_matrix/federation/v1/publicRooms", map[string]any{}, 403, "M_FORBIDDEN")
	})
}

// hierarchyAnswer is a federation /hierarchy answer.
type hierarchyAnswer struct {
	Room struct {
		RoomID        string `json:"room_id"`
		RoomType      string `json:"room_type"`
		ChildrenState []struct {
			StateKey       string         `json:"state_key"`
			Type           string         `json:"type"`
			Sender         string         `json:"sender"`
			OriginServerTS int64          `json:"origin_server_ts"`
			Content        map[string]any `json:"content"`
		} `json:"children_state"`
	} `json:"room"`
	Children []struct {
		RoomID         string            `json:"room_id"`
		JoinRule       string            `json:"join_rule"`
		AllowedRoomIDs []string          `json:"allowed_room_ids"`
		ChildrenState  []json.RawMessage `json:"children_state"`
	} `json:"children"`
	Inaccessible []string `json:"inaccessible_children"`
}

func (e *fedEnv) hierarchy(roomID, query string) hierarchyAnswer {
	e.t.Helper()
	code, out := e.call(fedRemote, "GET", "/_matrix/federation/v1/hierarchy/"+esc(roomID)+query, nil)
	if code != 200 {
		e.t.Fatalf("hierarchy %s%s: %d %s", roomID, query, code, out)
	}
	raw, _ := json.Marshal(out)
	var h hierarchyAnswer
	if err := json.Unmarshal(raw, &h); err != nil {
		e.t.Fatal(err)
	}
	for _, k := range []string{"room", "children", "inaccessible_children"} {
		if string(out[k]) == "null" || out[k] == nil {
			e.t.Errorf("hierarchy answer lacks %s: %s", k, raw)
		}
	}
	return h
}

// TestFederationHierarchy serves a space and its children to another
// server (space_hierarchy.yaml; Synapse's get_federation_hierarchy):
// children the server may preview are described, those it may not are
// listed as inaccessible, and those this server is not in are left out.
func TestFederationHierarchy(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		e := newFedEnv(t, db)
		public := map[string]any{"join_rule": "public"}
		invite := map[string]any{"join_rule": "invite"}
		space, _ := e.createRoomWith("10", map[string]any{"type": "m.space"}, public, "shared")
		e.member(space, fedBob, fedBob, "join")
		open, _ := e.createRoomWith("10", nil, public, "shared")
		secret, _ := e.createRoomWith("10", nil, invite, "shared")
		invited, _ := e.createRoomWith("10", nil, invite, "shared")
		e.member(invited, fedAlice, fedBob, "invite")
		restricted, _ := e.createRoomWith("10", nil, map[string]any{"join_rule": "restricted",
			"allow": []any{map[string]any{"type": "m.room_membership", "room_id": space}}}, "shared")
		subspace, _ := e.createRoomWith("10", map[string]any{"type": "m.space"}, invite, "world_readable")
		abandoned, _ := e.createRoomWith("10", nil, public, "shared")
		e.member(abandoned, fedAlice, fedAlice, "leave")
		unknown := "!unknown:elsewhere.example"
		children := []string{open, secret, invited, restricted, subspace, abandoned, unknown}
		for i, child := range children {
			e.state(space, fedAlice, "m.space.child", child, map[string]any{"via": []string{"ours.example"},
				"order": string(rune('a' + i)), "suggested": child == open || child == secret})
		}
		e.state(subspace, fedAlice, "m.space.child", open, map[string]any{"via": []string{"ours.example"}})
		// A child without a valid via is no child.
		e.state(space, fedAlice, "m.space.child", "!gone:ours.example", map[string]any{})

		h := e.hierarchy(space, "")
		if h.Room.RoomID != space || h.Room.RoomType != "m.space" {
			t.Fatalf("room: %+v", h.Room)
		}
		var listed []string
		for _, c := range h.Room.ChildrenState {
			listed = append(listed, c.StateKey)
			if c.Type != "m.space.child" || c.Sender != fedAlice || c.OriginServerTS == 0 || c.Content["via"] == nil {
				t.Errorf("children_state entry %+v", c)
			}
		}
		if !slices.Equal(listed, children) {
			t.Errorf("children_state %v, want %v", listed, children)
		}
		var described []string
		for _, c := range h.Children {
			described = append(described, c.RoomID)
			switch c.RoomID {
			case restricted:
				if c.JoinRule != "restricted" || !slices.Equal(c.AllowedRoomIDs, []string{space}) {
					t.Errorf("restricted child %+v", c)
				}
			case subspace:
				if len(c.ChildrenState) != 1 {
					t.Errorf("subspace child without its children: %+v", c)
				}
			}
		}
		if want := []string{open, invited, restricted, subspace}; !slices.Equal(described, want) {
			t.Errorf("children %v, want %v", described, want)
		}
		if !slices.Equal(h.Inaccessible, []string{secret}) {
			t.Errorf("inaccessible_children %v, want [%s]", h.Inaccessible, secret)
		}

		h = e.hierarchy(space, "?suggested_only=true")
		if len(h.Room.ChildrenState) != 2 || len(h.Children) != 1 || h.Children[0].RoomID != open || !slices.Equal(h.Inaccessible, []string{secret}) {
			t.Errorf("suggested only: %+v", h)
		}
		// A room that is not a space has no children.
		if h := e.hierarchy(open, ""); h.Room.RoomID != open || len(h.Room.ChildrenState) != 0 || len(h.Children) != 0 {
			t.Errorf("plain room: %+v", h)
		}
		// The invited server may preview the invite-only room.
		if h := e.hierarchy(invited, ""); h.Room.RoomID != invited {
			t.Errorf("invited room: %+v", h)
		}
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/hierarchy/"+esc(secret), nil, 404, "M_NOT_FOUND")
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/hierarchy/"+esc(unknown), nil, 404, "M_NOT_FOUND")
		e.expectError(fedRemote, "GET", "/_matrix/federation/v1/hierarchy/"+esc(space)+"?suggested_only=yes", nil, 400, "M_INVALID_PARAM")
		// Another server with no user anywhere sees the open rooms only.
		code, out := e.call(fedOther, "GET", "/_matrix/federation/v1/hierarchy/"+esc(space), nil)
		raw, _ := json.Marshal(out)
		var h2 hierarchyAnswer
		_ = json.Unmarshal(raw, &h2)
		var got []string
		for _, c := range h2.Children {
			got = append(got, c.RoomID)
		}
		if code != 200 || !slices.Equal(got, []string{open, subspace}) || !slices.Equal(h2.Inaccessible, []string{secret, invited, restricted}) {
			t.Errorf("other server: %d children %v inaccessible %v", code, got, h2.Inaccessible)
		}
	})
}

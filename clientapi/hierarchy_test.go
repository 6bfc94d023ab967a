package clientapi_test

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
)

// hierarchyPage is a /hierarchy answer as tests read it.
type hierarchyPage struct {
	Rooms []struct {
		RoomID           string   `json:"room_id"`
		Name             string   `json:"name"`
		RoomType         string   `json:"room_type"`
		JoinRule         string   `json:"join_rule"`
		NumJoinedMembers int      `json:"num_joined_members"`
		WorldReadable    *bool    `json:"world_readable"`
		GuestCanJoin     *bool    `json:"guest_can_join"`
		RoomVersion      string   `json:"room_version"`
		AllowedRoomIDs   []string `json:"allowed_room_ids"`
		ChildrenState    []struct {
			Type           string         `json:"type"`
			StateKey       string         `json:"state_key"`
			Sender         string         `json:"sender"`
			Content        map[string]any `json:"content"`
			OriginServerTS int64          `json:"origin_server_ts"`
		} `json:"children_state"`
	} `json:"rooms"`
	NextBatch string `json:"next_batch"`
}

func exHierarchy(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID string, q url.Values) response {
	t.Helper()
	path := "/_matrix/client/v1/rooms/" + pathEsc(roomID) + "/hierarchy"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return h.do(t, cli, "GET", path, nil)
}

// exHierarchyIDs walks every page and returns the room ids in order, and
// the pages' sizes.
func exHierarchyIDs(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID string, q url.Values) ([]string, []int) {
	t.Helper()
	var ids []string
	var sizes []int
	for range 50 {
		var page hierarchyPage
		exHierarchy(t, h, cli, roomID, q).expect(t, 200).JSON(t, &page)
		sizes = append(sizes, len(page.Rooms))
		for _, r := range page.Rooms {
			ids = append(ids, r.RoomID)
		}
		if page.NextBatch == "" {
			return ids, sizes
		}
		q = cloneValues(q)
		q.Set("from", page.NextBatch)
	}
	t.Fatal("pagination does not end")
	return nil, nil
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		out[k] = slices.Clone(v)
	}
	return out
}

// TestSpaceHierarchy: GET /hierarchy walks a space depth first in the
// spec's child order, breaks loops, hides rooms the user may not preview
// (and skips their children), skips rooms this server does not have, and
// pages with suggested_only and max_depth fixed across pages.
func TestSpaceHierarchy(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		server := h.srv.Config.ServerName
		via := []string{server}
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		space := func(name string, preset string) string {
			return h.createRoom(t, alice, map[string]any{"name": name, "preset": preset, "creation_content": map[string]any{"type": "m.space"}})
		}
		room := func(name string, body map[string]any) string {
			if body == nil {
				body = map[string]any{"preset": "public_chat"}
			}
			body["name"] = name
			return h.createRoom(t, alice, body)
		}
		s := space("S", "public_chat")
		a, c := room("A", nil), room("C", nil)
		b := space("B", "private_chat")
		tt := space("T", "public_chat")
		d := room("D", nil)
		// Joinable by members of S (a restricted room, version 12).
		e := room("E", map[string]any{"preset": "private_chat", "initial_state": []map[string]any{{"type": "m.room.join_rules",
			"content": map[string]any{"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": s}}}}}})
		// A public space below the private space B is never reached by
		// those who may not see B: its children are not walked for them.
		hidden := space("Hidden", "public_chat")
		exState(t, h, alice, b, "m.space.child", hidden, map[string]any{"via": via})

		// S's children in the spec's order: C (order "a"), A ("b"), T
		// ("c"), then by timestamp B, the remote room, E. The empty child
		// was removed from the space.
		exState(t, h, alice, s, "m.space.child", a, map[string]any{"via": via, "order": "b"})
		exState(t, h, alice, s, "m.space.child", c, map[string]any{"via": via, "order": "a", "suggested": true})
		exState(t, h, alice, s, "m.space.child", tt, map[string]any{"via": via, "order": "c"})
		// Children without a valid order go by timestamp, which has
		// millisecond precision.
		exState(t, h, alice, s, "m.space.child", b, map[string]any{"via": via, "order": "\x01invalid"})
		time.Sleep(2 * time.Millisecond)
		exState(t, h, alice, s, "m.space.child", "!remote:elsewhere.example", map[string]any{"via": []string{"elsewhere.example"}})
		time.Sleep(2 * time.Millisecond)
		exState(t, h, alice, s, "m.space.child", e, map[string]any{"via": via})
		exState(t, h, alice, s, "m.space.child", "!removed:"+server, map[string]any{})
		exState(t, h, alice, tt, "m.space.child", d, map[string]any{"via": via})
		exState(t, h, alice, tt, "m.space.child", s, map[string]any{"via": via}) // a loop

		all, _ := exHierarchyIDs(t, h, alice, s, nil)
		if want := []string{s, c, a, tt, d, b, hidden, e}; !slices.Equal(all, want) {
			t.Fatalf("alice's hierarchy = %v, want %v", all, want)
		}
		if got, _ := exHierarchyIDs(t, h, bob, s, nil); !slices.Equal(got, []string{s, c, a, tt, d}) {
			t.Fatalf("bob's hierarchy = %v: want the private and restricted rooms hidden", got)
		}
		h.join(t, bob, s)
		if got, _ := exHierarchyIDs(t, h, bob, s, nil); !slices.Equal(got, []string{s, c, a, tt, d, e}) {
			t.Fatalf("bob's hierarchy as a member of S = %v: want the restricted room E shown", got)
		}

		var page hierarchyPage
		exHierarchy(t, h, alice, s, nil).expect(t, 200).JSON(t, &page)
		root := page.Rooms[0]
		if root.RoomType != "m.space" || root.Name != "S" || root.JoinRule != "public" || root.NumJoinedMembers != 2 ||
			root.RoomVersion != "12" || root.WorldReadable == nil || root.GuestCanJoin == nil {
			t.Fatalf("root entry = %+v", root)
		}
		var children []string
		for _, cs := range root.ChildrenState {
			if cs.Type != "m.space.child" || cs.Sender != alice.UserID.String() || cs.OriginServerTS == 0 || cs.Content["via"] == nil {
				t.Fatalf("child state %+v", cs)
			}
			children = append(children, cs.StateKey)
		}
		if want := []string{c, a, tt, b, "!remote:elsewhere.example", e}; !slices.Equal(children, want) {
			t.Fatalf("children_state = %v, want %v", children, want)
		}
		for _, r := range page.Rooms {
			switch r.RoomID {
			case e:
				if r.JoinRule != "restricted" || !slices.Equal(r.AllowedRoomIDs, []string{s}) {
					t.Fatalf("restricted room entry = %+v", r)
				}
			case a:
				if r.ChildrenState == nil || len(r.ChildrenState) != 0 {
					t.Fatalf("a room that is not a space has children_state %v", r.ChildrenState)
				}
			}
		}

		if got, _ := exHierarchyIDs(t, h, alice, s, url.Values{"max_depth": {"0"}}); !slices.Equal(got, []string{s}) {
			t.Fatalf("max_depth 0 = %v", got)
		}
		if got, _ := exHierarchyIDs(t, h, alice, s, url.Values{"max_depth": {"1"}}); !slices.Equal(got, []string{s, c, a, tt, b, e}) {
			t.Fatalf("max_depth 1 = %v", got)
		}
		exHierarchy(t, h, alice, s, url.Values{"suggested_only": {"true"}}).expect(t, 200).JSON(t, &page)
		if len(page.Rooms) != 2 || page.Rooms[1].RoomID != c || len(page.Rooms[0].ChildrenState) != 1 {
			t.Fatalf("suggested_only = %+v", page.Rooms)
		}

		got, sizes := exHierarchyIDs(t, h, alice, s, url.Values{"limit": {"3"}})
		if !slices.Equal(got, all) || !slices.Equal(sizes, []int{3, 3, 2}) {
			t.Fatalf("pages of 3 = %v (sizes %v), want %v", got, sizes, all)
		}
		exHierarchy(t, h, alice, s, url.Values{"limit": {"3"}}).expect(t, 200).JSON(t, &page)
		next := page.NextBatch
		// The same token gives the same page.
		var p2, p2again hierarchyPage
		exHierarchy(t, h, alice, s, url.Values{"limit": {"3"}, "from": {next}}).expect(t, 200).JSON(t, &p2)
		exHierarchy(t, h, alice, s, url.Values{"limit": {"3"}, "from": {next}}).expect(t, 200).JSON(t, &p2again)
		if len(p2.Rooms) != 3 || p2.Rooms[0].RoomID != all[3] || p2again.Rooms[0].RoomID != all[3] {
			t.Fatalf("second page = %+v", p2.Rooms)
		}

		// Errors (space_hierarchy.yaml).
		for _, q := range []url.Values{
			{"from": {next}, "max_depth": {"1"}},
			{"from": {next}, "suggested_only": {"true"}},
			{"from": {"garbage"}},
			{"limit": {"0"}}, {"limit": {"x"}}, {"max_depth": {"-1"}}, {"suggested_only": {"maybe"}},
		} {
			exHierarchy(t, h, alice, s, q).expectError(t, 400, "M_INVALID_PARAM")
		}
		// A token of another space's walk.
		exHierarchy(t, h, alice, tt, url.Values{"from": {next}, "limit": {"3"}}).expectError(t, 400, "M_INVALID_PARAM")
		exHierarchy(t, h, bob, b, nil).expectError(t, 403, "M_FORBIDDEN")
		exHierarchy(t, h, bob, "!unknown:"+server, nil).expectError(t, 403, "M_FORBIDDEN")
		exHierarchy(t, h, alice, "nonsense", nil).expectError(t, 400, "M_INVALID_PARAM")
		exHierarchy(t, h, nil, s, nil).expectError(t, 401, "M_MISSING_TOKEN")
		// Only under v1.
		h.do(t, alice, "GET", "/rooms/"+pathEsc(s)+"/hierarchy", nil).expectError(t, 404, "M_UNRECOGNIZED")
	})
}

package clientapi_test

import (
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/clientapi"
)

type mutualRoomsPage struct {
	Joined    []string `json:"joined"`
	Count     *int     `json:"count"`
	NextBatch string   `json:"next_batch"`
}

func exMutual(t *testing.T, h *roomsHS, cli *mautrix.Client, q url.Values) response {
	t.Helper()
	return h.do(t, cli, "GET", "/_matrix/client/v1/mutual_rooms?"+q.Encode(), nil)
}

// TestMutualRooms: GET /mutual_rooms (spec v1.19) lists the rooms both
// users are joined to, pages with next_batch, and refuses bad user ids and
// tokens.
func TestMutualRooms(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		var shared []string
		for range 5 {
			r := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
			h.join(t, bob, r)
			shared = append(shared, r)
		}
		slices.Sort(shared)
		h.createRoom(t, alice, nil) // alice only
		h.createRoom(t, bob, nil)   // bob only
		left := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
		h.join(t, bob, left)
		h.do(t, bob, "POST", "/rooms/"+pathEsc(left)+"/leave", map[string]any{}).expect(t, 200)
		invited := h.createRoom(t, alice, nil)
		h.do(t, alice, "POST", "/rooms/"+pathEsc(invited)+"/invite", map[string]any{"user_id": bob.UserID}).expect(t, 200)

		var page mutualRoomsPage
		exMutual(t, h, alice, url.Values{"user_id": {bob.UserID.String()}}).expect(t, 200).JSON(t, &page)
		if !slices.Equal(page.Joined, shared) || page.Count == nil || *page.Count != 5 || page.NextBatch != "" {
			t.Fatalf("mutual rooms = %+v, want %v", page, shared)
		}
		// Symmetric.
		exMutual(t, h, bob, url.Values{"user_id": {alice.UserID.String()}}).expect(t, 200).JSON(t, &page)
		if !slices.Equal(page.Joined, shared) {
			t.Fatalf("bob's view = %v", page.Joined)
		}
		// No shared room; a user who does not exist (spec: an empty list).
		for _, other := range []string{carol.UserID.String(), h.userID("nobody"), "@someone:elsewhere.example"} {
			page = mutualRoomsPage{}
			exMutual(t, h, alice, url.Values{"user_id": {other}}).expect(t, 200).JSON(t, &page)
			if page.Joined == nil || len(page.Joined) != 0 || *page.Count != 0 {
				t.Fatalf("mutual rooms with %s = %+v", other, page)
			}
		}

		restore := clientapi.SetMutualRoomsPageForTest(2)
		defer restore()
		var got []string
		q := url.Values{"user_id": {bob.UserID.String()}}
		var first string
		for i := 0; i < 10; i++ {
			page = mutualRoomsPage{} // absent fields must read as absent
			exMutual(t, h, alice, q).expect(t, 200).JSON(t, &page)
			if *page.Count != 5 || len(page.Joined) > 2 {
				t.Fatalf("page %d = %+v", i, page)
			}
			got = append(got, page.Joined...)
			if page.NextBatch == "" {
				break
			}
			if i == 0 {
				first = page.NextBatch
			}
			q.Set("from", page.NextBatch)
		}
		if !slices.Equal(got, shared) {
			t.Fatalf("pages = %v, want %v", got, shared)
		}

		for _, bad := range []url.Values{
			{},
			{"user_id": {"bob"}},
			{"user_id": {alice.UserID.String()}},
			{"user_id": {bob.UserID.String(), carol.UserID.String()}},
			{"user_id": {bob.UserID.String()}, "from": {"garbage"}},
			{"user_id": {carol.UserID.String()}, "from": {first}}, // a token of another user's list
		} {
			r := exMutual(t, h, alice, bad)
			if len(bad["user_id"]) == 0 {
				r.expectError(t, 400, "M_MISSING_PARAM")
			} else {
				r.expectError(t, 400, "M_INVALID_PARAM")
			}
		}
		exMutual(t, h, nil, url.Values{"user_id": {bob.UserID.String()}}).expectError(t, 401, "M_MISSING_TOKEN")
	})
}

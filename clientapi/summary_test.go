package clientapi_test

import (
	"testing"

	"maunium.net/go/mautrix"
)

func exSummary(t *testing.T, h *roomsHS, cli *mautrix.Client, idOrAlias string) response {
	t.Helper()
	return h.do(t, cli, "GET", "/_matrix/client/v1/room_summary/"+pathEsc(idOrAlias), nil)
}

// TestRoomSummary: GET /room_summary (spec v1.15) by id and by alias, with
// and without an access token, for each way a room may be previewable,
// and 404 alike for rooms that are not previewable and unknown rooms.
func TestRoomSummary(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		server := h.srv.Config.ServerName
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		public := h.createRoom(t, alice, map[string]any{
			"preset": "public_chat", "room_alias_name": "summary", "name": "Summary", "topic": "plain topic",
			"creation_content": map[string]any{"type": "m.space"},
			"initial_state": []map[string]any{
				{"type": "m.room.encryption", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
				{"type": "m.room.avatar", "content": map[string]any{"url": "mxc://example.org/a"}},
				{"type": "m.room.guest_access", "content": map[string]any{"guest_access": "can_join"}},
			},
		})
		h.join(t, bob, public)

		// Unauthenticated, by alias: no membership.
		got := exSummary(t, h, nil, "#summary:"+server).expect(t, 200).Object(t)
		want := map[string]any{
			"room_id": public, "name": "Summary", "topic": "plain topic", "canonical_alias": "#summary:" + server,
			"avatar_url": "mxc://example.org/a", "num_joined_members": float64(2), "world_readable": false, "guest_can_join": true,
			"join_rule": "public", "room_type": "m.space", "encryption": "m.megolm.v1.aes-sha2", "room_version": "12",
		}
		if !jsonEqual(got, want) {
			t.Fatalf("summary = %v\nwant %v", got, want)
		}
		if m := exSummary(t, h, bob, public).expect(t, 200).Object(t)["membership"]; m != "join" {
			t.Fatalf("bob's membership = %v", m)
		}
		if m := exSummary(t, h, carol, public).expect(t, 200).Object(t)["membership"]; m != "leave" {
			t.Fatalf("carol's membership = %v, want leave for no membership", m)
		}

		// A private room: members and invitees only.
		private := h.createRoom(t, alice, map[string]any{"preset": "private_chat", "name": "Secret"})
		exSummary(t, h, nil, private).expectError(t, 404, "M_NOT_FOUND")
		exSummary(t, h, bob, private).expectError(t, 404, "M_NOT_FOUND")
		if m := exSummary(t, h, alice, private).expect(t, 200).Object(t)["membership"]; m != "join" {
			t.Fatalf("alice's membership = %v", m)
		}
		h.do(t, alice, "POST", "/rooms/"+pathEsc(private)+"/invite", map[string]any{"user_id": carol.UserID}).expect(t, 200)
		if got := exSummary(t, h, carol, private).expect(t, 200).Object(t); got["membership"] != "invite" || got["name"] != "Secret" ||
			got["join_rule"] != "invite" {
			t.Fatalf("carol's summary of the room she is invited to = %v", got)
		}

		// World readable, knockable and restricted rooms.
		readable := h.createRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}}}})
		if got := exSummary(t, h, nil, readable).expect(t, 200).Object(t); got["world_readable"] != true {
			t.Fatalf("world readable room = %v", got)
		}
		knock := h.createRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}})
		exSummary(t, h, nil, knock).expect(t, 200)
		// knock in version 6, which has no knocking, is invite-only.
		oldKnock := h.createRoom(t, alice, map[string]any{"room_version": "6", "preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}})
		exSummary(t, h, nil, oldKnock).expectError(t, 404, "M_NOT_FOUND")
		restricted := h.createRoom(t, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{
			{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "restricted",
				"allow": []map[string]any{{"type": "m.room_membership", "room_id": public}}}}}})
		exSummary(t, h, nil, restricted).expectError(t, 404, "M_NOT_FOUND")
		exSummary(t, h, carol, restricted).expectError(t, 404, "M_NOT_FOUND")
		if got := exSummary(t, h, bob, restricted).expect(t, 200).Object(t); !jsonEqual(got["allowed_room_ids"], []string{public}) ||
			got["membership"] != "leave" {
			t.Fatalf("restricted room seen by a member of the allowed room = %v", got)
		}

		exSummary(t, h, alice, "!unknown:"+server).expectError(t, 404, "M_NOT_FOUND")
		exSummary(t, h, nil, "#unknown:"+server).expectError(t, 404, "M_NOT_FOUND")
		exSummary(t, h, alice, "nonsense").expectError(t, 400, "M_INVALID_PARAM")
		bad, _ := mautrix.NewClient(h.srv.ClientURL, "", "")
		bad.AccessToken = "not-a-token"
		exSummary(t, h, bad, public).expectError(t, 401, "M_UNKNOWN_TOKEN")
	})
}

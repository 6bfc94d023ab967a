package roomserver

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// History visibility settings (spec: "History visibility").
const (
	VisWorldReadable = "world_readable"
	VisShared        = "shared"
	VisInvited       = "invited"
	VisJoined        = "joined"
)

// visibilityRank orders settings from most to least permissive.
var visibilityRank = map[string]int{VisWorldReadable: 0, VisShared: 1, VisInvited: 2, VisJoined: 3}

// VisibleTo applies the spec's history visibility rules to one event for a
// user whose current membership of the room is currentMembership:
//
//  1. world_readable at the event: visible.
//  2. the user was joined at the event: visible.
//  3. shared at the event and the user is joined now (like Synapse: a
//     user who has left no longer sees shared history they did not see).
//  4. invited at the event and the user was invited then: visible.
//  5. otherwise hidden.
//
// "At the event" is the state before it, except that for a user's own
// membership event the user sees it if either the membership before or
// the one after allows it (so a user sees their own join and their own
// leave), and a history_visibility event counts with the more permissive
// of the old and new settings (spec: Room History Visibility, "before or
// after the event"). A missing or unknown setting is shared.
func (rs *Roomserver) VisibleTo(ctx context.Context, userID, currentMembership string, ev sql.Event) (bool, error) {
	vis, err := rs.stateContent(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomHistoryVisibility}, "history_visibility")
	if err != nil {
		return false, err
	}
	vis = knownVisibility(vis)
	membership, err := rs.stateContent(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomMember, StateKey: userID}, "membership")
	if err != nil {
		return false, err
	}
	after := ""
	if ev.StateKey != nil {
		switch {
		case ev.Type == spec.MRoomMember && *ev.StateKey == userID:
			after = contentField(ev, "membership")
		case ev.Type == spec.MRoomHistoryVisibility && *ev.StateKey == "":
			if v := knownVisibility(contentField(ev, "history_visibility")); visibilityRank[v] < visibilityRank[vis] {
				vis = v
			}
		}
	}
	return visibleWith(vis, membership, currentMembership) ||
		(after != "" && visibleWith(vis, after, currentMembership)), nil
}

// knownVisibility maps a missing or unknown setting to shared (spec:
// "if no history_visibility is set, or if the value is not understood,
// the visibility is assumed to be shared").
func knownVisibility(v string) string {
	if _, ok := visibilityRank[v]; !ok {
		return VisShared
	}
	return v
}

// visibleWith applies the rules to a user with membership at the event.
func visibleWith(vis, membership, currentMembership string) bool {
	switch {
	case vis == VisWorldReadable:
		return true
	case membership == spec.Join:
		return true
	case vis == VisShared && currentMembership == spec.Join:
		return true
	case vis == VisInvited && membership == spec.Invite:
		return true
	}
	return false
}

// stateContent reads one string field of the content of a piece of state
// in a snapshot ("" when unset).
func (rs *Roomserver) stateContent(ctx context.Context, snapshot int64, k sql.StateKey, field string) (string, error) {
	nid, err := rs.db.SnapshotKey(ctx, snapshot, k)
	if err != nil || nid == 0 {
		return "", err
	}
	evs, err := rs.pdus(ctx, &rs.db.Queries, []int64{nid})
	if err != nil {
		return "", err
	}
	var content map[string]any
	if e := evs[nid]; e != nil {
		_ = json.Unmarshal(e.Content(), &content)
	}
	s, _ := content[field].(string)
	return s, nil
}

func contentField(ev sql.Event, field string) string {
	var e struct {
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal(ev.JSON, &e)
	s, _ := e.Content[field].(string)
	return s
}

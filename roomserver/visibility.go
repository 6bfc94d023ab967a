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
// "At the event" is the state before it, except that a user's own
// membership event counts with its new membership (so a user sees their
// own leave), and a history_visibility event counts with the more
// permissive of the old and new settings, as Synapse does.
func (rs *Roomserver) VisibleTo(ctx context.Context, userID, currentMembership string, ev sql.Event) (bool, error) {
	vis, err := rs.stateContent(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomHistoryVisibility}, "history_visibility")
	if err != nil {
		return false, err
	}
	if vis == "" {
		vis = VisShared
	}
	membership, err := rs.stateContent(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomMember, StateKey: userID}, "membership")
	if err != nil {
		return false, err
	}
	if ev.StateKey != nil {
		switch {
		case ev.Type == spec.MRoomMember && *ev.StateKey == userID:
			if m := contentField(ev, "membership"); m != "" {
				membership = m
			}
		case ev.Type == spec.MRoomHistoryVisibility && *ev.StateKey == "":
			if v := contentField(ev, "history_visibility"); v != "" && visibilityRank[v] < visibilityRank[vis] {
				vis = v
			}
		}
	}
	switch {
	case vis == VisWorldReadable:
		return true, nil
	case membership == spec.Join:
		return true, nil
	case vis == VisShared && currentMembership == spec.Join:
		return true, nil
	case vis == VisInvited && membership == spec.Invite:
		return true, nil
	}
	return false, nil
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

package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/userapi"
)

// The membership reads: /joined_rooms, /members and /joined_members.

func (a *API) joinedRooms(r *http.Request, dev *userapi.Device) (any, error) {
	rooms, err := a.rooms.RoomsWithMembership(r.Context(), dev.UserID, spec.Join)
	if err != nil {
		return nil, err
	}
	if rooms == nil {
		rooms = []string{}
	}
	return map[string][]string{"joined_rooms": rooms}, nil
}

var membershipValues = []string{spec.Join, spec.Invite, spec.Knock, spec.Leave, spec.Ban}

// members lists the room's member events (spec: GET /rooms/{roomId}/members).
// Whose members a caller sees, as in Synapse: a joined member, or anyone
// in a world-readable room, the current ones; a member who left or was
// banned, those at the time; with ?at, those at that point of the room's
// stream, if history visibility lets the caller see the room's event
// there. Anyone else gets 403, unknown rooms included, so as not to tell
// which rooms exist.
func (a *API) members(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	want, notWant := q.Get("membership"), q.Get("not_membership")
	for name, v := range map[string]string{"membership": want, "not_membership": notWant} {
		if v != "" && !slices.Contains(membershipValues, v) {
			return nil, mxhttp.InvalidParam("%s must be one of %s", name, strings.Join(membershipValues, ", "))
		}
	}
	state, err := a.visibleState(ctx, roomID, dev.UserID, q.Get("at"))
	if err != nil {
		return nil, err
	}
	var chunk []gomatrixserverlib.PDU
	for _, ev := range state {
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
			continue
		}
		m, _ := ev.Membership()
		if memberMatches(m, want, notWant) {
			chunk = append(chunk, ev)
		}
	}
	slices.SortFunc(chunk, func(x, y gomatrixserverlib.PDU) int { return strings.Compare(*x.StateKey(), *y.StateKey()) })
	out, err := ClientEvents(ctx, a.sent, chunk, dev, time.Now())
	if err != nil {
		return nil, err
	}
	return map[string][]ClientEvent{"chunk": out}, nil
}

// memberMatches applies ?membership and ?not_membership. The spec makes
// the two, when both are given, an "or": the membership is want or is not
// notWant.
func memberMatches(m, want, notWant string) bool {
	switch {
	case want != "" && notWant != "":
		return m == want || m != notWant
	case want != "":
		return m == want
	case notWant != "":
		return m != notWant
	}
	return true
}

// visibleState is the room state the caller may see members in (see
// members).
func (a *API) visibleState(ctx context.Context, roomID, userID, at string) ([]gomatrixserverlib.PDU, error) {
	notMember := mxhttp.Forbidden("You are not a member of this room")
	current, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return nil, err
	}
	if at != "" {
		pos, ok := eventStreamPos(at)
		if !ok {
			return nil, mxhttp.InvalidParam("Invalid at token %q", at)
		}
		stored, pdu, err := a.rooms.LastEventAt(ctx, roomID, pos)
		if me := (*mxhttp.Error)(nil); errors.As(err, &me) && me.Status == http.StatusNotFound {
			return nil, notMember // no event then, or no such room
		}
		if err != nil {
			return nil, err
		}
		visible, err := a.rooms.VisibleTo(ctx, userID, current, stored)
		if err != nil {
			return nil, err
		}
		if !visible {
			return nil, mxhttp.Forbidden("You may not see this room at that point")
		}
		before, err := a.rooms.StateBefore(ctx, stored)
		if err != nil {
			return nil, err
		}
		return stateAfterEvent(before, pdu), nil
	}
	switch current {
	case spec.Join:
		return a.rooms.CurrentState(ctx, roomID)
	case spec.Leave, spec.Ban:
		own, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomMember, userID)
		if err != nil || own == nil {
			return nil, err
		}
		stored, pdu, err := a.rooms.Event(ctx, own.EventID())
		if err != nil {
			return nil, err
		}
		before, err := a.rooms.StateBefore(ctx, stored)
		if err != nil {
			return nil, err
		}
		return stateAfterEvent(before, pdu), nil
	}
	if _, err := a.rooms.RoomVersion(ctx, roomID); err != nil {
		return nil, notMember
	}
	vis, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil {
		return nil, err
	}
	if vis == nil {
		return nil, notMember
	}
	var c struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	_ = json.Unmarshal(vis.Content(), &c)
	if c.HistoryVisibility != roomserver.VisWorldReadable {
		return nil, notMember
	}
	return a.rooms.CurrentState(ctx, roomID)
}

// stateAfterEvent is the state before an event with the event applied.
func stateAfterEvent(before []gomatrixserverlib.PDU, ev gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	if ev.StateKey() == nil {
		return before
	}
	out := make([]gomatrixserverlib.PDU, 0, len(before)+1)
	for _, s := range before {
		if s.Type() != ev.Type() || *s.StateKey() != *ev.StateKey() {
			out = append(out, s)
		}
	}
	return append(out, ev)
}

// eventStreamPos reads the room event stream position from a pagination
// token. No sync token format exists yet; this accepts a bare position,
// or one after an "s" and before any "_" (Synapse's shape: "s123_4_5"),
// which is where the sync API's tokens should keep it.
func eventStreamPos(token string) (int64, bool) {
	token = strings.TrimPrefix(token, "s")
	token, _, _ = strings.Cut(token, "_")
	pos, err := strconv.ParseInt(token, 10, 64)
	return pos, err == nil && pos >= 0
}

type joinedMember struct {
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// joinedMembers maps the room's joined members to the displayname and
// avatar in their member events; only members may ask.
func (a *API) joinedMembers(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	if err := a.requireJoined(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	state, err := a.rooms.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	joined := map[string]joinedMember{}
	for _, ev := range state {
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
			continue
		}
		var c struct {
			Membership  string `json:"membership"`
			DisplayName any    `json:"displayname"`
			AvatarURL   any    `json:"avatar_url"`
		}
		if json.Unmarshal(ev.Content(), &c) != nil || c.Membership != spec.Join {
			continue
		}
		m := joinedMember{}
		m.DisplayName, _ = c.DisplayName.(string)
		m.AvatarURL, _ = c.AvatarURL.(string)
		joined[*ev.StateKey()] = m
	}
	return map[string]any{"joined": joined}, nil
}

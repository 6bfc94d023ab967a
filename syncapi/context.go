package syncapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
	"github.com/weft-chat/weft/userapi"
)

// Limits of /context (event_context.yaml: default 10).
const (
	contextDefaultLimit = 10
	contextMaxLimit     = 1000
)

// contextResponse is the body of GET /context.
type contextResponse struct {
	Start        string        `json:"start"`
	End          string        `json:"end"`
	EventsBefore []ClientEvent `json:"events_before"`
	Event        ClientEvent   `json:"event"`
	EventsAfter  []ClientEvent `json:"events_after"`
	State        []ClientEvent `json:"state"`
}

// eventContext is GET /rooms/{roomId}/context/{eventId}: an event with
// the events around it and the room state at the last of them. The limit
// is shared between before and after as Synapse shares it (half before,
// the rest after); the filter applies to everything but the event itself.
func (a *API) eventContext(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return err
	}
	limit, err := queryLimit(r, contextDefaultLimit, contextMaxLimit)
	if err != nil {
		return err
	}
	ef, err := parseEventFilter(r.URL.Query().Get("filter"), roomID)
	if err != nil {
		return err
	}
	v, info, err := a.open(ctx, roomID, dev)
	if err != nil {
		return err
	}
	ev, err := a.visibleEvent(ctx, v, roomID, eventID)
	if err != nil {
		return err
	}
	keep := func(e sql.Event) (bool, error) {
		if !ef.matches(e) {
			return false, nil
		}
		return v.Shows(ctx, e)
	}
	beforeLimit := limit / 2
	earlier, err := paginate(ctx, a.timeline(info.NID), before(ev), sql.TopoStart, true, beforeLimit, keep)
	if err != nil {
		return err
	}
	later, err := paginate(ctx, a.timeline(info.NID), ev.Key(), sql.TopoEnd, false, limit-beforeLimit, keep)
	if err != nil {
		return err
	}
	last := ev
	if n := len(later.events); n > 0 {
		last = later.events[n-1]
	}
	state, err := a.stateAfter(ctx, last)
	if err != nil {
		return err
	}
	if ef.lazyMembers() {
		senders := map[string]bool{ev.Sender: true}
		for _, e := range append(slices.Clone(earlier.events), later.events...) {
			senders[e.Sender] = true
		}
		state = slices.DeleteFunc(state, func(s sql.Event) bool { return s.Type == spec.MRoomMember && !senders[*s.StateKey] })
	}
	state = slices.DeleteFunc(state, func(s sql.Event) bool { return !ef.matches(s) })

	resp := contextResponse{Start: TopoToken(earlier.next), End: TopoToken(later.next)}
	all := append(append(append([]sql.Event{}, earlier.events...), ev), later.events...)
	served, err := a.serve(ctx, v, dev, all, serveOptions{bundle: true})
	if err != nil {
		return err
	}
	nb := len(earlier.events)
	resp.EventsBefore, resp.Event, resp.EventsAfter = served[:nb], served[nb], served[nb+1:]
	if resp.State, err = a.serve(ctx, v, dev, state, serveOptions{}); err != nil {
		return err
	}
	return writeJSON(w, resp)
}

// visibleEvent loads an event of the room that the viewer may see: 404
// M_NOT_FOUND when it is unknown, in another room, not part of the
// timeline, hidden by history visibility or sent by an ignored user, so
// that the answer never tells an event exists that the caller may not see.
func (a *API) visibleEvent(ctx context.Context, v *view.Viewer, roomID, eventID string) (sql.Event, error) {
	notFound := mxhttp.NotFound("Event %s not found", eventID)
	ev, _, err := a.rooms.Event(ctx, eventID)
	var me *mxhttp.Error
	if errors.As(err, &me) && me.Status == http.StatusNotFound {
		return sql.Event{}, notFound
	}
	if err != nil {
		return sql.Event{}, err
	}
	if ev.RoomID != roomID || ev.Outlier || ev.Rejected || ev.StreamPos == 0 {
		return sql.Event{}, notFound
	}
	ok, err := v.Shows(ctx, ev)
	if err != nil {
		return sql.Event{}, err
	}
	if !ok {
		return sql.Event{}, notFound
	}
	return ev, nil
}

// stateAfter is the room state after an event, sorted by type and state
// key.
func (a *API) stateAfter(ctx context.Context, ev sql.Event) ([]sql.Event, error) {
	state, err := a.db.Snapshot(ctx, ev.StateBeforeNID)
	if err != nil {
		return nil, fmt.Errorf("state before %s: %w", ev.EventID, err)
	}
	if ev.StateKey != nil {
		state[sql.StateKey{Type: ev.Type, StateKey: *ev.StateKey}] = ev.NID
	}
	nids := make([]int64, 0, len(state))
	for _, nid := range state {
		nids = append(nids, nid)
	}
	evs, err := a.db.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(evs, func(x, y sql.Event) int {
		if c := strings.Compare(x.Type, y.Type); c != 0 {
			return c
		}
		return strings.Compare(*x.StateKey, *y.StateKey)
	})
	return evs, nil
}

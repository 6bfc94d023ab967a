package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
	"github.com/weft-chat/weft/userapi"
)

// ClientEvent is a client-format event as the timeline endpoints serve
// it: clientapi's format (with prev_content on state events) plus the
// bundled aggregations.
type ClientEvent struct {
	clientapi.ClientEvent
	// Relations is unsigned["m.relations"]; nil when the event has none.
	Relations map[string]any
}

// MarshalJSON writes clientapi's encoding with m.relations added to
// unsigned. It must be defined here: the embedded event's MarshalJSON
// would otherwise be promoted and leave the aggregations out.
func (e ClientEvent) MarshalJSON() ([]byte, error) {
	b := e.ClientEvent.AppendJSON(make([]byte, 0, 256+len(e.Content)))
	if len(e.Relations) == 0 {
		return b, nil
	}
	rel, err := json.Marshal(e.Relations)
	if err != nil {
		return nil, err
	}
	// AppendJSON ends with the closing braces of unsigned and of the event.
	b = append(b[:len(b)-2], `,"m.relations":`...)
	b = append(b, rel...)
	return append(b, "}}"...), nil
}

// serveOptions say what serve adds to the events.
type serveOptions struct {
	// bundle adds the bundled aggregations (spec: the endpoints that
	// should include them; not the state of /context or lazy members).
	bundle bool
}

// serve turns stored events into what the caller sees: the client format
// for their device, prev_content for state events, and the bundled
// aggregations of the events. evs must already be visible to v.
func (a *API) serve(ctx context.Context, v *view.Viewer, dev *userapi.Device, evs []sql.Event, opt serveOptions) ([]ClientEvent, error) {
	return a.serveRooms(ctx, func(int64) *view.Viewer { return v }, dev, evs, opt)
}

// serveRooms is serve for the events of several rooms, each seen by its
// own viewer (by room NID): what costs a query costs one for them all.
func (a *API) serveRooms(ctx context.Context, viewer func(roomNID int64) *view.Viewer, dev *userapi.Device, evs []sql.Event, opt serveOptions) ([]ClientEvent, error) {
	if len(evs) == 0 {
		return []ClientEvent{}, nil
	}
	var bundles view.Bundles
	all := evs
	if opt.bundle {
		var err error
		if bundles, err = view.BundleRooms(ctx, a.db, viewer, evs); err != nil {
			return nil, err
		}
		all = append(append([]sql.Event{}, evs...), bundles.Carried()...)
	}
	pdus := make([]gomatrixserverlib.PDU, len(all))
	for i, ev := range all {
		pdu, err := a.parsed.pdu(ev)
		if err != nil {
			return nil, err
		}
		pdus[i] = pdu
	}
	formatted, err := clientapi.ClientEvents(ctx, a.events, pdus, dev, time.Now())
	if err != nil {
		return nil, err
	}
	prev, err := a.prevContents(ctx, all)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]clientapi.ClientEvent, len(all))
	for i, ce := range formatted {
		ce.Unsigned.PrevContent = prev[all[i].EventID]
		byID[ce.EventID] = ce
	}
	var render func(sql.Event) any
	render = func(ev sql.Event) any {
		return ClientEvent{ClientEvent: byID[ev.EventID], Relations: bundles.Relations(ev.EventID, render)}
	}
	out := make([]ClientEvent, len(evs))
	for i, ev := range evs {
		out[i] = render(ev).(ClientEvent)
	}
	return out, nil
}

// prevContents finds the content each state event replaced
// (unsigned.prev_content), keyed by event id: the same piece of state in
// the snapshot before the event.
func (a *API) prevContents(ctx context.Context, evs []sql.Event) (map[string]json.RawMessage, error) {
	replaced := make(map[int64][]string) // NID of the previous state event -> ids of the events replacing it
	for _, ev := range evs {
		if ev.StateKey == nil || ev.StateBeforeNID == 0 {
			continue
		}
		nid, err := a.db.SnapshotKey(ctx, ev.StateBeforeNID, sql.StateKey{Type: ev.Type, StateKey: *ev.StateKey})
		if err != nil {
			return nil, fmt.Errorf("state before %s: %w", ev.EventID, err)
		}
		if nid != 0 {
			replaced[nid] = append(replaced[nid], ev.EventID)
		}
	}
	if len(replaced) == 0 {
		return nil, nil
	}
	nids := make([]int64, 0, len(replaced))
	for nid := range replaced {
		nids = append(nids, nid)
	}
	prevs, err := a.db.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(prevs))
	for _, p := range prevs {
		var e struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(p.JSON, &e) != nil || len(e.Content) == 0 {
			continue
		}
		for _, id := range replaced[p.NID] {
			out[id] = e.Content
		}
	}
	return out, nil
}

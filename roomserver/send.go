package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
)

// MaxEventBytes is the spec's limit on a whole event's JSON.
const MaxEventBytes = 65536

// maxPrevEvents bounds prev_events, as Synapse does, when a room has many
// forward extremities.
const maxPrevEvents = 10

// sendEvent builds a local user's event on top of the room's current state
// and commits it. Called with the room lock held.
func (rs *Roomserver) sendEvent(ctx context.Context, inputID, roomID string, ne *NewEvent) (string, error) {
	v, err := rs.view(ctx, roomID)
	if err != nil {
		return "", err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v.info.Version))
	if err != nil {
		return "", mxhttp.Errorf(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %s", v.info.Version)
	}
	prev := v.info.Extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	lookup := func(ctx context.Context, k sql.StateKey) (gomatrixserverlib.PDU, error) {
		nid, ok := v.state[k]
		if !ok {
			return nil, nil
		}
		evs, err := rs.pdus(ctx, &rs.db.Queries, []int64{nid})
		return evs[nid], err
	}
	ev, err := rs.buildEvent(ctx, verImpl, roomID, prev, v.info.MaxDepth+1, lookup, ne)
	if err != nil {
		return "", err
	}
	if err := rs.commit(ctx, v, inputID, []pending{{pdu: ev, ne: ne}}); err != nil {
		return "", err
	}
	return ev.EventID(), nil
}

// stateLookup returns the event holding a piece of state, or nil.
type stateLookup func(context.Context, sql.StateKey) (gomatrixserverlib.PDU, error)

// buildEvent builds and signs an event on the given prev events and
// checks it against the auth rules with the state that lookup sees.
func (rs *Roomserver) buildEvent(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID string, prev []string, depth int64,
	lookup stateLookup, ne *NewEvent) (gomatrixserverlib.PDU, error) {
	if len(ne.Content) == 0 {
		ne.Content = json.RawMessage("{}")
	}
	if prev == nil {
		prev = []string{}
	}
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: ne.Sender, RoomID: roomID, Type: ne.Type, StateKey: ne.StateKey,
		Content: spec.RawJSON(ne.Content), Redacts: ne.Redacts,
		PrevEvents: prev, Depth: depth, Version: verImpl,
	}
	if ne.Type == spec.MRoomRedaction && ne.Redacts != "" {
		var err error
		if proto.Content, err = withRedacts(proto.Content, ne.Redacts, verImpl); err != nil {
			return nil, err
		}
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		return nil, mxhttp.BadJSON("%v", err)
	}
	var authEvents []gomatrixserverlib.PDU
	for _, t := range needed.Tuples() {
		e, err := lookup(ctx, sql.StateKey{Type: t.EventType, StateKey: t.StateKey})
		if err != nil {
			return nil, fmt.Errorf("load auth events: %w", err)
		}
		if e != nil {
			authEvents = append(authEvents, e)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return nil, fmt.Errorf("auth events: %w", err)
	}
	builder := verImpl.NewEventBuilderFromProtoEvent(&proto)
	if err := builder.AddAuthEvents(provider); err != nil {
		return nil, mxhttp.BadJSON("Cannot build event: %v", err)
	}
	ev, err := builder.Build(rs.now(), rs.serverName, rs.key.ID, rs.key.Private)
	if err != nil {
		return nil, mxhttp.BadJSON("Cannot build event: %v", err)
	}
	if len(ev.JSON()) > MaxEventBytes {
		return nil, mxhttp.TooLarge("Event is larger than %d bytes", MaxEventBytes)
	}
	if err := gomatrixserverlib.Allowed(ev, provider, userIDForSender); err != nil {
		var notAllowed *gomatrixserverlib.NotAllowed
		if errors.As(err, &notAllowed) {
			return nil, mxhttp.Forbidden("%s", notAllowed.Message)
		}
		return nil, mxhttp.Forbidden("%v", err)
	}
	return ev, nil
}

// withRedacts copies redacts into the content for room versions whose
// redaction events carry it there (v11 and later).
func withRedacts(content spec.RawJSON, redacts string, verImpl gomatrixserverlib.IRoomVersion) (spec.RawJSON, error) {
	switch verImpl.Version() {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10":
		return content, nil
	}
	var m map[string]any
	if err := json.Unmarshal(content, &m); err != nil {
		return nil, mxhttp.BadJSON("content must be an object")
	}
	m["redacts"] = redacts
	return json.Marshal(m)
}

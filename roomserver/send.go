package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

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

// maxStaleRetries bounds how often an input is built again after its room
// turned out to have been written by another process.
const maxStaleRetries = 3

// send handles the new events reqs[idx...] of an input batch, setting
// their results. They are built in order, each on the room as the ones
// before it leave it, and committed in one transaction. If the commit
// finds inputs handled before (a client's retry, a redelivery), those
// are answered with what they made then and the others committed again
// together; if it fails otherwise, each input is tried again alone, so
// one bad input fails alone.
func (rs *Roomserver) send(ctx context.Context, reqs []InputRequest, idx []int, res []inputResult) {
	if len(idx) == 0 {
		return
	}
	err := rs.trySend(ctx, reqs, idx, res)
	if err == nil {
		return
	}
	if len(idx) > 1 && errors.Is(err, errInputDone) {
		if left := rs.answerDone(ctx, reqs, idx, res); len(left) < len(idx) {
			rs.send(ctx, reqs, left, res)
			return
		}
	}
	if len(idx) > 1 {
		rs.log.Warn("room input batch failed to commit, retrying its inputs one by one", "inputs", len(idx), "err", err)
		for _, i := range idx {
			res[i] = inputResult{}
			rs.send(ctx, reqs, []int{i}, res)
		}
		return
	}
	i := idx[0]
	for attempt := 0; errors.Is(err, sql.ErrStale) && attempt < maxStaleRetries; attempt++ {
		res[i] = inputResult{}
		if err = rs.trySend(ctx, reqs, idx, res); err == nil {
			return
		}
	}
	if errors.Is(err, errInputDone) {
		res[i].resp, res[i].err = rs.previousResult(ctx, reqs[i].InputID)
		return
	}
	res[i] = inputResult{err: err}
}

// answerDone answers the inputs of reqs[idx...] that were handled before
// with what they made, and returns the others (all of them if the read
// fails).
func (rs *Roomserver) answerDone(ctx context.Context, reqs []InputRequest, idx []int, res []inputResult) []int {
	var ids []string
	for _, i := range idx {
		if reqs[i].InputID != "" {
			ids = append(ids, reqs[i].InputID)
		}
	}
	done, err := rs.db.InputResults(ctx, ids)
	if err != nil {
		return idx
	}
	var left []int
	for _, i := range idx {
		in, ok := done[reqs[i].InputID]
		if !ok {
			res[i] = inputResult{}
			left = append(left, i)
			continue
		}
		res[i] = inputResult{resp: InputResponse{RoomID: in.RoomID, EventIDs: in.EventIDs}}
	}
	return left
}

// unlessDone returns the answer of an input handled before instead of
// err, its failure now: a retry must get what the first try made even
// when the same input would now be refused (its sender has left, say).
func (rs *Roomserver) unlessDone(ctx context.Context, inputID string, err error) (InputResponse, error) {
	if inputID == "" {
		return InputResponse{}, err
	}
	if resp, prevErr := rs.previousResult(ctx, inputID); prevErr == nil {
		return resp, nil
	}
	return InputResponse{}, err
}

// previousResult is the answer to an input handled before.
func (rs *Roomserver) previousResult(ctx context.Context, inputID string) (InputResponse, error) {
	done, err := rs.db.InputResults(ctx, []string{inputID})
	if err != nil {
		return InputResponse{}, fmt.Errorf("look up input %s: %w", inputID, err)
	}
	in, ok := done[inputID]
	if !ok {
		return InputResponse{}, fmt.Errorf("input %s was handled but is not recorded", inputID)
	}
	return InputResponse{RoomID: in.RoomID, EventIDs: in.EventIDs}, nil
}

// roomWork is a room's share of an input batch being built: the commit it
// is filling and the room as its pending events leave it.
type roomWork struct {
	rc      *roomCommit
	tip     sql.RoomInfo                           // extremities and depth after the pending events
	overlay map[sql.StateKey]gomatrixserverlib.PDU // state set by the pending events
}

// trySend builds and commits reqs[idx...], setting the results of the
// inputs that fail to build (refusals, unknown rooms) and of those
// committed. It returns the commit's error, leaving the other results to
// the caller. It takes the rooms' locks and releases them when done.
func (rs *Roomserver) trySend(ctx context.Context, reqs []InputRequest, idx []int, res []inputResult) error {
	works := make(map[string]*roomWork)
	var rcs []*roomCommit
	var unlocks []func()
	defer func() {
		for _, u := range slices.Backward(unlocks) {
			u()
		}
	}()
	for _, i := range idx {
		req := reqs[i]
		w := works[req.RoomID]
		if w == nil {
			unlock := rs.rooms.lock(req.RoomID)
			v, err := rs.view(ctx, req.RoomID)
			if err != nil {
				unlock()
				res[i].resp, res[i].err = rs.unlessDone(ctx, req.InputID, err)
				continue
			}
			unlocks = append(unlocks, unlock)
			w = &roomWork{rc: &roomCommit{v: v}, tip: v.info, overlay: make(map[sql.StateKey]gomatrixserverlib.PDU)}
			works[req.RoomID] = w
			rcs = append(rcs, w.rc)
		}
		id, err := rs.buildInto(ctx, w, req.InputID, req.NewEvent)
		if err != nil {
			res[i].resp, res[i].err = rs.unlessDone(ctx, req.InputID, err)
			continue
		}
		res[i].resp = InputResponse{RoomID: req.RoomID, EventIDs: []string{id}}
	}
	rcs = slices.DeleteFunc(rcs, func(rc *roomCommit) bool { return len(rc.evs) == 0 })
	if len(rcs) == 0 {
		return nil
	}
	return rs.commit(ctx, rcs)
}

// buildInto builds a local user's event on top of w's room and adds it to
// w's pending events. Called with the room lock held.
func (rs *Roomserver) buildInto(ctx context.Context, w *roomWork, inputID string, ne *NewEvent) (string, error) {
	roomID := w.tip.RoomID
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(w.tip.Version))
	if err != nil {
		return "", mxhttp.Errorf(400, "M_UNSUPPORTED_ROOM_VERSION", "Unsupported room version %s", w.tip.Version)
	}
	prev := w.tip.Extremities
	if len(prev) > maxPrevEvents {
		prev = prev[len(prev)-maxPrevEvents:]
	}
	lookup := func(ctx context.Context, k sql.StateKey) (gomatrixserverlib.PDU, error) {
		if e, ok := w.overlay[k]; ok {
			return e, nil
		}
		nid, ok := w.rc.v.state[k]
		if !ok {
			return nil, nil
		}
		if e, ok := rs.events.Get(nid); ok {
			return e, nil
		}
		evs, err := rs.pdus(ctx, &rs.db.Queries, []int64{nid})
		return evs[nid], err
	}
	ev, err := rs.buildEvent(ctx, verImpl, roomID, slices.Clone(prev), w.tip.MaxDepth+1, lookup, ne, rs.now())
	if err != nil {
		return "", err
	}
	if invitesRemoteUser(ev, rs.serverName) {
		if ev, err = rs.countersigned(ctx, verImpl, ev, lookup); err != nil {
			return "", err
		}
	}
	w.rc.evs = append(w.rc.evs, pending{pdu: ev, ne: ne})
	if inputID != "" {
		w.rc.inputs = append(w.rc.inputs, sql.InputRecord{InputID: inputID, RoomID: roomID, EventIDs: []string{ev.EventID()}})
	}
	w.tip.Extremities = nextExtremities(slices.Clone(w.tip.Extremities), ev)
	w.tip.MaxDepth = max(w.tip.MaxDepth, ev.Depth())
	if sk := ev.StateKey(); sk != nil {
		w.overlay[sql.StateKey{Type: ev.Type(), StateKey: *sk}] = ev
	}
	return ev.EventID(), nil
}

// stateLookup returns the event holding a piece of state, or nil.
type stateLookup func(context.Context, sql.StateKey) (gomatrixserverlib.PDU, error)

// buildEvent builds and signs an event on the given prev events and
// checks it against the auth rules with the state that lookup sees.
func (rs *Roomserver) buildEvent(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, roomID string, prev []string, depth int64,
	lookup stateLookup, ne *NewEvent, now time.Time) (gomatrixserverlib.PDU, error) {
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
	ev, fast, err := buildFast(builder, verImpl, now, rs.serverName, rs.key.ID, rs.key.Private)
	if !fast {
		ev, err = builder.Build(now, rs.serverName, rs.key.ID, rs.key.Private)
	}
	var invalid gomatrixserverlib.EventValidationError
	if errors.As(err, &invalid) && invalid.Code == gomatrixserverlib.EventValidationTooLarge {
		// Build checks the size limits itself (spec: Size limits).
		return nil, mxhttp.TooLarge("%s", invalid.Message)
	}
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

// invitesRemoteUser reports whether ev invites a user of another server,
// whose server must countersign it before it is sent.
func invitesRemoteUser(ev gomatrixserverlib.PDU, local spec.ServerName) bool {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
		return false
	}
	if m, err := ev.Membership(); err != nil || m != spec.Invite {
		return false
	}
	u, err := spec.NewUserID(*ev.StateKey(), true)
	return err == nil && u.Domain() != local
}

package syncapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// strippedEvent is a state event reduced to what a user who is not in the
// room may see of it (spec: Stripped state).
type strippedEvent struct {
	Content  json.RawMessage `json:"content"`
	Sender   string          `json:"sender"`
	StateKey string          `json:"state_key"`
	Type     string          `json:"type"`
}

// stripped puts an invite or a knock in the response: the stripped state
// of the room as it was when the membership event was sent, and the
// membership event itself, stripped too. Invites from users the caller
// ignores are left out, as Synapse leaves them out.
func (b *syncBuilder) stripped(ctx context.Context, m sql.SyncMembership, eventNID int64, membership string) error {
	evs, err := b.a.db.EventsByNID(ctx, []int64{eventNID})
	if err != nil || len(evs) == 0 {
		return err
	}
	own := evs[0]
	if membership == spec.Invite && (b.invitesBlocked || b.ignored[own.Sender]) {
		return nil
	}
	if own.Outlier {
		return b.outOfBand(ctx, m, own, membership)
	}
	vals, err := b.a.db.SnapshotKeys(ctx, own.StateBeforeNID, roomserver.StrippedStateKeys)
	if err != nil {
		return fmt.Errorf("stripped state: %w", err)
	}
	state, err := b.a.db.EventsByNID(ctx, nidsOf(vals))
	if err != nil {
		return fmt.Errorf("stripped state: %w", err)
	}
	order := func(ev sql.Event) int {
		return slices.IndexFunc(roomserver.StrippedStateKeys, func(k sql.StateKey) bool { return k.Type == ev.Type })
	}
	slices.SortFunc(state, func(x, y sql.Event) int { return cmp.Compare(order(x), order(y)) })
	list := &strippedList{Events: make([]strippedEvent, 0, len(state)+1)}
	for _, ev := range append(state, own) {
		s, err := stripEvent(ev)
		if err != nil {
			return err
		}
		list.Events = append(list.Events, s)
	}
	b.putStripped(m.RoomID, membership, list)
	return nil
}

// outOfBand puts an invite from another server to a room this server is
// not in, or a knock on one: the room state that server sent (entries a
// client could not read are left out: that server's mistake must not
// break our user's sync), then the invite or knock.
func (b *syncBuilder) outOfBand(ctx context.Context, m sql.SyncMembership, own sql.Event, membership string) error {
	raw, err := b.a.db.InviteRoomState(ctx, own.NID)
	if err != nil {
		return fmt.Errorf("invite room state: %w", err)
	}
	var sent []json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &sent); err != nil {
			return fmt.Errorf("invite room state of %s: %w", own.EventID, err)
		}
	}
	list := &strippedList{Events: make([]strippedEvent, 0, len(sent)+1)}
	for _, js := range sent {
		var e strippedEvent
		if json.Unmarshal(js, &e) != nil || e.Type == "" || !bytes.HasPrefix(bytes.TrimSpace(e.Content), []byte("{")) {
			continue
		}
		list.Events = append(list.Events, e)
	}
	s, err := stripEvent(own)
	if err != nil {
		return err
	}
	list.Events = append(list.Events, s)
	b.putStripped(m.RoomID, membership, list)
	return nil
}

// putStripped puts an invite's or a knock's stripped state in the
// response.
func (b *syncBuilder) putStripped(roomID, membership string, list *strippedList) {
	rooms := b.rooms()
	if membership == spec.Knock {
		if rooms.Knock == nil {
			rooms.Knock = make(map[string]*strippedRoom)
		}
		rooms.Knock[roomID] = &strippedRoom{KnockState: list}
		return
	}
	if rooms.Invite == nil {
		rooms.Invite = make(map[string]*strippedRoom)
	}
	rooms.Invite[roomID] = &strippedRoom{InviteState: list}
}

func stripEvent(ev sql.Event) (strippedEvent, error) {
	var e struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(ev.JSON, &e); err != nil {
		return strippedEvent{}, fmt.Errorf("event %s: %w", ev.EventID, err)
	}
	if len(e.Content) == 0 {
		e.Content = json.RawMessage("{}")
	}
	s := strippedEvent{Content: e.Content, Sender: ev.Sender, Type: ev.Type}
	if ev.StateKey != nil {
		s.StateKey = *ev.StateKey
	}
	return s, nil
}

// project applies the filter's event_fields to served events: only the
// listed fields (dot-separated paths, spec: Dot-separated property paths)
// are kept. Without event_fields the events are left as they are.
func (b *syncBuilder) project(evs []any) ([]any, error) {
	fields := b.req.filter.f.EventFields
	if fields == nil {
		return evs, nil
	}
	paths := make([][]string, len(fields))
	for i, f := range fields {
		paths[i] = splitFieldPath(f)
	}
	out := make([]any, len(evs))
	for i, ev := range evs {
		raw, err := json.Marshal(ev)
		if err != nil {
			return nil, err
		}
		var full map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber() // keep large integers exact
		if err := dec.Decode(&full); err != nil {
			return nil, err
		}
		kept := make(map[string]any)
		for _, p := range paths {
			copyPath(full, kept, p)
		}
		out[i] = kept
	}
	return out, nil
}

// splitFieldPath splits a dot-separated path, where "\." is a literal dot
// and "\\" a literal backslash.
func splitFieldPath(path string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '\\' && i+1 < len(path) && (path[i+1] == '.' || path[i+1] == '\\'):
			cur.WriteByte(path[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// copyPath copies the value at path from src into dst, making the
// objects on the way; a path that src does not have copies nothing.
func copyPath(src, dst map[string]any, path []string) {
	v, ok := src[path[0]]
	if !ok {
		return
	}
	if len(path) == 1 {
		dst[path[0]] = v
		return
	}
	child, ok := v.(map[string]any)
	if !ok {
		return
	}
	next, existed := dst[path[0]].(map[string]any)
	if !existed {
		next = make(map[string]any)
	}
	copyPath(child, next, path[1:])
	if existed || len(next) > 0 {
		dst[path[0]] = next
	}
}

package view

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/weft-chat/weft/sql"
)

// Relation types the server aggregates: sql's, which sync's timeline
// reads check for (sql.Event.NoBundledChildren).
const (
	RelThread    = sql.RelThread
	RelReplace   = sql.RelReplace
	RelReference = sql.RelReference
)

// Children reads the relations index (sql.DB has it).
type Children interface {
	ChildrenOf(ctx context.Context, roomNIDs []int64, parentIDs, relTypes, bodies []string) ([]sql.Relation, error)
	EventsByNID(ctx context.Context, nids []int64) ([]sql.Event, error)
}

// Aggregations are one event's bundled aggregations, before they are
// rendered into unsigned["m.relations"].
type Aggregations struct {
	Thread *Thread
	// Replace is the most recent valid edit.
	Replace *sql.Event
	// References are the ids of the events that reference this one.
	References []string
}

// Thread is the m.thread aggregation of a thread root.
type Thread struct {
	Latest       sql.Event
	Count        int
	Participated bool
}

// Bundles are the aggregations of a batch of events, by event id. They
// include the aggregations of the events the bundles carry (a thread's
// latest event may have an edit: the spec asks for its aggregations too).
type Bundles map[string]*Aggregations

// maxNesting bounds how deep carried events get bundles of their own. The
// rules leave no cycles anyway (a thread root is not a relation, an edit
// cannot be edited), and the spec asks for nothing past the latest
// event's own aggregations.
const maxNesting = 1

// BundleRooms computes the bundled aggregations of evs as each room's viewer may see
// them. Children the viewer cannot see, or whose sender they ignore,
// count for nothing (spec: "Servers must additionally ensure they do not
// consider child events from ignored users when preparing an
// aggregation"). The rules, per relation type:
//
//   - m.thread: latest event (topologically), count, and whether the
//     viewer sent the root or a thread event; for roots that are not
//     themselves relations (threads do not nest).
//   - m.replace: the most recent valid edit (greatest origin_server_ts,
//     then greatest event id); its content is not applied to the original
//     (spec v1.7). None for a redacted original.
//   - m.reference: the ids of the referencing events.
//
// m.annotation is not aggregated (spec: Event annotations), and state
// events get no bundles (spec: "State events do not currently receive
// bundled aggregations").
//
// The events may be of several rooms, each seen by its own viewer (by
// room NID); one query runs per nesting level.
func BundleRooms(ctx context.Context, db Children, viewer func(roomNID int64) *Viewer, evs []sql.Event) (Bundles, error) {
	out := make(Bundles)
	done := make(map[string]bool)
	level := evs
	for nesting := 0; nesting <= maxNesting && len(level) > 0; nesting++ {
		carried, err := bundle(ctx, db, viewer, level, out, done)
		if err != nil {
			return nil, err
		}
		level = carried
	}
	return out, nil
}

// Carried lists the events the bundles carry, which the caller serialises
// with its own events so that Relations can render them.
func (b Bundles) Carried() []sql.Event {
	var out []sql.Event
	for _, g := range b {
		if g.Thread != nil {
			out = append(out, g.Thread.Latest)
		}
		if g.Replace != nil {
			out = append(out, *g.Replace)
		}
	}
	return out
}

// Relations renders an event's aggregations as the value of
// unsigned["m.relations"] (nil when it has none); render gives the client
// form of a carried event, which should carry its own m.relations.
func (b Bundles) Relations(eventID string, render func(sql.Event) any) map[string]any {
	g := b[eventID]
	if g == nil {
		return nil
	}
	out := make(map[string]any)
	if th := g.Thread; th != nil {
		out[RelThread] = map[string]any{"latest_event": render(th.Latest), "count": th.Count,
			"current_user_participated": th.Participated}
	}
	if g.Replace != nil {
		out[RelReplace] = render(*g.Replace)
	}
	if len(g.References) > 0 {
		chunk := make([]map[string]string, len(g.References))
		for i, id := range g.References {
			chunk[i] = map[string]string{"event_id": id}
		}
		out[RelReference] = map[string]any{"chunk": chunk}
	}
	return out
}

// bundle adds the aggregations of evs to out, skipping events done
// already and those read with no bundled children, and returns the events
// they carry. With no event left it queries nothing: most of a sync's
// timeline is plain messages.
func bundle(ctx context.Context, db Children, viewer func(int64) *Viewer, evs []sql.Event, out Bundles, done map[string]bool) ([]sql.Event, error) {
	parents := make(map[string]sql.Event)
	var ids []string
	var rooms []int64
	for _, ev := range evs {
		if ev.StateKey != nil || ev.NoBundledChildren || done[ev.EventID] {
			continue
		}
		done[ev.EventID] = true
		parents[ev.EventID] = ev
		ids = append(ids, ev.EventID)
		if !slices.Contains(rooms, ev.RoomNID) {
			rooms = append(rooms, ev.RoomNID)
		}
	}
	get := func(id string) *Aggregations {
		if out[id] == nil {
			out[id] = &Aggregations{}
		}
		return out[id]
	}
	if len(ids) == 0 {
		return nil, nil
	}
	threads := make(map[string]*Thread)
	// Threads and references are counted and ordered, never read, so their
	// bodies stay in the database; only edits need theirs (for
	// m.new_content).
	children, err := db.ChildrenOf(ctx, rooms, ids, []string{RelThread, RelReference, RelReplace}, []string{RelReplace})
	if err != nil {
		return nil, fmt.Errorf("children of %d events: %w", len(ids), err)
	}
	for _, c := range children {
		parent := parents[c.ParentID]
		if c.Event.RoomNID != parent.RoomNID {
			continue // an event of another room that names the parent's id
		}
		v := viewer(parent.RoomNID)
		shown, err := v.Shows(ctx, c.Event)
		if err != nil {
			return nil, err
		}
		if !shown {
			continue
		}
		switch c.RelType {
		case RelThread:
			if relType(parent) != "" {
				continue // threads cannot start from a relation
			}
			th := threads[c.ParentID]
			if th == nil {
				th = &Thread{Participated: parent.Sender == v.UserID}
				threads[c.ParentID] = th
			}
			th.Count++
			// Children come oldest first: the last one is the latest.
			th.Latest = c.Event
			th.Participated = th.Participated || c.Event.Sender == v.UserID
		case RelReplace:
			if !validEdit(parent, c.Event) {
				continue
			}
			g := get(c.ParentID)
			if g.Replace == nil || newerEdit(c.Event, *g.Replace) {
				e := c.Event
				g.Replace = &e
			}
		case RelReference:
			g := get(c.ParentID)
			g.References = append(g.References, c.Event.EventID)
		}
	}
	var carried []sql.Event
	if len(threads) > 0 {
		// The latest thread events were read without their bodies.
		nids := make([]int64, 0, len(threads))
		for _, th := range threads {
			nids = append(nids, th.Latest.NID)
		}
		loaded, err := db.EventsByNID(ctx, nids)
		if err != nil {
			return nil, fmt.Errorf("latest thread events: %w", err)
		}
		byNID := make(map[int64]sql.Event, len(loaded))
		for _, e := range loaded {
			byNID[e.NID] = e
		}
		for id, th := range threads {
			th.Latest = byNID[th.Latest.NID]
			get(id).Thread = th
			carried = append(carried, th.Latest)
		}
	}
	for id := range parents {
		if g := out[id]; g != nil && g.Replace != nil {
			carried = append(carried, *g.Replace)
		}
	}
	return carried, nil
}

// validEdit applies the spec's rules for a valid replacement (Event
// replacements, "Validity of replacement events"); the same room is
// guaranteed by the relations index, which only pairs events of a room.
func validEdit(original, edit sql.Event) bool {
	if original.RedactedBy != "" || original.StateKey != nil || edit.StateKey != nil {
		return false
	}
	if original.Sender != edit.Sender || original.Type != edit.Type || relType(original) == RelReplace {
		return false
	}
	// An encrypted edit carries m.new_content inside the ciphertext, where
	// the server cannot look.
	if edit.Type == "m.room.encrypted" {
		return true
	}
	var e struct {
		Content struct {
			NewContent map[string]any `json:"m.new_content"`
		} `json:"content"`
	}
	return json.Unmarshal(edit.JSON, &e) == nil && e.Content.NewContent != nil
}

// newerEdit orders edits as the spec does: by origin_server_ts, then by
// the lexicographically larger event id.
func newerEdit(a, b sql.Event) bool {
	if a.OriginServerTS != b.OriginServerTS {
		return a.OriginServerTS > b.OriginServerTS
	}
	return a.EventID > b.EventID
}

// relType is the rel_type an event's content declares ("" for none).
func relType(ev sql.Event) string {
	var e struct {
		Content struct {
			RelatesTo struct {
				RelType any `json:"rel_type"`
			} `json:"m.relates_to"`
		} `json:"content"`
	}
	if json.Unmarshal(ev.JSON, &e) != nil {
		return ""
	}
	s, _ := e.Content.RelatesTo.RelType.(string)
	return s
}

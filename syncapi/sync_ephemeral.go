package syncapi

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/filter"
)

// Ephemeral event types a sync serves in a joined room's ephemeral
// section.
const (
	typingEventType  = "m.typing"
	receiptEventType = "m.receipt"
)

// readEphemeral fills b.ephemeral with the typing and receipt events of
// the joined rooms for the window: an m.typing event for each room whose
// typing list changed in (since, upper] of the typing stream (in an
// initial sync, each room where someone types), listing who types now;
// an m.receipt event for each room with receipts written in (since,
// upper] of the receipts stream (in an initial sync, every receipt of the
// room). Each is one query for all the rooms. The caller's ignored users
// are left out of both, and the room filter's ephemeral section applies:
// rooms and types to the events, senders to the users they are about
// (typing and receipt events have no sender of their own), limit to the
// events of each room. Typing comes before receipts, as in Synapse.
func (b *syncBuilder) readEphemeral(ctx context.Context, joined []sql.SyncMembership) error {
	if len(joined) == 0 {
		return nil
	}
	// The filter of each room, by room NID, for the rooms that take any
	// ephemeral event at all.
	filters := make(map[int64]*eventFilter, len(joined))
	roomIDs := make(map[int64]string, len(joined))
	wantTyping, wantReceipts := false, false
	for _, m := range joined {
		ef := b.req.filter.ephemeral(m.RoomID)
		if !ef.roomOK {
			continue
		}
		filters[m.RoomNID], roomIDs[m.RoomNID] = ef, m.RoomID
		wantTyping = wantTyping || ef.typeOK(typingEventType)
		wantReceipts = wantReceipts || ef.typeOK(receiptEventType)
	}
	events := make(map[int64][]any)
	if wantTyping && (b.initial || b.since.Typing < b.upper.Typing) {
		lists, err := b.a.db.SyncTyping(ctx, b.req.dev.UserID, b.since.Typing, b.upper.Typing, time.Now().UnixMilli())
		if err != nil {
			return fmt.Errorf("typing: %w", err)
		}
		for nid, users := range lists {
			ef := filters[nid]
			if ef == nil || !ef.typeOK(typingEventType) {
				continue
			}
			shown := []string{}
			for _, u := range users {
				if b.userShown(ef, u) {
					shown = append(shown, u)
				}
			}
			if b.initial && len(shown) == 0 {
				continue // nobody types: an initial sync has nothing to replace
			}
			events[nid] = append(events[nid], typingEvent{Type: typingEventType, Content: typingContent{UserIDs: shown}})
		}
	}
	if wantReceipts && (b.initial || b.since.Receipts < b.upper.Receipts) {
		receipts, err := b.a.db.SyncReceipts(ctx, b.req.dev.UserID, b.since.Receipts, b.upper.Receipts)
		if err != nil {
			return fmt.Errorf("receipts: %w", err)
		}
		contents := make(map[int64]receiptContent)
		for _, r := range receipts {
			ef := filters[r.RoomNID]
			if ef == nil || !ef.typeOK(receiptEventType) || !b.userShown(ef, r.UserID) {
				continue
			}
			c := contents[r.RoomNID]
			if c == nil {
				c = make(receiptContent)
				contents[r.RoomNID] = c
			}
			c.add(r)
		}
		for nid, c := range contents {
			events[nid] = append(events[nid], receiptEvent{Type: receiptEventType, Content: c})
		}
	}
	if len(events) == 0 {
		return nil
	}
	if b.ephemeral == nil {
		b.ephemeral = make(map[string][]any, len(events))
	}
	for nid, evs := range events {
		if limit := filters[nid].f.Limit; limit != nil && len(evs) > *limit {
			evs = evs[:*limit]
		}
		roomID := roomIDs[nid]
		b.ephemeral[roomID] = append(b.ephemeral[roomID], evs...)
	}
	return nil
}

// userShown reports whether the ephemeral events may mention user: not
// one the caller ignores, and one the filter's senders let through.
func (b *syncBuilder) userShown(ef *eventFilter, user string) bool {
	if b.ignored[user] {
		return false
	}
	f := &ef.f
	return !slices.Contains(f.NotSenders, user) && (f.Senders == nil || slices.Contains(f.Senders, user))
}

// ephemeral returns a room's filter for the ephemeral section.
func (sf *syncFilter) ephemeral(roomID string) *eventFilter {
	return sf.section(func(r *filter.RoomFilter) *filter.RoomEventFilter { return r.Ephemeral }, roomID)
}

// typeOK applies the filter's types and not_types to an event type.
func (ef *eventFilter) typeOK(typ string) bool {
	return typeAllowed(ef.f.Types, ef.f.NotTypes, typ)
}

// typingEvent is an m.typing event (spec: m.typing): the full list of the
// users typing, which replaces what the client knew.
type typingEvent struct {
	Type    string        `json:"type"`
	Content typingContent `json:"content"`
}

type typingContent struct {
	UserIDs []string `json:"user_ids"`
}

// receiptEvent is an m.receipt event (spec: m.receipt), batched per room.
type receiptEvent struct {
	Type    string         `json:"type"`
	Content receiptContent `json:"content"`
}

// receiptContent maps event id, then receipt type, then user id to the
// receipt.
type receiptContent map[string]map[string]map[string]receiptData

// receiptData is one user's receipt: its time, and its thread unless it
// is unthreaded.
type receiptData struct {
	TS       int64  `json:"ts"`
	ThreadID string `json:"thread_id,omitempty"`
}

func (c receiptContent) add(r sql.Receipt) {
	byType := c[r.EventID]
	if byType == nil {
		byType = make(map[string]map[string]receiptData)
		c[r.EventID] = byType
	}
	users := byType[r.Type]
	if users == nil {
		users = make(map[string]receiptData)
		byType[r.Type] = users
	}
	users[r.UserID] = receiptData{TS: r.TS, ThreadID: r.ThreadID}
}

package syncapi

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/sql"
)

// Presence is what /sync needs of presence (presence.Service has it).
type Presence interface {
	// Synced records a sync of the user with set_presence that waits up
	// to wait.
	Synced(ctx context.Context, userID, setPresence string, wait time.Duration) error
	// Content is a stored presence as clients see it now.
	Content(p sql.Presence) presence.Content
}

// WithPresence turns presence on: syncs update the caller's presence and
// carry the presence section. Without it neither happens.
func WithPresence(p Presence) Option {
	return func(a *API) { a.presence = p }
}

// presenceMaxEvents caps one response's presence section. An incremental
// sync serves the rest of its window in the next response; an initial
// sync keeps the most recent changes (Synapse sends them all).
const presenceMaxEvents = 500

// syncedPresence records the sync in the caller's presence before the
// response is built, so that it carries the caller's own new presence as
// Synapse's does. Presence is best effort: a failure is logged, not
// served.
func (a *API) syncedPresence(ctx context.Context, req *syncRequest, wait bool) {
	if a.presence == nil {
		return
	}
	var d time.Duration
	if wait {
		d = req.timeout
	}
	if err := a.presence.Synced(ctx, req.dev.UserID, req.setPresence, d); err != nil && ctx.Err() == nil {
		a.log.Warn("presence of a sync", "user", req.dev.UserID, "err", err)
	}
}

// presenceEvent is an m.presence event of the presence section.
type presenceEvent struct {
	Type    string           `json:"type"`
	Sender  string           `json:"sender"`
	Content presence.Content `json:"content"`
}

// presence fills the presence section: the m.presence events of the
// caller and of the users who share a joined room with them now. An
// incremental sync serves the users whose presence changed in (since,
// upper], plus, as Synapse does, those the caller newly shares a room
// with (their presence has not reached the client yet); an initial or
// full-state sync the current presence of everyone not offline (as
// Synapse does). One query each, whatever the number of rooms.
func (b *syncBuilder) presence(ctx context.Context) error {
	if b.a.presence == nil {
		return nil
	}
	pf := b.req.filter.f.Presence
	if pf != nil && !typeAllowed(pf.Types, pf.NotTypes, "m.presence") {
		return nil
	}
	me := b.req.dev.UserID
	var rows []sql.Presence
	if b.initial || b.req.fullState {
		var err error
		if rows, err = b.a.db.PresenceOfPeers(ctx, me, b.upper.Presence, presenceMaxEvents); err != nil {
			return fmt.Errorf("presence: %w", err)
		}
		slices.Reverse(rows) // oldest change first, as in an incremental sync
	} else {
		var err error
		if b.since.Presence < b.upper.Presence {
			if rows, err = b.a.db.PresenceChanged(ctx, me, b.since.Presence, b.upper.Presence, presenceMaxEvents+1); err != nil {
				return fmt.Errorf("presence: %w", err)
			}
			if len(rows) > presenceMaxEvents {
				rows = rows[:presenceMaxEvents]
				b.next.Presence = rows[len(rows)-1].StreamPos
			}
		}
		if b.since.Events < b.upper.Events {
			peers, err := b.a.db.PresenceOfNewPeers(ctx, me, b.since.Events, b.upper.Events, b.next.Presence, presenceMaxEvents)
			if err != nil {
				return fmt.Errorf("presence of new room peers: %w", err)
			}
			served := make(map[string]bool, len(rows))
			for _, r := range rows {
				served[r.UserID] = true
			}
			for _, p := range slices.Backward(peers) {
				if !served[p.UserID] {
					rows = append(rows, p)
				}
			}
		}
	}
	var evs []any
	for _, p := range rows {
		if b.ignored[p.UserID] || (pf != nil && !senderAllowed(pf.Senders, pf.NotSenders, p.UserID)) {
			continue
		}
		evs = append(evs, presenceEvent{Type: "m.presence", Sender: p.UserID, Content: b.a.presence.Content(p)})
	}
	if pf != nil && pf.Limit != nil && len(evs) > *pf.Limit {
		// The newest changes are the ones worth keeping.
		evs = evs[len(evs)-*pf.Limit:]
	}
	if len(evs) > 0 {
		b.resp.Presence = &eventList{Events: evs}
	}
	return nil
}

// senderAllowed applies a filter's senders and not_senders.
func senderAllowed(senders, notSenders []string, sender string) bool {
	if slices.Contains(notSenders, sender) {
		return false
	}
	return senders == nil || slices.Contains(senders, sender)
}

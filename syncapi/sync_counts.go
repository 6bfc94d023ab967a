package syncapi

import (
	"context"
	"fmt"

	"github.com/weft-chat/weft/sql"
)

// Unread notification counts (spec: /sync unread_notifications and
// unread_thread_notifications, "Receiving notifications").
//
// The push counter counts an event after the room commits it (it consumes
// room.output), so a sync may serve an event before its notifications are
// counted. Every change of a user's counts in a room takes a position of
// the notifications stream in the transaction that makes it, and wakes the
// user: the sync whose window holds that position puts the room in its
// response with the counts as they are then. The counts a response carries
// only include events up to the response's upper room stream position, so
// a count never runs ahead of the timeline that goes with it.

// readCountChanges marks the joined rooms where the caller's counts
// changed in (since, upper] of the notifications stream, which the sync's
// head read. An initial sync has every joined room anyway.
func (b *syncBuilder) readCountChanges(ctx context.Context, joined []sql.SyncMembership) error {
	rooms := b.head.CountChanges
	if b.initial || len(rooms) == 0 || len(joined) == 0 {
		return nil
	}
	isJoined := make(map[string]bool, len(joined))
	for _, m := range joined {
		isJoined[m.RoomID] = true
	}
	for _, roomID := range rooms {
		if isJoined[roomID] {
			if b.countsChanged == nil {
				b.countsChanged = make(map[string]bool)
			}
			b.countsChanged[roomID] = true
		}
	}
	return nil
}

// unreadCounts gives a joined room of the response its counts: zeros
// until fillUnreadCounts reads those of every room at once. Every joined
// room carries them, as in Synapse: clients keep their last counts when
// the field is missing, so a room whose counts went to zero must say so.
func (b *syncBuilder) unreadCounts(_ context.Context, _ sql.SyncMembership, jr *joinedRoom) error {
	jr.UnreadNotifications = &sql.NotificationCounts{}
	return nil
}

// fillUnreadCounts reads the caller's counts in every joined room of the
// response and sets them: from the summaries the head read (those of the
// rooms with new events or count changes, nearly always the response's),
// reading the others in one query (per 500 rooms). It sets the total, or
// with the timeline filter's unread_thread_notifications the main
// timeline's and each thread's apart (spec: sync.yaml; Synapse reads the
// flag from the timeline filter too).
func (b *syncBuilder) fillUnreadCounts(ctx context.Context, mems []sql.SyncMembership) error {
	if b.resp.Rooms == nil || len(b.resp.Rooms.Join) == 0 {
		return nil
	}
	nids := make([]int64, 0, len(b.resp.Rooms.Join))
	for _, m := range mems {
		if _, ok := b.resp.Rooms.Join[m.RoomID]; ok {
			nids = append(nids, m.RoomNID)
		}
	}
	counts, err := b.a.db.UnreadCountsInRooms(ctx, b.req.dev.UserID, nids, b.upper.Events, b.head.Unread)
	if err != nil {
		return fmt.Errorf("unread counts: %w", err)
	}
	threaded := b.threadCounts()
	for roomID, jr := range b.resp.Rooms.Join {
		c := counts[roomID]
		if threaded {
			jr.UnreadNotifications = &c.Main
			jr.UnreadThreadNotifications = c.Threads
		} else {
			jr.UnreadNotifications = &c.NotificationCounts
		}
	}
	return nil
}

// threadCounts reports whether the filter asks for per-thread counts.
func (b *syncBuilder) threadCounts() bool {
	r := b.req.filter.f.Room
	return r != nil && r.Timeline != nil && r.Timeline.UnreadThreadNotifications
}

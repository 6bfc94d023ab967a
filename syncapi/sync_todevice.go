package syncapi

import (
	"context"
	"fmt"
	"slices"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/sql"
)

// syncToDeviceLimit caps the to-device messages of one response (spec:
// "100 messages is recommended as a reasonable limit").
const syncToDeviceLimit = 100

// ackToDevice deletes what the responses up to since served: a sync from
// since acknowledges the device's messages at or below since.ToDevice
// (spec: "the server should infer that any send-to-device messages in
// that response have been delivered successfully, and delete them").
// Nothing is deleted by serving it, so a client that repeats a token gets
// the same messages again, and a client that follows next_batch gets each
// message exactly once, across restarts (the inbox is in the database).
func (b *syncBuilder) ackToDevice(ctx context.Context) error {
	if !b.head.ToDeviceToAck {
		return nil // a write for nothing, which SQLite runs one at a time
	}
	dev := b.req.dev
	if err := b.a.db.AckToDevice(ctx, dev.Localpart, dev.DeviceID, b.since.ToDevice); err != nil {
		return fmt.Errorf("acknowledge to-device messages: %w", err)
	}
	return nil
}

// toDevice fills the to_device section: the messages of the caller's
// device in (since, upper], oldest first, at most syncToDeviceLimit. When
// more wait, next_batch stops at the last one served, so the next sync
// continues there (and answers at once, having messages to give).
func (b *syncBuilder) toDevice(ctx context.Context) error {
	dev := b.req.dev
	if !b.head.ToDeviceNew {
		return nil
	}
	msgs, err := b.a.db.ToDeviceMessages(ctx, dev.Localpart, dev.DeviceID, b.since.ToDevice, b.upper.ToDevice, syncToDeviceLimit+1)
	if err != nil {
		return fmt.Errorf("to-device messages: %w", err)
	}
	if len(msgs) > syncToDeviceLimit {
		msgs = msgs[:syncToDeviceLimit]
		b.next.ToDevice = msgs[len(msgs)-1].Pos
	}
	if len(msgs) == 0 {
		return nil
	}
	evs := make([]any, 0, len(msgs))
	for _, e := range clientapi.ToDeviceEvents(msgs) {
		evs = append(evs, e)
	}
	b.resp.ToDevice = &eventList{Events: evs}
	return nil
}

// deviceLists fills the device_lists section of an incremental sync
// (spec: "only present on an incremental sync"): the users whose devices
// the caller should fetch again, and those they no longer share a room
// with, from the device_lists and event windows (since, upper]. The
// rules are sql.DeviceListChanges', which GET /keys/changes shares.
func (b *syncBuilder) deviceLists(ctx context.Context, mems []sql.SyncMembership) error {
	if b.initial || (b.since.Events == b.upper.Events && b.since.DeviceLists == b.upper.DeviceLists) {
		return nil
	}
	if len(b.membersUnchanged) > 0 {
		// Rooms where no membership changed add nothing to the lists.
		mems = slices.DeleteFunc(slices.Clone(mems), func(m sql.SyncMembership) bool { return b.membersUnchanged[m.RoomNID] })
	}
	lists, err := b.a.db.DeviceListChanges(ctx, b.req.dev.UserID, mems, sql.StreamPositions(b.since), sql.StreamPositions(b.upper))
	if err != nil {
		return fmt.Errorf("device list changes: %w", err)
	}
	if len(lists.Changed) > 0 || len(lists.Left) > 0 {
		b.resp.DeviceLists = &deviceLists{Changed: lists.Changed, Left: lists.Left}
	}
	return nil
}

// ParseSyncPositions reads a /sync token into stream positions, for the
// endpoints outside this package that take one (GET /keys/changes); bad
// tokens are 400 M_INVALID_PARAM.
func ParseSyncPositions(token string) (sql.StreamPositions, error) {
	t, err := ParseSyncToken(token)
	return sql.StreamPositions(t), err
}

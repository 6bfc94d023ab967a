package syncapi

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/view"
)

// syncBuilder builds one /sync response.
type syncBuilder struct {
	a   *API
	req *syncRequest
	// since is the request's token (zero for an initial sync) and upper
	// the positions this response runs to: (since, upper] of every stream.
	since, upper SyncToken
	// next is the response's next_batch: upper, less where a section
	// served only part of its window (to-device messages come in pages).
	next    SyncToken
	initial bool
	// head is what the sync read first, in one query.
	head    *sql.SyncHead
	ignored map[string]bool
	// invitesBlocked: the caller blocks invites, which sync then never
	// serves (spec v1.18, Invite permission).
	invitesBlocked bool
	// roomData is the room account data written in (since, upper], by
	// room; allRoomData every room's, loaded when a room needs all of it.
	roomData    map[string][]sql.AccountData
	allRoomData map[string][]sql.AccountData
	// ephemeral is each joined room's ephemeral events for the response
	// (typing, receipts); countsChanged the joined rooms whose unread
	// notification counts changed in the window. Either puts a room in
	// the response even with no new event.
	ephemeral     map[string][]any
	countsChanged map[string]bool
	// membersUnchanged are the joined rooms whose whole window the
	// timeline read saw without a membership event: the device lists
	// need not look at their members.
	membersUnchanged map[int64]bool
	// pre is what an initial sync read of all its rooms at once, and
	// pending the rooms whose events wait to be served together (see
	// sync_batch.go).
	pre     *prefetch
	pending []*pendingRoom
	resp    *syncResponse
}

// buildSync reads what changed for the caller in (since, now]. It reads
// the upper bound of each stream first: positions commit in order (the
// counter row is locked until the writer's transaction ends), so every
// write at or below the bound is visible to the reads that follow, and a
// write above it waits for the next sync. The result never repeats what
// an earlier token covered nor skips what it did not.
func (a *API) buildSync(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	dev := req.dev
	hr := sql.SyncHeadRequest{UserID: dev.UserID, Localpart: dev.Localpart, DeviceID: dev.DeviceID,
		AccountDataTypes: view.SyncSettingTypes, WantUnread: true}
	if req.since != nil {
		hr.CountsSince, hr.WantCountChanges, hr.ToDeviceSince = req.since.Notifications, true, req.since.ToDevice
		hr.UnreadSince = req.since.Events
	}
	head, err := a.heads.read(ctx, a.db, hr)
	if err != nil {
		return nil, err
	}
	b := &syncBuilder{a: a, req: req, upper: SyncToken(head.Positions), next: SyncToken(head.Positions),
		initial: req.since == nil, head: &head,
		resp: &syncResponse{OneTimeKeysCount: head.OneTimeKeys, UnusedFallbackKeyTypes: head.FallbackKeys}}
	if req.since != nil {
		// A token ahead of the streams was not minted by this server's
		// database: read it as "now" rather than wait for positions that
		// may never come.
		b.since = req.since.clamp(b.upper)
	}
	b.resp.NextBatch = b.upper.String()
	// Before the shortcut: a sync with nothing new still acknowledges
	// the to-device messages the previous one served.
	if err := b.ackToDevice(ctx); err != nil {
		return nil, err
	}
	if !b.initial && !req.fullState && b.since == b.upper {
		b.resp.settle(b.next, b.upper)
		return b.resp, nil
	}
	b.ignored, b.invitesBlocked = view.ParseSyncSettings(head.AccountData)
	if err := b.accountData(ctx); err != nil {
		return nil, err
	}
	mems := head.Memberships
	var joined []sql.SyncMembership
	for _, m := range mems {
		if m.Membership == spec.Join && req.filter.room(m.RoomID) {
			joined = append(joined, m)
		}
	}
	if err := b.readEphemeral(ctx, joined); err != nil {
		return nil, err
	}
	if err := b.readCountChanges(ctx, joined); err != nil {
		return nil, err
	}
	if b.initial {
		if err := b.prefetchInitial(ctx, mems); err != nil {
			return nil, err
		}
	}
	for _, m := range mems {
		if !req.filter.room(m.RoomID) {
			continue
		}
		if err := b.room(ctx, m); err != nil {
			return nil, fmt.Errorf("sync room %s: %w", m.RoomID, err)
		}
	}
	if err := b.servePending(ctx); err != nil {
		return nil, err
	}
	if err := b.fillUnreadCounts(ctx, mems); err != nil {
		return nil, err
	}
	if err := b.presence(ctx); err != nil {
		return nil, err
	}
	if err := b.toDevice(ctx); err != nil {
		return nil, err
	}
	if err := b.deviceLists(ctx, mems); err != nil {
		return nil, err
	}
	b.resp.NextBatch = b.next.String()
	b.resp.settle(b.next, b.upper)
	return b.resp, nil
}

// accountData reads the account data written in (since, upper]: the
// global entries go to the response, the room entries wait for their
// rooms.
func (b *syncBuilder) accountData(ctx context.Context) error {
	if !b.initial && b.since.AccountData == b.upper.AccountData {
		return nil
	}
	entries, err := b.a.db.AccountDataSince(ctx, b.req.dev.Localpart, b.since.AccountData)
	if err != nil {
		return fmt.Errorf("account data: %w", err)
	}
	b.roomData = make(map[string][]sql.AccountData)
	var global []any
	for _, d := range entries {
		if d.StreamPos > b.upper.AccountData {
			continue // the next sync's
		}
		if d.RoomID != "" {
			b.roomData[d.RoomID] = append(b.roomData[d.RoomID], d)
			continue
		}
		if b.req.filter.globalAccountData(d.Type) {
			global = append(global, accountDataEvent(d))
		}
	}
	if len(global) > 0 {
		b.resp.AccountData = &eventList{Events: global}
	}
	return nil
}

// roomAccountData returns a room's account data for the response: what
// changed in the window, or all of it for a room the client has nothing
// of yet.
func (b *syncBuilder) roomAccountData(ctx context.Context, roomID string, all bool) ([]any, error) {
	source := b.roomData
	if all && !b.initial {
		if b.allRoomData == nil {
			entries, err := b.a.db.AccountDataSince(ctx, b.req.dev.Localpart, 0)
			if err != nil {
				return nil, fmt.Errorf("account data: %w", err)
			}
			b.allRoomData = make(map[string][]sql.AccountData)
			for _, d := range entries {
				if d.RoomID != "" && d.StreamPos <= b.upper.AccountData {
					b.allRoomData[d.RoomID] = append(b.allRoomData[d.RoomID], d)
				}
			}
		}
		source = b.allRoomData
	}
	var out []any
	for _, d := range source[roomID] {
		if b.req.filter.roomAccountData(roomID, d.Type) {
			out = append(out, accountDataEvent(d))
		}
	}
	return out, nil
}

// accountDataEvent is an account data entry as an event of a sync.
func accountDataEvent(d sql.AccountData) any {
	return struct {
		Type    string          `json:"type"`
		Content json.RawMessage `json:"content"`
	}{d.Type, json.RawMessage(d.Content)}
}

// room puts one of the caller's rooms in the response, in the section of
// their membership, if anything changed for them there in the window.
func (b *syncBuilder) room(ctx context.Context, m sql.SyncMembership) error {
	switch {
	case b.initial:
		return b.roomInitial(ctx, m)
	case m.StreamPos <= b.since.Events:
		// The membership is the same at since and at upper.
		switch m.Membership {
		case spec.Join:
			return b.joined(ctx, m, b.joinedAllAlong())
		case spec.Invite, spec.Knock:
			if b.req.fullState {
				return b.stripped(ctx, m, m.EventNID, m.Membership)
			}
		}
		return nil
	}
	return b.roomChanged(ctx, m)
}

// roomInitial places a room in an initial sync: every joined room, invite
// and knock, and the rooms left when the filter asks for them.
func (b *syncBuilder) roomInitial(ctx context.Context, m sql.SyncMembership) error {
	membership, eventNID := m.Membership, m.EventNID
	if m.StreamPos > b.upper.Events {
		// Changed after the upper bound was read: use what it was then.
		ev, err := b.memberEventAt(ctx, m.RoomNID, b.upper.Events)
		if err != nil || ev == nil {
			return err
		}
		membership, eventNID = memberOf(*ev), ev.NID
	}
	switch membership {
	case spec.Join:
		w := roomWindow{hi: b.upper.Events, full: true}
		if m.StreamPos <= b.upper.Events {
			// Still joined by the join read: as an incremental sync
			// trusts the stream order for a room joined all along.
			w.joinedAfter = m.StreamPos
		}
		return b.joined(ctx, m, w)
	case spec.Invite, spec.Knock:
		return b.stripped(ctx, m, eventNID, membership)
	case spec.Leave, spec.Ban:
		if !b.req.filter.includeLeave || m.Forgotten {
			return nil
		}
		evs, err := b.a.db.EventsByNID(ctx, []int64{eventNID})
		if err != nil || len(evs) == 0 {
			return err
		}
		leave := evs[0]
		wasJoined, err := b.joinedBefore(ctx, leave)
		if err != nil {
			return err
		}
		if !wasJoined {
			// A rejected invite or a refused knock: the caller never saw
			// the room, so they get their leave alone.
			return b.left(ctx, m, leave, membership, roomWindow{lo: leave.StreamPos - 1, hi: leave.StreamPos, onlyOwn: true})
		}
		return b.left(ctx, m, leave, membership, roomWindow{hi: leave.StreamPos, full: true})
	}
	return nil
}

// joinedBefore reports whether the caller was joined just before their
// membership event ev.
func (b *syncBuilder) joinedBefore(ctx context.Context, ev sql.Event) (bool, error) {
	k := sql.StateKey{Type: spec.MRoomMember, StateKey: b.req.dev.UserID}
	vals, err := b.a.db.SnapshotKeys(ctx, ev.StateBeforeNID, []sql.StateKey{k})
	if err != nil || vals[k] == 0 {
		return false, err
	}
	evs, err := b.a.db.EventsByNID(ctx, []int64{vals[k]})
	if err != nil || len(evs) == 0 {
		return false, err
	}
	return memberOf(evs[0]) == spec.Join, nil
}

// roomChanged places a room whose membership changed after since: the
// caller's membership events in the window say what happened.
func (b *syncBuilder) roomChanged(ctx context.Context, m sql.SyncMembership) error {
	prev, err := b.memberEventAt(ctx, m.RoomNID, b.since.Events)
	if err != nil {
		return err
	}
	window, err := b.a.db.MemberEventsBetween(ctx, m.RoomNID, b.req.dev.UserID, b.since.Events, b.upper.Events)
	if err != nil {
		return err
	}
	prevMembership := ""
	if prev != nil {
		prevMembership = memberOf(*prev)
	}
	if len(window) == 0 && m.StreamPos <= b.upper.Events {
		// The change is in the window but no timeline holds it: a
		// membership of a room this server is not in (an invite from
		// another server, or its rejection), stored as an outlier, out
		// of band. Its membership row is all there is of it.
		switch m.Membership {
		case spec.Invite, spec.Knock:
			return b.stripped(ctx, m, m.EventNID, m.Membership)
		case spec.Leave, spec.Ban:
			if m.Forgotten {
				return nil
			}
			evs, err := b.a.db.EventsByNID(ctx, []int64{m.EventNID})
			if err != nil || len(evs) == 0 {
				return err
			}
			// The caller never saw the room: their leave alone.
			return b.left(ctx, m, evs[0], m.Membership, roomWindow{lo: m.StreamPos - 1, hi: m.StreamPos, onlyOwn: true})
		}
	}
	if len(window) == 0 {
		// The change is after upper, the next sync's; until then the
		// membership is what it was at since.
		if prevMembership == spec.Join {
			return b.joined(ctx, m, b.joinedAllAlong())
		}
		return nil
	}
	// Walk the window: was the caller joined all along, and when did
	// they last leave a join?
	joinedAllAlong := prevMembership == spec.Join
	wasJoined := prevMembership == spec.Join
	var leftJoin *sql.Event
	for i := range window {
		mm := memberOf(window[i])
		if mm != spec.Join {
			joinedAllAlong = false
			if wasJoined && (mm == spec.Leave || mm == spec.Ban) {
				leftJoin = &window[i]
			}
		}
		wasJoined = mm == spec.Join
	}
	last := window[len(window)-1]
	now := memberOf(last)
	switch now {
	case spec.Join:
		if !joinedAllAlong {
			// Newly joined: the client has nothing of the room, so its
			// timeline is the latest the caller may see, before since too
			// (as Synapse does).
			return b.joined(ctx, m, roomWindow{hi: b.upper.Events, full: true})
		}
		return b.joined(ctx, m, b.joinedAllAlong())
	case spec.Invite, spec.Knock:
		if leftJoin != nil {
			// Left, then invited back: the client learns both.
			if err := b.left(ctx, m, *leftJoin, memberOf(*leftJoin), b.leftWindow(prevMembership, window, *leftJoin)); err != nil {
				return err
			}
		}
		return b.stripped(ctx, m, last.NID, now)
	case spec.Leave, spec.Ban:
		if m.Forgotten {
			return nil
		}
		if leftJoin != nil {
			return b.left(ctx, m, *leftJoin, memberOf(*leftJoin), b.leftWindow(prevMembership, window, *leftJoin))
		}
		if prevMembership == spec.Invite || prevMembership == spec.Knock || hasMembership(window, spec.Invite, spec.Knock) {
			// A rejected or withdrawn invite, a refused knock: the caller
			// never saw the room, so they get their leave alone.
			return b.left(ctx, m, last, now, roomWindow{lo: last.StreamPos - 1, hi: last.StreamPos, onlyOwn: true})
		}
	}
	return nil
}

// joinedAllAlong is the window of a room the caller was joined to at since
// and has been ever since.
func (b *syncBuilder) joinedAllAlong() roomWindow {
	return roomWindow{lo: b.since.Events, hi: b.upper.Events, full: b.req.fullState, joined: true}
}

// leftWindow is the window of a room the caller left at leave: from since
// with the state delta when they were joined all along until then; as for
// a newly joined room when they joined in the window.
func (b *syncBuilder) leftWindow(prevMembership string, window []sql.Event, leave sql.Event) roomWindow {
	newlyJoined := prevMembership != spec.Join
	for _, ev := range window {
		if ev.StreamPos >= leave.StreamPos {
			break
		}
		if memberOf(ev) != spec.Join {
			newlyJoined = true
		}
	}
	if newlyJoined {
		return roomWindow{hi: leave.StreamPos, full: true}
	}
	return roomWindow{lo: b.since.Events, hi: leave.StreamPos, full: b.req.fullState, joined: true}
}

func hasMembership(evs []sql.Event, memberships ...string) bool {
	for _, ev := range evs {
		mm := memberOf(ev)
		for _, want := range memberships {
			if mm == want {
				return true
			}
		}
	}
	return false
}

// memberEventAt returns the caller's membership event in force at a
// stream position (nil when they had none): the room's state after its
// last event at or before it.
func (b *syncBuilder) memberEventAt(ctx context.Context, roomNID, pos int64) (*sql.Event, error) {
	at, err := b.a.stateAfterPos(ctx, roomNID, pos)
	if err != nil {
		return nil, err
	}
	k := sql.StateKey{Type: spec.MRoomMember, StateKey: b.req.dev.UserID}
	vals, err := at.lookup(ctx, b.a.db, []sql.StateKey{k})
	if err != nil || vals[k] == 0 {
		return nil, err
	}
	evs, err := b.a.db.EventsByNID(ctx, []int64{vals[k]})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return &evs[0], nil
}

// memberOf reads the membership of an m.room.member event.
func memberOf(ev sql.Event) string {
	var e struct {
		Content struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	_ = json.Unmarshal(ev.JSON, &e)
	return e.Content.Membership
}

// rooms returns the response's room sections, making them on first use.
func (b *syncBuilder) rooms() *syncRooms {
	if b.resp.Rooms == nil {
		b.resp.Rooms = &syncRooms{}
	}
	return b.resp.Rooms
}

package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/weft-chat/weft/internal/bounded"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
)

// Rooms is what the counter needs of the roomserver (roomserver.API
// provides it): the events of room.output, as committed.
type Rooms interface {
	CommittedEvent(ctx context.Context, eventID string) (sql.Event, gomatrixserverlib.PDU, error)
	StateAfter(eventID string) (snapshotNID int64, ok bool)
}

// CountsDurable names the durable consumer of room.output that counts
// notifications. Its position survives restarts, so events committed while
// no process counted are counted when one starts.
const CountsDurable = "push-counts"

// CountedSubject is the core NATS subject on which the counter announces,
// after each event it handled, that it counted the event's room up to the
// event (a Counted). The sync notifier holds the wake-ups of a room's
// events until then, so that the members sync once, for the event and its
// counts together.
const CountedSubject = "push.counted"

// Counted is an announcement on CountedSubject.
type Counted struct {
	RoomID    string `json:"room_id"`
	StreamPos int64  `json:"stream_pos"`
	// Users are the users whose counts the event changed, when they are
	// few enough to name (otherwise they get wake-ups of their own): the
	// notifier wakes those the room's released wake-up did not wake.
	Users []string `json:"users,omitempty"`
}

// MainThread is the thread id of the main timeline (spec: threaded read
// receipts).
const MainThread = "main"

// maxThreadHops bounds the walk up relations to a thread root (spec:
// "a maximum of 3 hops is recommended").
const maxThreadHops = 3

// Counter counts unread notifications: for each committed event it
// evaluates the push rules of every local member who can see it, except
// the sender, and records the events that notify each. It consumes
// room.output, so counting never holds up the room input pipeline; it runs
// behind it instead (sql.PushCountedUpTo says how far).
type Counter struct {
	db         *sql.DB
	rooms      Rooms
	serverName string
	log        *slog.Logger
	rules      *Cache
	names      *bounded.Map[int64, string]
	powers     *bounded.Map[int64, roomserver.Power]
	// wake wakes the syncs of the users whose counts changed (nil: none).
	wake *wake.Publisher
	// nc carries the Counted announcements (nil: none, a counter that
	// Serve does not run).
	nc *nats.Conn
}

// CounterOption configures a Counter.
type CounterOption func(*Counter)

// WithWake makes the counter wake the long-polling syncs of the users
// whose counts it changed, after each commit: the syncs that served an
// event before it was counted then send the counts at once, not at their
// timeout.
func WithWake(p *wake.Publisher) CounterOption {
	return func(c *Counter) { c.wake = p }
}

// NewCounter makes a counter for the local users of serverName.
func NewCounter(db *sql.DB, rooms Rooms, serverName string, log *slog.Logger, opts ...CounterOption) *Counter {
	c := &Counter{db: db, rooms: rooms, serverName: serverName, log: log,
		rules: NewCache(db.PushRules), names: bounded.New[int64, string](nameCacheMax), powers: bounded.New[int64, roomserver.Power](powerCacheMax)}
	for _, o := range opts {
		o(c)
	}
	return c
}

// wakeBatch bounds the users of one wake-up message, which a room of
// tens of thousands of notified members would otherwise push past the
// NATS payload limit.
const wakeBatch = 1000

// Serve consumes room.output with the durable consumer push-counts until
// ctx ends or stop is called. Events are counted in stream order, in
// batches of those already waiting, one transaction each: counting one
// event per transaction, with a round trip to NATS for each, fell seconds
// behind the room under load (`weft bench rooms`). A batch that fails is
// retried here, not handed back, since a message handed back would come
// again after later ones; only one process at a time is handed events
// (bus.Pinned), for the same reason.
func (c *Counter) Serve(ctx context.Context, b *bus.Bus) (stop func(), err error) {
	c.nc = b.Conn()
	return bus.ConsumeAsync(ctx, b, bus.StreamRoomOutput, CountsDurable, bus.RoomOutputSubjects, countBatch,
		func(ctx context.Context, outs []roomserver.OutputEvent, finish func(error)) {
			finish(c.handleRetrying(ctx, outs))
		}, bus.Pinned())
}

// countBatch bounds the events counted in one transaction, and
// prepareParallel the events whose counting is worked out at once.
const (
	countBatch      = 32
	prepareParallel = 4
)

// retryDelay is how long a batch that failed waits before it is tried
// again.
const retryDelay = time.Second

// handleRetrying counts a batch until that succeeds or ctx ends.
func (c *Counter) handleRetrying(ctx context.Context, outs []roomserver.OutputEvent) error {
	for {
		err := c.HandleBatch(ctx, outs)
		if err == nil || ctx.Err() != nil {
			return err
		}
		c.log.Warn("push counts failed, will retry", "events", len(outs), "err", err)
		select {
		case <-time.After(retryDelay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// HandleBatch counts committed events, in order, in one transaction. It
// is idempotent: a notification is keyed by its user and event (the
// event's room and stream position), so a redelivered event changes
// nothing. Errors are the database's, worth a retry; events that cannot
// be counted (gone, unparsable) are logged and skipped, since a retry
// cannot fix them.
func (c *Counter) HandleBatch(ctx context.Context, outs []roomserver.OutputEvent) error {
	// The reads behind each event's counting go side by side: on
	// PostgreSQL each is a round trip, and one event after the other left
	// the counter behind the room under load.
	cs := make([]*counting, len(outs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(prepareParallel)
	for i, o := range outs {
		g.Go(func() error {
			var err error
			cs[i], err = c.prepare(gctx, o)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	changed := make([][]string, len(outs))
	err := c.db.WithTx(ctx, func(q *sql.Queries) error {
		// Every event's notifications first, in a few statements: what
		// comes after (reading up to a sender's event, a leave, a
		// redaction) takes away only notifications at or before its
		// event, so it leaves the same as event after event would.
		var notes []sql.EventNotifications
		for _, ct := range cs {
			if ct != nil && len(ct.notes) > 0 {
				notes = append(notes, sql.EventNotifications{RoomNID: ct.stored.RoomNID, EventNID: ct.stored.NID,
					StreamPos: ct.stored.StreamPos, Notes: ct.notes})
			}
		}
		if err := q.AddEventsPushNotifications(ctx, notes); err != nil {
			return err
		}
		had, err := c.senderReads(ctx, q, cs)
		if err != nil {
			return err
		}
		var resets []sql.ReadUpTo
		for i, ct := range cs {
			if ct == nil {
				continue
			}
			if changed[i], err = c.record(ctx, q, ct, had[i]); err != nil {
				return err
			}
			if had[i] {
				resets = append(resets, sql.ReadUpTo{UserID: string(ct.pdu.SenderID()), RoomNID: ct.stored.RoomNID,
					ThreadID: ct.thread, UpTo: ct.stored.StreamPos})
			}
		}
		// The senders' reads go together: each takes away only what its
		// marker covers, like the leaves and redactions before it.
		if err := q.ResetCountsIn(ctx, resets); err != nil {
			return err
		}
		// The batch's rooms are counted up to their last events, and its
		// count changes take one position, last: a stream position locks
		// its counter until the commit.
		counted := make(map[int64]int64)
		byRoom := make(map[int64][]string)
		for i, ct := range cs {
			if ct != nil {
				room := ct.stored.RoomNID
				counted[room] = max(counted[room], ct.stored.StreamPos)
				byRoom[room] = append(byRoom[room], changed[i]...)
			}
		}
		if err := q.SetPushCountedIn(ctx, counted); err != nil {
			return err
		}
		_, err = q.NoteCountChangesIn(ctx, byRoom)
		return err
	})
	if err != nil {
		return err
	}
	for i, o := range outs {
		if cs[i] != nil {
			c.tell(o, changed[i])
		}
	}
	return nil
}

// tell announces a counted event and wakes the users whose counts it
// changed.
func (c *Counter) tell(o roomserver.OutputEvent, changed []string) {
	slices.Sort(changed)
	changed = slices.Compact(changed)
	// The announcement releases the wake-up of the whole room, which the
	// users whose counts changed are usually part of: naming them there
	// wakes each once, not once for the room and again for the counts.
	named := changed
	if len(named) > wakeBatch {
		named = nil
	}
	if c.announce(o, named) {
		changed = changed[len(named):]
	}
	for len(changed) > 0 {
		batch := changed[:min(len(changed), wakeBatch)]
		changed = changed[len(batch):]
		c.wake.Users(batch...)
	}
}

// announce publishes that the event's room is counted up to it, naming
// users whose counts changed, and reports whether it did. Like a wake-up
// it is best effort: a lost one only delays the notifier's wake-up by
// countWait (and the named users' until their timeout).
func (c *Counter) announce(o roomserver.OutputEvent, users []string) bool {
	if c.nc == nil {
		return false
	}
	data, err := json.Marshal(Counted{RoomID: o.RoomID, StreamPos: o.StreamPos, Users: users})
	if err == nil {
		err = c.nc.Publish(CountedSubject, data)
	}
	if err != nil {
		c.log.Warn("announce counted event", "room_id", o.RoomID, "err", err)
		return false
	}
	return true
}

// counting is what counting an event writes, worked out before the
// transaction.
type counting struct {
	stored      sql.Event
	pdu         gomatrixserverlib.PDU
	thread      string
	notes       []sql.PushNotification
	redactedNID int64
}

// prepare reads and evaluates what counting the event needs; nil when the
// event is not counted.
func (c *Counter) prepare(ctx context.Context, o roomserver.OutputEvent) (*counting, error) {
	stored, pdu, err := c.rooms.CommittedEvent(ctx, o.EventID)
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Status == 404 {
			c.log.Warn("push counts: event not found", "event_id", o.EventID)
			return nil, nil
		}
		return nil, err
	}
	if stored.Rejected || stored.Outlier || stored.StreamPos == 0 {
		return nil, nil
	}
	ev, err := EventFromPDU(pdu)
	if err != nil {
		c.log.Warn("push counts: cannot read event", "event_id", o.EventID, "err", err)
		return nil, nil
	}
	if pdu.Type() == spec.MRoomMember && stored.RedactedBy == "" {
		// The name the room's next events may need for
		// contains_display_name, without a read then.
		c.names.Put(stored.NID, displayNameIn(pdu.Content()))
	}
	ct := &counting{stored: stored, pdu: pdu}
	if ct.thread, err = c.threadOf(ctx, ev); err != nil {
		return nil, err
	}
	if stored.RedactedBy == "" {
		if ct.notes, err = c.evaluate(ctx, stored, pdu, ev, ct.thread); err != nil {
			return nil, err
		}
	}
	if pdu.Type() == spec.MRoomRedaction && pdu.Redacts() != "" {
		target, err := c.db.EventByID(ctx, pdu.Redacts())
		if err != nil && !errors.Is(err, sql.ErrNotFound) {
			return nil, err
		}
		// Only an effective redaction drops the target's notifications.
		if err == nil && target.RedactedBy == pdu.EventID() {
			ct.redactedNID = target.NID
		}
	}
	return ct, nil
}

// senderReads reports, for each event a local user sent, whether sending
// it reads any of their notifications (spec: "When the user updates their
// read receipt (either by using the API or by sending an event) ..."):
// those after the sender's previous event of the batch in the thread, up
// to this one, which are all that is left to read once the batch's
// earlier events are recorded.
func (c *Counter) senderReads(ctx context.Context, q *sql.Queries, cs []*counting) ([]bool, error) {
	type thread struct {
		user   string
		room   int64
		thread string
	}
	prev := make(map[thread]int64)
	var reads []sql.ReadUpTo
	at := make([]int, len(cs))
	for i, ct := range cs {
		at[i] = -1
		if ct == nil {
			continue
		}
		sender := string(ct.pdu.SenderID())
		if !c.isLocal(sender) {
			continue
		}
		k := thread{sender, ct.stored.RoomNID, ct.thread}
		at[i] = len(reads)
		reads = append(reads, sql.ReadUpTo{UserID: sender, RoomNID: k.room, ThreadID: k.thread, After: prev[k], UpTo: ct.stored.StreamPos})
		prev[k] = ct.stored.StreamPos
	}
	read, err := q.HasPushNotificationsIn(ctx, reads)
	if err != nil {
		return nil, err
	}
	had := make([]bool, len(cs))
	for i, j := range at {
		had[i] = j >= 0 && read[j]
	}
	return had, nil
}

// record writes what an event's counting takes away (its notifications
// are in already) in q's transaction and returns the users whose counts
// changed.
func (c *Counter) record(ctx context.Context, q *sql.Queries, ct *counting, senderRead bool) ([]string, error) {
	stored, pdu := ct.stored, ct.pdu
	sender := string(pdu.SenderID())
	// changed collects the users whose counts this event changes: the
	// notifications stream tells their next sync to send the counts again.
	var changed []string
	for _, n := range ct.notes {
		changed = append(changed, n.UserID)
	}
	// Sending the event read notifications of the sender's (see
	// senderReads), which HandleBatch clears for the whole batch. When
	// it read none, moving the read marker would change nothing: the
	// counter goes in stream order, so no notification it counts later
	// lies before this event.
	if senderRead {
		// The sender's own membership event reads the room in the
		// counts /sync serves as soon as it commits (see
		// sql.UnreadCountsInRooms): no change to send for it, and no
		// second sync for every join.
		if ownMember := pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil && *pdu.StateKey() == sender; !ownMember {
			changed = append(changed, sender)
		}
	}
	if sk := pdu.StateKey(); pdu.Type() == spec.MRoomMember && sk != nil && c.isLocal(*sk) {
		// No count change to note: the room leaves the user's joined
		// rooms, which alone carry counts.
		if m, _ := pdu.Membership(); m == spec.Leave || m == spec.Ban {
			if err := q.DeleteRoomPushNotifications(ctx, *sk, stored.RoomNID); err != nil {
				return nil, err
			}
		}
	}
	if ct.redactedNID != 0 {
		users, err := q.DeleteEventPushNotifications(ctx, ct.redactedNID)
		if err != nil {
			return nil, err
		}
		changed = append(changed, users...)
	}
	return changed, nil
}

// evaluate runs every eligible member's rules against the event: what the
// members share (the flattened event, member count, sender power) is
// computed once, then each member costs a rule walk.
func (c *Counter) evaluate(ctx context.Context, stored sql.Event, pdu gomatrixserverlib.PDU, ev *Event, thread string) ([]sql.PushNotification, error) {
	members, joined, err := c.db.PushMembers(ctx, stored.RoomNID, c.serverName)
	if err != nil {
		return nil, err
	}
	sender := string(pdu.SenderID())
	eligible := members[:0]
	for _, m := range members {
		switch {
		case m.UserID == sender:
		case m.Membership == spec.Join && m.StreamPos < stored.StreamPos:
			// Joined before the event, so they see it (history
			// visibility: joined at the event).
			eligible = append(eligible, m)
		case m.Membership == spec.Invite && m.EventNID == stored.NID:
			// The invite itself, for .m.rule.invite_for_me.
			eligible = append(eligible, m)
		}
	}
	if len(eligible) == 0 {
		return nil, nil
	}
	power, err := c.powerAt(ctx, stored)
	if err != nil {
		return nil, err
	}
	c.powerAfter(stored, pdu, power)
	rc := Context{MemberCount: joined, SenderPower: power.UserLevel(sender), NotificationPowers: power.Levels().Notifications}
	rulesets := make([]*Compiled, len(eligible))
	var needNames []int64
	for i, m := range eligible {
		if rulesets[i], err = c.rules.Get(ctx, m.UserID, m.RulesVersion); err != nil {
			return nil, err
		}
		if rulesets[i].NeedsDisplayName(ev) {
			needNames = append(needNames, m.EventNID)
		}
	}
	names, err := c.displayNames(ctx, needNames)
	if err != nil {
		return nil, err
	}
	var notes []sql.PushNotification
	for i, m := range eligible {
		rc.UserID, rc.DisplayName = m.UserID, names[m.EventNID]
		if r := Evaluate(rulesets[i], ev, &rc); r.Notify {
			notes = append(notes, sql.PushNotification{UserID: m.UserID, ThreadID: thread, Highlight: r.Highlight})
		}
	}
	return notes, nil
}

// threadOf finds the thread an event belongs to: the root of its m.thread
// relation, or of the first m.thread relation found walking up its
// relations, within maxThreadHops; otherwise the main timeline.
func (c *Counter) threadOf(ctx context.Context, ev *Event) (string, error) {
	rel := ev.lookup(`content.m\.relates_to.rel_type`, propRelType)
	parent := ev.lookup(`content.m\.relates_to.event_id`, -1)
	if rel == nil || parent == nil || rel.kind != kindString || parent.kind != kindString {
		return MainThread, nil
	}
	relType, parentID := rel.str, parent.str
	for hop := 1; ; hop++ {
		if relType == "m.thread" {
			return parentID, nil
		}
		if hop == maxThreadHops {
			return MainThread, nil
		}
		var err error
		relType, parentID, err = c.db.EventRelation(ctx, parentID)
		if errors.Is(err, sql.ErrNotFound) {
			return MainThread, nil
		}
		if err != nil {
			return "", err
		}
	}
}

func (c *Counter) isLocal(userID string) bool {
	_, server, ok := splitUserID(userID)
	return ok && server == c.serverName
}

func splitUserID(userID string) (localpart, server string, ok bool) {
	if len(userID) < 2 || userID[0] != '@' {
		return "", "", false
	}
	for i := 1; i < len(userID); i++ {
		if userID[i] == ':' {
			return userID[1:i], userID[i+1:], true
		}
	}
	return "", "", false
}

// displayNames returns the display names in the given membership events,
// from the cache where it can: a membership event never changes, so its
// name is read once.
func (c *Counter) displayNames(ctx context.Context, nids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(nids))
	var missing []int64
	for _, n := range nids {
		if name, ok := c.names.Get(n); ok {
			out[n] = name
		} else {
			missing = append(missing, n)
		}
	}
	const chunk = 1000
	for len(missing) > 0 {
		batch := missing[:min(len(missing), chunk)]
		missing = missing[len(batch):]
		evs, err := c.db.EventsByNID(ctx, batch)
		if err != nil {
			return nil, fmt.Errorf("load membership events: %w", err)
		}
		for _, e := range evs {
			var m struct {
				Content json.RawMessage `json:"content"`
			}
			_ = json.Unmarshal(e.JSON, &m) // a name that does not parse is no name
			name := displayNameIn(m.Content)
			c.names.Put(e.NID, name)
			out[e.NID] = name
		}
	}
	return out, nil
}

// displayNameIn is the display name in a membership event's content; ""
// for none, or content that does not parse.
func displayNameIn(content []byte) string {
	var c struct {
		Displayname string `json:"displayname"`
	}
	_ = json.Unmarshal(content, &c)
	return c.Displayname
}

// nameCacheMax bounds the display names kept, by membership event NID.
const nameCacheMax = 200_000

package federation

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// Read receipts between servers (spec: Server-Server API, "Receipts"):
// the m.receipt EDU. Only m.read receipts travel: m.read.private ones
// never leave their user's server.

// ReceiptEDUType is the EDU type of receipts.
const ReceiptEDUType = "m.receipt"

// maxInboundReceipts bounds the receipts one inbound EDU may store; an
// EDU's receipts past it are dropped.
const maxInboundReceipts = 1000

// userReceipt is a user's receipt in an m.receipt EDU.
type userReceipt struct {
	EventIDs []string    `json:"event_ids"`
	Data     receiptData `json:"data"`
}

type receiptData struct {
	TS       *int64 `json:"ts"`
	ThreadID string `json:"thread_id,omitempty"`
}

// QueueReceipt queues, in tx, an m.receipt EDU with userID's m.read
// receipt for each other server in the room, and returns what wakes the
// destinations, to call once tx committed.
func (s *EDUSender) QueueReceipt(ctx context.Context, tx *sql.Queries, roomID, userID, eventID, threadID string, ts int64) (func(), error) {
	dests, err := roomDestinations(ctx, tx, roomID, s.ServerName)
	if err != nil || len(dests) == 0 {
		return func() {}, err
	}
	content, err := json.Marshal(map[string]map[string]map[string]userReceipt{
		roomID: {sql.ReceiptRead: {userID: {EventIDs: []string{eventID}, Data: receiptData{TS: &ts, ThreadID: threadID}}}},
	})
	if err != nil {
		return nil, err
	}
	if err := s.Queue.StoreEDUs(ctx, tx, eduFor(dests, ReceiptEDUType, content)); err != nil {
		return nil, err
	}
	return func() { s.Queue.Wake(dests...) }, nil
}

// ReceiptReceiver stores inbound m.receipt EDUs. Register its Handle for
// ReceiptEDUType.
type ReceiptReceiver struct {
	DB *sql.DB
	// Wake wakes the rooms' members (nil: nobody to tell).
	Wake *wake.Publisher
	Log  *slog.Logger
}

// Handle stores the m.read receipts of one EDU (room → receipt type →
// user → receipt) as the users' receipts, each only moving forward as
// local ones do. Left out, with a log line: every receipt of a room
// whose server ACL denies origin (spec: "all receipts for a particular
// room ID MUST be ignored"), receipt types other than m.read, users not
// of origin or not joined to the room, and receipts without a ts or at
// no event of the room this server has (the latest of event_ids, which
// the spec limits to one). Content that does not parse is dropped whole.
func (r *ReceiptReceiver) Handle(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	log := logOr(r.Log)
	var c map[string]map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &c); err != nil {
		log.InfoContext(ctx, "federation: malformed receipt EDU dropped", "origin", origin, "err", err)
		return nil
	}
	rooms := slices.Sorted(maps.Keys(c))
	var woken []string
	budget := maxInboundReceipts
	err := r.DB.WithTx(ctx, func(q *sql.Queries) error {
		woken = woken[:0]
		budget = maxInboundReceipts
		for _, roomID := range rooms {
			stored, err := r.room(ctx, q, log, origin, roomID, c[roomID][sql.ReceiptRead], &budget)
			if err != nil {
				return err
			}
			if stored {
				woken = append(woken, roomID)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if budget < 0 {
		log.WarnContext(ctx, "federation: receipts past the limit of one EDU dropped", "origin", origin, "limit", maxInboundReceipts)
	}
	r.Wake.Rooms(woken...)
	return nil
}

// room stores a room's receipts; stored reports whether any was.
func (r *ReceiptReceiver) room(ctx context.Context, q *sql.Queries, log *slog.Logger, origin spec.ServerName, roomID string,
	users map[string]json.RawMessage, budget *int) (stored bool, err error) {
	if len(users) == 0 {
		return false, nil
	}
	allows, err := roomACL(ctx, q, roomID)
	if err != nil {
		return false, err
	}
	if !allows(origin) {
		log.InfoContext(ctx, "federation: receipts from a server the room's ACL denies dropped", "origin", origin, "room_id", roomID)
		return false, nil
	}
	for _, userID := range slices.Sorted(maps.Keys(users)) {
		if *budget--; *budget < 0 {
			return stored, nil
		}
		var rc userReceipt
		if err := json.Unmarshal(users[userID], &rc); err != nil || rc.Data.TS == nil || len(rc.EventIDs) == 0 {
			log.InfoContext(ctx, "federation: malformed receipt dropped", "origin", origin, "room_id", roomID, "user_id", userID)
			continue
		}
		if !userOf(userID, origin) {
			log.WarnContext(ctx, "federation: receipt of a user not of its origin dropped", "origin", origin, "user_id", userID)
			continue
		}
		roomNID, err := q.JoinedRoomNID(ctx, roomID, userID)
		if errors.Is(err, sql.ErrNotFound) {
			log.InfoContext(ctx, "federation: receipt of a user not joined to the room dropped", "origin", origin,
				"room_id", roomID, "user_id", userID)
			continue
		}
		if err != nil {
			return false, err
		}
		ev, ok, err := latestEvent(ctx, q, roomNID, rc.EventIDs)
		if err != nil {
			return false, err
		}
		if !ok {
			log.InfoContext(ctx, "federation: receipt at an event this server does not have dropped", "origin", origin,
				"room_id", roomID, "user_id", userID)
			continue
		}
		_, ok, err = q.PutReceipt(ctx, sql.Receipt{RoomNID: roomNID, Type: sql.ReceiptRead, UserID: userID,
			ThreadID: rc.Data.ThreadID, EventID: ev.EventID, EventPos: ev.StreamPos, TS: *rc.Data.TS})
		if err != nil {
			return false, err
		}
		stored = stored || ok
	}
	return stored, nil
}

// latestEvent is the latest of the events in the room's timeline
// (neither outliers nor rejected); ok is false when there is none.
func latestEvent(ctx context.Context, q *sql.Queries, roomNID int64, eventIDs []string) (sql.Event, bool, error) {
	var best sql.Event
	for _, id := range eventIDs[:min(len(eventIDs), 10)] {
		ev, err := q.EventByID(ctx, id)
		if errors.Is(err, sql.ErrNotFound) {
			continue
		}
		if err != nil {
			return sql.Event{}, false, err
		}
		if ev.RoomNID == roomNID && !ev.Outlier && !ev.Rejected && ev.StreamPos > best.StreamPos {
			best = ev
		}
	}
	return best, best.StreamPos > 0, nil
}

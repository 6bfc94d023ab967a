package federation

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// Send-to-device messaging between servers (spec: Server-Server API,
// "Send-to-device messaging"): the m.direct_to_device EDU.

// ToDeviceEDUType is the EDU type of send-to-device messages.
const ToDeviceEDUType = "m.direct_to_device"

// maxInboundToDevice bounds the messages one inbound EDU may put in local
// inboxes, with its "*" wildcards expanded; an EDU past it is dropped.
const maxInboundToDevice = 50_000

// maxMessageIDBytes bounds an inbound message_id (the spec says 32
// codepoints; longer ones are taken, as Synapse does, up to this).
const maxMessageIDBytes = 255

// toDeviceContent is the content of an m.direct_to_device EDU.
type toDeviceContent struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// QueueToDevice queues, in the caller's database transaction tx, sender's
// messages of eventType for users of other servers (user id -> device id
// or "*" -> content) as m.direct_to_device EDUs: one per destination
// server, split into several (each with its own message_id, as Synapse
// splits them) when one would pass MaxEDUBytes. It returns the function
// that wakes the destinations, to call once tx committed. The messages of
// one user must fit one EDU (413 M_TOO_LARGE otherwise, as in Synapse).
// Users whose id names no valid server, or this one, are skipped (as
// unknown users are).
func (q *Queue) QueueToDevice(ctx context.Context, tx *sql.Queries, sender, eventType string, messages map[string]map[string]json.RawMessage) (func(), error) {
	edus, err := toDeviceEDUs(sender, eventType, messages, func(s spec.ServerName) bool { return q.checkDestination(s) == nil })
	if err != nil {
		return nil, err
	}
	if len(edus) == 0 {
		return func() {}, nil
	}
	if err := q.StoreEDUs(ctx, tx, edus); err != nil {
		return nil, err
	}
	dests := destinationsOf(edus)
	return func() { q.Wake(dests...) }, nil
}

// toDeviceEDUs groups messages by the recipients' servers (those accept
// takes) into EDUs of at most MaxEDUBytes, in a stable order (servers,
// then users, sorted).
func toDeviceEDUs(sender, eventType string, messages map[string]map[string]json.RawMessage, accept func(spec.ServerName) bool) ([]EDU, error) {
	byServer := make(map[spec.ServerName][]string)
	for userID := range messages {
		server, ok := serverOf(userID)
		if !ok || !accept(server) {
			continue
		}
		byServer[server] = append(byServer[server], userID)
	}
	servers := make([]spec.ServerName, 0, len(byServer))
	for s := range byServer {
		servers = append(servers, s)
	}
	slices.Sort(servers)

	var out []EDU
	for _, server := range servers {
		users := byServer[server]
		slices.Sort(users)
		// The envelope's size with no messages, for a message_id as
		// long as newMessageID's.
		envelope, err := json.Marshal(toDeviceContent{Sender: sender, Type: eventType, MessageID: newMessageID(),
			Messages: map[string]map[string]json.RawMessage{}})
		if err != nil {
			return nil, err
		}
		cur := map[string]map[string]json.RawMessage{}
		size := len(envelope)
		flush := func() error {
			if len(cur) == 0 {
				return nil
			}
			content, err := json.Marshal(toDeviceContent{Sender: sender, Type: eventType, MessageID: newMessageID(), Messages: cur})
			if err != nil {
				return err
			}
			out = append(out, EDU{Destination: server, Type: ToDeviceEDUType, Content: content})
			cur, size = map[string]map[string]json.RawMessage{}, len(envelope)
			return nil
		}
		for _, userID := range users {
			devices, err := json.Marshal(messages[userID])
			if err != nil {
				return nil, err
			}
			key, _ := json.Marshal(userID)
			// "key":value plus a comma; json.Marshal escapes no more
			// than this counts.
			entry := len(key) + 1 + len(devices) + 1
			if len(envelope)+entry > MaxEDUBytes {
				return nil, mxhttp.TooLarge("The to-device messages for %s are too large to send over federation", userID)
			}
			if size+entry > MaxEDUBytes {
				if err := flush(); err != nil {
					return nil, err
				}
			}
			cur[userID] = messages[userID]
			size += entry
		}
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// newMessageID is a to-device EDU's message_id: 16 characters, as
// Synapse's, within the spec's 32.
func newMessageID() string { return randomID(8) }

// serverOf returns the server name of a user id.
func serverOf(userID string) (spec.ServerName, bool) {
	if !strings.HasPrefix(userID, "@") {
		return "", false
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok || server == "" {
		return "", false
	}
	return spec.ServerName(server), true
}

// ToDeviceReceiver delivers inbound m.direct_to_device EDUs to the devices
// of local users, through the same inboxes as local messages. Register
// its Handle for ToDeviceEDUType.
type ToDeviceReceiver struct {
	DB         *sql.DB
	ServerName spec.ServerName
	// Wake wakes the recipients' syncs (nil: nobody to tell).
	Wake *wake.Publisher
	Log  *slog.Logger
}

// Handle delivers one EDU's messages, once per (origin, message_id). It
// drops, with a log line, an EDU that does not parse, whose sender is not
// a user of origin (Synapse only logs that one), or that lacks a type or
// message_id; messages for users of other servers and contents that are
// not objects are left out.
func (d *ToDeviceReceiver) Handle(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	log := d.Log
	log = logOr(log)
	var c toDeviceContent
	if err := json.Unmarshal(raw, &c); err != nil {
		log.InfoContext(ctx, "federation: malformed to-device EDU dropped", "origin", origin, "err", err)
		return nil
	}
	sender, err := spec.NewUserID(c.Sender, true)
	if err != nil || sender.Domain() != origin {
		log.WarnContext(ctx, "federation: to-device EDU with a sender not of its origin dropped", "origin", origin, "sender", c.Sender)
		return nil
	}
	if c.Type == "" || c.MessageID == "" || len(c.MessageID) > maxMessageIDBytes {
		log.InfoContext(ctx, "federation: to-device EDU without a type or a usable message_id dropped", "origin", origin, "sender", c.Sender)
		return nil
	}
	var deliveries []sql.ToDeviceDelivery
	userIDs := make(map[string]string)
	for userID, devices := range c.Messages {
		server, ok := serverOf(userID)
		if !ok || server != d.ServerName {
			log.InfoContext(ctx, "federation: to-device message for a user not of this server left out", "origin", origin, "user_id", userID)
			continue
		}
		localpart := strings.TrimPrefix(userID[:strings.IndexByte(userID, ':')], "@")
		del := sql.ToDeviceDelivery{Localpart: localpart, Devices: make(map[string][]byte, len(devices))}
		for deviceID, content := range devices {
			if len(content) > 0 && content[0] == '{' && deviceID != "" {
				del.Devices[deviceID] = content
			}
		}
		if len(del.Devices) > 0 {
			deliveries = append(deliveries, del)
			userIDs[localpart] = userID
		}
	}
	if len(deliveries) == 0 {
		return nil
	}
	slices.SortFunc(deliveries, func(a, b sql.ToDeviceDelivery) int { return strings.Compare(a.Localpart, b.Localpart) })
	var woken []string
	err = d.DB.WithTx(ctx, func(tx *sql.Queries) error {
		fresh, err := tx.ClaimFederationToDevice(ctx, string(origin), c.MessageID)
		if err != nil || !fresh {
			return err
		}
		woken, err = tx.DeliverToDevice(ctx, c.Sender, c.Type, deliveries, maxInboundToDevice)
		return err
	})
	if errors.Is(err, sql.ErrTooManyToDevice) {
		log.WarnContext(ctx, "federation: to-device EDU for too many devices dropped", "origin", origin, "sender", c.Sender, "message_id", c.MessageID)
		return nil
	}
	if err != nil {
		return err
	}
	wakeIDs := make([]string, 0, len(woken))
	for _, l := range woken {
		wakeIDs = append(wakeIDs, userIDs[l])
	}
	d.Wake.Users(wakeIDs...)
	return nil
}

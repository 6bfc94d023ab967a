package federation

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
)

// Typing notifications between servers (spec: Server-Server API, "Typing
// Notifications"): the m.typing EDU.

// TypingEDUType is the EDU type of typing notifications.
const TypingEDUType = "m.typing"

// RemoteTypingTimeout is how long a remote user stays typing without
// their server renewing it: Synapse's FEDERATION_TIMEOUT (60 s). Synapse
// renews every 40 s; Weft renews whenever the client does, and clients
// renew before their own timeout (30 s by default).
const RemoteTypingTimeout = 60 * time.Second

// typingContent is the content of an m.typing EDU.
type typingContent struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Typing *bool  `json:"typing"`
}

// TypingStore stores typing: the client API's storage and expiry timers
// (clientapi.API.SetTyping), so that typing from other servers reaches
// syncs and times out as local typing does.
type TypingStore interface {
	// SetTyping starts userID's typing in the room for timeout, or stops
	// it. joined is false, and nothing is stored, when the user is not
	// joined to the room.
	SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) (joined bool, err error)
}

// TypingReceiver stores inbound m.typing EDUs. Register its Handle for
// TypingEDUType.
type TypingReceiver struct {
	DB    *sql.DB
	Store TypingStore
	Log   *slog.Logger
}

// Handle stores one EDU's typing, which lasts RemoteTypingTimeout unless
// renewed or stopped. It drops, with a log line, an EDU that does not
// parse, whose user is not of origin (spec: "Receiving servers should
// verify that the user is in the room, and is a user belonging to the
// sending server"), from a server the room's ACL denies (spec: "Server
// Access Control Lists"), or whose user is not joined to the room.
func (r *TypingReceiver) Handle(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	log := logOr(r.Log)
	var c typingContent
	if err := json.Unmarshal(raw, &c); err != nil || c.Typing == nil || c.RoomID == "" {
		log.InfoContext(ctx, "federation: malformed typing EDU dropped", "origin", origin)
		return nil
	}
	if !userOf(c.UserID, origin) {
		log.WarnContext(ctx, "federation: typing EDU for a user not of its origin dropped", "origin", origin, "user_id", c.UserID)
		return nil
	}
	allows, err := roomACL(ctx, &r.DB.Queries, c.RoomID)
	if err != nil {
		return err
	}
	if !allows(origin) {
		log.InfoContext(ctx, "federation: typing EDU from a server the room's ACL denies dropped", "origin", origin, "room_id", c.RoomID)
		return nil
	}
	joined, err := r.Store.SetTyping(ctx, c.RoomID, c.UserID, *c.Typing, RemoteTypingTimeout)
	if err != nil {
		return err
	}
	if !joined {
		log.InfoContext(ctx, "federation: typing EDU for a user not joined to the room dropped", "origin", origin,
			"room_id", c.RoomID, "user_id", c.UserID)
	}
	return nil
}

// EDUSender queues the EDUs of local users' typing and read receipts for
// the other servers in their rooms (clientapi.RemoteTyping and
// RemoteReceipts).
type EDUSender struct {
	DB         *sql.DB
	Queue      *Queue
	ServerName spec.ServerName
}

// SendTyping queues an m.typing EDU for each other server in the room.
func (s *EDUSender) SendTyping(ctx context.Context, roomID, userID string, typing bool) error {
	dests, err := roomDestinations(ctx, &s.DB.Queries, roomID, s.ServerName)
	if err != nil || len(dests) == 0 {
		return err
	}
	content, err := json.Marshal(typingContent{RoomID: roomID, UserID: userID, Typing: &typing})
	if err != nil {
		return err
	}
	return s.Queue.SendEDUs(ctx, eduFor(dests, TypingEDUType, content))
}

// eduFor is one EDU of the type and content for each destination.
func eduFor(dests []spec.ServerName, eduType string, content json.RawMessage) []EDU {
	out := make([]EDU, len(dests))
	for i, d := range dests {
		out[i] = EDU{Destination: d, Type: eduType, Content: content}
	}
	return out
}

// userOf reports whether userID is a valid user id of server.
func userOf(userID string, server spec.ServerName) bool {
	u, err := spec.NewUserID(userID, true)
	return err == nil && u.Domain() == server
}

// logOr is log, or a logger that discards when nil.
func logOr(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

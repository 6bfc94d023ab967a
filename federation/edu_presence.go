package federation

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/periodic"
	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/sql"
)

// Presence between servers (spec: Server-Server API, "Presence"): the
// m.presence EDU, whose push list carries users' presence to the servers
// sharing a room with them.

// PresenceEDUType is the EDU type of presence.
const PresenceEDUType = "m.presence"

// presencePerEDU bounds the users of one outbound m.presence EDU, which
// keeps it well under MaxEDUBytes (a status message is short).
const presencePerEDU = 100

// maxInboundPresence bounds the users of one inbound EDU taken; the rest
// are dropped.
const maxInboundPresence = 1000

// presencePush is one user's presence in an m.presence EDU.
type presencePush struct {
	UserID string `json:"user_id"`
	presence.Content
}

// Presence pings: servers forget a remote user's presence after 30
// minutes without news (presence.FederationTimeout, Synapse's
// FEDERATION_TIMEOUT), so the presence of local users who are not
// offline is sent again when this process has not sent it for
// presencePing (Synapse's FEDERATION_PING_INTERVAL), looked for every
// presencePingCheck.
const (
	presencePing      = 25 * time.Minute
	presencePingCheck = time.Minute
	presencePingBatch = 500
)

// PresenceSender queues m.presence EDUs for the servers sharing a room
// with this server's users (presence.Federation), and sends the presence
// of those who are not offline again before other servers forget it
// (Start). The zero value with its fields set works.
type PresenceSender struct {
	DB         *sql.DB
	Queue      *Queue
	ServerName spec.ServerName
	Log        *slog.Logger

	// mu guards sent: when this process last sent each local user's
	// presence. It is never held during I/O.
	mu   sync.Mutex
	sent map[string]time.Time
	// now is the clock (tests move it); nil means time.Now.
	now func() time.Time
}

// Start sends, every presencePingCheck until ctx ends or stop is called,
// the presence of the local users who are not offline and whose presence
// this process has not sent for presencePing (after a start, all of them
// once). content is their presence as clients see it
// (presence.Service.Content).
func (s *PresenceSender) Start(ctx context.Context, content func(sql.Presence) presence.Content) (stop func()) {
	return periodic.Start(ctx, presencePingCheck, func(ctx context.Context) {
		if err := s.ping(ctx, content); err != nil && ctx.Err() == nil {
			logOr(s.Log).Warn("federation: send presence again", "err", err)
		}
	})
}

// ping sends the presence due again, and forgets the users who went
// offline.
func (s *PresenceSender) ping(ctx context.Context, content func(sql.Presence) presence.Content) error {
	now := s.clock()
	seen := map[string]bool{}
	for after := ""; ; {
		rows, err := s.DB.LocalPresenceNotOffline(ctx, string(s.ServerName), after, presencePingBatch)
		if err != nil {
			return err
		}
		var due []presence.Update
		s.mu.Lock()
		for _, p := range rows {
			seen[p.UserID] = true
			if sent, ok := s.sent[p.UserID]; !ok || now.Sub(sent) >= presencePing {
				due = append(due, presence.Update{UserID: p.UserID, Content: content(p)})
			}
		}
		s.mu.Unlock()
		s.SendPresence(ctx, due)
		if len(rows) < presencePingBatch {
			break
		}
		after = rows[len(rows)-1].UserID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for u := range s.sent {
		if !seen[u] {
			delete(s.sent, u)
		}
	}
	return nil
}

func (s *PresenceSender) clock() time.Time {
	if s.now == nil {
		return time.Now()
	}
	return s.now()
}

// SendPresence queues the presence of the local users among updates for
// every other server sharing a room with each, one EDU per destination
// (several past presencePerEDU users). Presence is fleeting: a failure is
// logged and the change is not sent.
func (s *PresenceSender) SendPresence(ctx context.Context, updates []presence.Update) {
	var users []string
	content := map[string]presence.Content{}
	for _, u := range updates {
		if userOf(u.UserID, s.ServerName) {
			users = append(users, u.UserID)
			content[u.UserID] = u.Content
		}
	}
	if len(users) == 0 {
		return
	}
	dests, err := userDestinations(ctx, &s.DB.Queries, s.ServerName, users)
	if err != nil {
		logOr(s.Log).WarnContext(ctx, "federation: servers to send presence to", "users", len(users), "err", err)
		return
	}
	byDest := map[spec.ServerName][]presencePush{}
	for _, u := range users {
		for _, d := range dests[u] {
			byDest[d] = append(byDest[d], presencePush{UserID: u, Content: content[u]})
		}
	}
	var edus []EDU
	for _, d := range slices.Sorted(maps.Keys(byDest)) {
		for chunk := range slices.Chunk(byDest[d], presencePerEDU) {
			raw, err := json.Marshal(map[string][]presencePush{"push": chunk})
			if err != nil {
				logOr(s.Log).WarnContext(ctx, "federation: encode presence", "err", err)
				return
			}
			edus = append(edus, EDU{Destination: d, Type: PresenceEDUType, Content: raw})
		}
	}
	if len(edus) == 0 {
		s.markSent(users) // nobody to tell
		return
	}
	if err := s.Queue.SendEDUs(ctx, edus); err != nil {
		if ctx.Err() == nil {
			logOr(s.Log).WarnContext(ctx, "federation: queue presence", "users", len(users), "err", err)
		}
		return
	}
	s.markSent(users)
}

// markSent records that the users' presence was sent now.
func (s *PresenceSender) markSent(users []string) {
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent == nil {
		s.sent = map[string]time.Time{}
	}
	for _, u := range users {
		s.sent[u] = now
	}
}

// PresenceStore stores the presence other servers report
// (presence.Service has it).
type PresenceStore interface {
	ApplyRemote(ctx context.Context, updates []presence.RemoteUpdate) error
}

// PresenceReceiver stores inbound m.presence EDUs. Register its Handle
// for PresenceEDUType.
type PresenceReceiver struct {
	DB         *sql.DB
	Store      PresenceStore
	ServerName spec.ServerName
	Log        *slog.Logger
}

// Handle stores the presence of one EDU's push list (currently_active is
// derived from last_active_ago, as the user's own server derives it: see
// presence.ApplyRemote). Left out, with a log line: entries for users not of origin, with a state other than
// online, unavailable and offline, or that do not parse, and users who
// share no room with a user of this server (nobody here may see their
// presence). An EDU without a push list is dropped.
func (r *PresenceReceiver) Handle(ctx context.Context, origin spec.ServerName, raw json.RawMessage) error {
	log := logOr(r.Log)
	var c struct {
		Push []json.RawMessage `json:"push"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		log.InfoContext(ctx, "federation: malformed presence EDU dropped", "origin", origin, "err", err)
		return nil
	}
	if len(c.Push) > maxInboundPresence {
		log.WarnContext(ctx, "federation: presence past the limit of one EDU dropped", "origin", origin, "users", len(c.Push))
		c.Push = c.Push[:maxInboundPresence]
	}
	byUser := map[string]presence.RemoteUpdate{}
	for _, raw := range c.Push {
		var p struct {
			UserID        string  `json:"user_id"`
			Presence      string  `json:"presence"`
			StatusMsg     *string `json:"status_msg"`
			LastActiveAgo *int64  `json:"last_active_ago"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			log.InfoContext(ctx, "federation: malformed presence entry dropped", "origin", origin)
			continue
		}
		if !userOf(p.UserID, origin) {
			log.WarnContext(ctx, "federation: presence of a user not of its origin dropped", "origin", origin, "user_id", p.UserID)
			continue
		}
		switch p.Presence {
		case presence.Online, presence.Unavailable, presence.Offline:
		default:
			log.InfoContext(ctx, "federation: presence with an unknown state dropped", "origin", origin, "user_id", p.UserID, "presence", p.Presence)
			continue
		}
		u := presence.RemoteUpdate{UserID: p.UserID, State: p.Presence}
		if p.StatusMsg != nil {
			u.StatusMsg = *p.StatusMsg
		}
		if p.LastActiveAgo != nil && *p.LastActiveAgo > 0 {
			// A negative age is taken as now; a huge one as long ago.
			u.LastActiveAgo = time.Duration(min(*p.LastActiveAgo, int64(365*24*time.Hour/time.Millisecond))) * time.Millisecond
		}
		byUser[p.UserID] = u // the last entry of a user wins
	}
	if len(byUser) == 0 {
		return nil
	}
	users := slices.Sorted(maps.Keys(byUser))
	shared, err := r.DB.SharedSince(ctx, string(r.ServerName), users)
	if err != nil {
		return err
	}
	updates := make([]presence.RemoteUpdate, 0, len(users))
	for _, u := range users {
		if _, ok := shared[u]; ok {
			updates = append(updates, byUser[u])
		}
	}
	if len(updates) < len(users) {
		log.InfoContext(ctx, "federation: presence of users sharing no room with this server's dropped", "origin", origin,
			"users", len(users)-len(updates))
	}
	if len(updates) == 0 {
		return nil
	}
	return r.Store.ApplyRemote(ctx, updates)
}

// Package presence keeps users' presence (spec: Presence module): the
// state machine of online, unavailable and offline driven by syncs,
// explicit changes and activity; the sweeper that applies the timeouts
// without waiting for a request; and who may see whose presence.
//
// The database is the truth: every process runs the same rules against
// the presence table with conditional writes, so processes need no
// coordination, and a change clients must see takes a presence stream
// position in the transaction that writes it. After a change, the syncs
// of the user and of everyone joined to a room with them are woken.
package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/sql"
)

// Service reads and changes presence. It keeps no state of its own but
// the changes it is writing, so any number of them, in one process or
// several, may share a database.
type Service struct {
	db   *sql.DB
	wake *wake.Publisher
	log  *slog.Logger
	now  func() time.Time
	// fed tells other servers about changes (nil: nobody to tell).
	fed Federation
	// hints spare the reads of rules that change nothing (nil: none).
	hints *Hints
	// writes applies the changes of requests, several at once.
	writes *writer
}

// Federation tells the servers sharing a room with a user about their
// new presence (federation.PresenceSender has it). It is handed every
// change clients see, after the commit, and keeps only those of this
// server's users. Best effort: it logs its failures.
type Federation interface {
	SendPresence(ctx context.Context, updates []Update)
}

// Update is a user's new presence, as clients see it.
type Update struct {
	UserID  string
	Content Content
}

// WithFederation makes the Service tell other servers about presence
// changes through f.
func WithFederation(f Federation) Option {
	return func(s *Service) { s.fed = f }
}

// Option tunes a Service.
type Option func(*Service)

// WithClock makes the Service read the time from now (tests move it).
func WithClock(now func() time.Time) Option {
	return func(s *Service) { s.now = now }
}

// New makes a Service over db that wakes syncs through w (nil: none).
func New(db *sql.DB, w *wake.Publisher, log *slog.Logger, opts ...Option) *Service {
	s := &Service{db: db, wake: w, log: log, now: time.Now, writes: &writer{db: db, together: db.Engine() == config.SQLite}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// maxAttempts bounds the re-reads of a row that another writer changed
// between our read and our write.
const maxAttempts = 5

// errContended is returned when a row kept changing under a writer.
var errContended = errors.New("presence row changed under every attempt")

// Get returns a user's presence as it stands now: offline for a user who
// never had one, and with the timeouts applied even when the sweeper has
// not written them yet.
func (s *Service) Get(ctx context.Context, userID string) (Content, error) {
	p, err := s.read(ctx, userID)
	if err != nil {
		return Content{}, err
	}
	now := ms(s.now())
	return contentAt(current(p, now), now), nil
}

// Content is p as clients see it now.
func (s *Service) Content(p sql.Presence) Content {
	return contentAt(p, ms(s.now()))
}

// Set is the user's explicit choice of state (online, unavailable or
// offline; the caller checks it) and status message ("" for none).
func (s *Service) Set(ctx context.Context, userID, state, statusMsg string) error {
	now := ms(s.now())
	return s.update(ctx, userID, func(p sql.Presence) outcome { return onSet(p, state, statusMsg, now) })
}

// Synced records a sync of the user with set_presence (online, the
// default, when empty), which waits up to wait for something to change.
func (s *Service) Synced(ctx context.Context, userID, setPresence string, wait time.Duration) error {
	if setPresence == "" {
		setPresence = Online
	}
	now := ms(s.now())
	until := now + wait.Milliseconds()
	return s.update(ctx, userID, func(p sql.Presence) outcome { return onSync(p, setPresence, now, until) })
}

// Active records a pro-active event of the user, such as sending a
// message (spec: Last active ago).
func (s *Service) Active(ctx context.Context, userID string) error {
	now := ms(s.now())
	return s.update(ctx, userID, func(p sql.Presence) outcome { return onActivity(p, now) })
}

// CanSee reports whether observer may see observed's presence: their
// own, and that of users they share a joined room with (spec: "Presence
// events are sent to interested parties where users share a room
// membership"; Synapse's is_visible).
func (s *Service) CanSee(ctx context.Context, observer, observed string) (bool, error) {
	if observer == observed {
		return true, nil
	}
	ok, err := s.db.SharesJoinedRoom(ctx, observer, observed)
	if err != nil {
		return false, fmt.Errorf("presence visibility: %w", err)
	}
	return ok, nil
}

// read returns the stored row, or the default one.
func (s *Service) read(ctx context.Context, userID string) (sql.Presence, error) {
	p, err := s.db.PresenceOf(ctx, userID)
	if errors.Is(err, sql.ErrNotFound) {
		return defaultPresence(userID), nil
	}
	if err != nil {
		return sql.Presence{}, fmt.Errorf("presence of %s: %w", userID, err)
	}
	return p, nil
}

// update reads the user's row, applies rule and writes the outcome if the
// row did not change in between (otherwise it starts again), then wakes
// whom the change concerns.
func (s *Service) update(ctx context.Context, userID string, rule func(sql.Presence) outcome) error {
	if p, ok := s.hints.get(userID, s.now()); ok && !rule(p).write {
		return nil
	}
	for range maxAttempts {
		p, err := s.read(ctx, userID)
		if err != nil {
			return err
		}
		s.hints.put(p, s.now())
		o := rule(p)
		if !o.write {
			return nil
		}
		applied, err := s.writes.apply(ctx, sql.PresenceChange{Prev: p, Next: o.next, Notify: o.notify})
		if err != nil {
			s.hints.Forget(userID)
			return err
		}
		if applied {
			s.hints.put(o.next, s.now())
			if o.notify {
				s.wakeFor(ctx, []string{userID})
				s.federate(ctx, []sql.Presence{o.next})
			}
			return nil
		}
	}
	return fmt.Errorf("presence of %s: %w", userID, errContended)
}

// wakeFor wakes the syncs of the users whose presence changed and of
// everyone joined to a room with them, after the commit. A failure only
// delays those syncs, so it is logged.
func (s *Service) wakeFor(ctx context.Context, userIDs []string) {
	if s.wake == nil || len(userIDs) == 0 {
		return
	}
	rooms, err := s.db.JoinedRoomsOf(ctx, userIDs)
	if err != nil {
		s.log.Warn("presence: rooms to wake", "users", len(userIDs), "err", err)
	}
	s.wake.Presence(userIDs, rooms)
}

// federate hands changes clients see to the other servers.
func (s *Service) federate(ctx context.Context, changed []sql.Presence) {
	if s.fed == nil || len(changed) == 0 {
		return
	}
	now := ms(s.now())
	updates := make([]Update, len(changed))
	for i, p := range changed {
		updates[i] = Update{UserID: p.UserID, Content: contentAt(p, now)}
	}
	s.fed.SendPresence(ctx, updates)
}

// Package wake carries the wake-ups of long-polling syncs between
// processes: a writer of anything a sync returns, other than room events
// (which the notifier reads from room.output), announces the users or
// rooms it concerns, and every process's notifier wakes the syncs it
// holds for them.
//
// A wake-up says nothing about what changed: a woken sync reads the
// database. Publishing is best effort: a lost wake-up delays a sync until
// its timeout and loses nothing, so callers publish after their commit
// and only log a failure.
package wake

import (
	"encoding/json"
	"log/slog"

	"github.com/nats-io/nats.go"
)

// Subject is the core NATS subject of wake-ups.
const Subject = "sync.wake"

// Message is a wake-up: the users to wake, and the rooms whose joined
// members to wake.
type Message struct {
	Users []string `json:"u,omitempty"`
	Rooms []string `json:"r,omitempty"`
	// Presence says the users' presence changed (see presence.Hints).
	Presence bool `json:"p,omitempty"`
}

// Publisher publishes wake-ups. The zero value, and a nil one, publish
// nothing (a component tested alone).
type Publisher struct {
	nc  *nats.Conn
	log *slog.Logger
}

// NewPublisher publishes on nc, logging failures to log.
func NewPublisher(nc *nats.Conn, log *slog.Logger) *Publisher {
	return &Publisher{nc: nc, log: log}
}

// Users wakes the syncs of the given users.
func (p *Publisher) Users(userIDs ...string) {
	p.publish(Message{Users: userIDs})
}

// Rooms wakes the syncs of the joined members of the given rooms.
func (p *Publisher) Rooms(roomIDs ...string) {
	p.publish(Message{Rooms: roomIDs})
}

// Presence wakes the syncs of users whose presence changed and of the
// joined members of their rooms.
func (p *Publisher) Presence(userIDs, roomIDs []string) {
	p.publish(Message{Users: userIDs, Rooms: roomIDs, Presence: true})
}

// publish sends one wake-up.
func (p *Publisher) publish(m Message) {
	if p == nil || p.nc == nil || (len(m.Users) == 0 && len(m.Rooms) == 0) {
		return
	}
	data, err := json.Marshal(m)
	if err == nil {
		err = p.nc.Publish(Subject, data)
	}
	if err != nil {
		p.log.Warn("publish sync wake-up", "users", m.Users, "rooms", m.Rooms, "err", err)
	}
}

// Subscribe calls f with every wake-up published on nc, from any process.
// Malformed messages are dropped.
func Subscribe(nc *nats.Conn, f func(Message)) (*nats.Subscription, error) {
	return nc.Subscribe(Subject, func(msg *nats.Msg) {
		var m Message
		if json.Unmarshal(msg.Data, &m) == nil {
			f(m)
		}
	})
}

package stateres

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Test users. Alice creates every room; in room version 12 that makes her
// a creator with infinite power, in older versions she has 100.
const (
	alice   = "@alice:a.example"
	bob     = "@bob:b.example"
	charlie = "@charlie:c.example"
)

// roomCount numbers the rooms of versions whose room ids are not hashes.
var roomCount int

// room is an in-memory room: signed events, built with gomatrixserverlib's
// builder, whose auth_events are chosen from the state of the branch they
// are sent on, as a homeserver chooses them.
type room struct {
	t      testing.TB
	ver    gomatrixserverlib.IRoomVersion
	roomID string
	key    ed25519.PrivateKey
	clock  int64
	events map[string]gomatrixserverlib.PDU
}

// branch is one line of history: its current state and its last event.
type branch struct {
	r     *room
	state map[Key]gomatrixserverlib.PDU
	tip   gomatrixserverlib.PDU
}

// newRoom builds a public room of version ver: Alice creates it and joins,
// sets the power levels (Alice 100 unless she is a creator, plus users;
// state events need 50), public join rules, then each of joiners joins.
func newRoom(t testing.TB, ver gomatrixserverlib.RoomVersion, users map[string]int64, joiners ...string) *branch {
	t.Helper()
	return newRoomWith(t, ver, nil, users, joiners...)
}

// newRoomWith is newRoom with more create event content.
func newRoomWith(t testing.TB, ver gomatrixserverlib.RoomVersion, create map[string]any, users map[string]int64, joiners ...string) *branch {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &room{t: t, ver: gomatrixserverlib.MustGetRoomVersion(ver), key: key, clock: 1_700_000_000_000, events: map[string]gomatrixserverlib.PDU{}}
	if !r.ver.DomainlessRoomIDs() {
		roomCount++
		r.roomID = fmt.Sprintf("!room%d:a.example", roomCount)
	}
	b := &branch{r: r, state: map[Key]gomatrixserverlib.PDU{}}
	content := map[string]any{"creator": alice, "room_version": string(ver)}
	maps.Copy(content, create)
	if ev := b.send(alice, spec.MRoomCreate, "", content); r.ver.DomainlessRoomIDs() {
		r.roomID = "!" + ev.EventID()[1:]
	}
	b.join(alice, "")
	b.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(users))
	b.send(alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"})
	for _, u := range joiners {
		b.join(u, "")
	}
	return b
}

// powerLevels is power_levels content granting users their levels, with
// Alice at 100 in the versions where she is not a creator (a creator may
// not be listed in room version 12).
func (b *branch) powerLevels(users map[string]int64) map[string]any {
	all := maps.Clone(users)
	if all == nil {
		all = map[string]int64{}
	}
	if !b.r.ver.PrivilegedCreators() {
		all[alice] = 100
	}
	return map[string]any{
		"users": all, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0,
	}
}

func (b *branch) fork() *branch {
	return &branch{r: b.r, state: maps.Clone(b.state), tip: b.tip}
}

func (b *branch) send(sender, typ, stateKey string, content any) gomatrixserverlib.PDU {
	b.r.clock++
	return b.sendAt(b.r.clock, sender, typ, stateKey, content)
}

// sendAt sends with a chosen origin_server_ts, for a sender whose clock is off.
func (b *branch) sendAt(ts int64, sender, typ, stateKey string, content any) gomatrixserverlib.PDU {
	r := b.r
	r.t.Helper()
	proto := gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: r.roomID, Type: typ, StateKey: &stateKey, Depth: 1, PrevEvents: []string{}}
	if b.tip != nil {
		proto.PrevEvents = []string{b.tip.EventID()}
		proto.Depth = b.tip.Depth() + 1
	}
	if err := proto.SetContent(content); err != nil {
		r.t.Fatal(err)
	}
	builder := r.ver.NewEventBuilderFromProtoEvent(&proto)
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		r.t.Fatal(err)
	}
	var candidates []gomatrixserverlib.PDU
	for _, k := range needed.Tuples() {
		if ev, ok := b.state[k]; ok {
			candidates = append(candidates, ev)
		}
	}
	provider, err := gomatrixserverlib.NewAuthEvents(candidates)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := builder.AddAuthEvents(provider); err != nil {
		r.t.Fatal(err)
	}
	ev, err := builder.Build(time.UnixMilli(ts), "a.example", "ed25519:1", r.key)
	if err != nil {
		r.t.Fatalf("build %s: %v", typ, err)
	}
	r.events[ev.EventID()] = ev
	b.state[Key{EventType: typ, StateKey: stateKey}] = ev
	b.tip = ev
	return ev
}

func (b *branch) join(user, displayName string) gomatrixserverlib.PDU {
	content := map[string]any{"membership": "join"}
	if displayName != "" {
		content["displayname"] = displayName
	}
	return b.send(user, spec.MRoomMember, user, content)
}

// ids is the branch's state as Resolve takes it.
func (b *branch) ids() map[Key]string {
	out := make(map[Key]string, len(b.state))
	for k, ev := range b.state {
		out[k] = ev.EventID()
	}
	return out
}

// store is a Loader over the room's events that counts its calls.
type store struct {
	events map[string]gomatrixserverlib.PDU
	calls  int
	loaded int
}

func (r *room) store() *store { return &store{events: r.events} }

func (s *store) load(_ context.Context, ids []string) (map[string]gomatrixserverlib.PDU, error) {
	s.calls++
	out := make(map[string]gomatrixserverlib.PDU, len(ids))
	for _, id := range ids {
		if ev, ok := s.events[id]; ok {
			out[id] = ev
			s.loaded++
		}
	}
	return out, nil
}

// resolve resolves states with the room's own events and fails the test on
// an error.
func (r *room) resolve(states ...map[Key]string) map[Key]string {
	r.t.Helper()
	got, err := Resolve(context.Background(), r.ver, states, r.store().load)
	if err != nil {
		r.t.Fatalf("Resolve: %v", err)
	}
	return got
}

var (
	topicKey = Key{EventType: spec.MRoomTopic, StateKey: ""}
)

func memberKey(user string) Key { return Key{EventType: spec.MRoomMember, StateKey: user} }

// expect fails the test for every key whose resolved event is not the given one.
func expect(t testing.TB, got map[Key]string, want map[Key]gomatrixserverlib.PDU) {
	t.Helper()
	for k, ev := range want {
		if got[k] != ev.EventID() {
			t.Errorf("%v: got %s, want %s (%s)", k, got[k], ev.EventID(), ev.Content())
		}
	}
}

package stateres

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestV21StartsFromEmptyState is MSC4297's "problem A", which room version
// 12 fixes (rooms/v12.md, state resolution, modification 1: step 2 starts
// from an empty state map instead of the unconflicted state map).
//
// Bob, a moderator, sets the join rules to invite (JR2) and gives Charlie a
// power level (PL2), then leaves. Charlie renames himself; his server's
// clock runs behind, so the rename carries an earlier origin_server_ts than
// his original join. One state is the room's true state; the other, as a
// partial /state response can give it, still has the old join rules, power
// levels and Charlie join, but agrees that Bob has left.
//
// v2 (room version 11) starts its auth checks from the unconflicted state,
// where Bob has left: his JR2 and PL2 are refused although he was a member
// when he sent them, so the join rules fall back to public (JR1) and the
// power levels to PL1. Both of Charlie's events then sit at the same
// mainline position (PL2, which the rename cites, leads back to PL1) and the
// skewed timestamps replay the rename first: the old display name wins.
//
// v2.1 (room version 12) starts empty, so Bob's events are checked against
// their own auth events (where Bob is joined) and pass: the join rules end
// as invite, the mainline is PL2 then PL1, and the rename, citing the newer
// PL2, is replayed last: the last display name wins.
func TestV21StartsFromEmptyState(t *testing.T) {
	build := func(ver gomatrixserverlib.RoomVersion) (r *room, states []map[Key]string, old, new map[string]gomatrixserverlib.PDU) {
		// Bob joins first, then Alice makes him a moderator and resends the
		// join rules: so Bob's join cites no event of the conflicted state
		// set and the conflicted subgraph (the other v2.1 change) cannot
		// bring it back; only the empty start can make the difference.
		b := newRoom(t, ver, nil, bob)
		pl1 := b.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50}))
		jr1 := b.send(alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"})
		charlieJoin := b.join(charlie, "Charlie")
		jr2 := b.send(bob, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"})
		pl2 := b.send(bob, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 10}))
		rename := b.sendAt(charlieJoin.OriginServerTS().Time().UnixMilli()-1, charlie, spec.MRoomMember, charlie,
			map[string]any{"membership": "join", "displayname": "Charlie 2"})
		b.send(bob, spec.MRoomMember, bob, map[string]any{"membership": "leave"})

		stale := b.ids()
		stale[joinRulesKey] = jr1.EventID()
		stale[powerLevelsKey] = pl1.EventID()
		stale[memberKey(charlie)] = charlieJoin.EventID()
		return b.r, []map[Key]string{b.ids(), stale},
			map[string]gomatrixserverlib.PDU{"jr": jr1, "pl": pl1, "charlie": charlieJoin},
			map[string]gomatrixserverlib.PDU{"jr": jr2, "pl": pl2, "charlie": rename}
	}

	r, states, _, new := build(gomatrixserverlib.RoomVersionV12)
	expect(t, r.resolve(states...), map[Key]gomatrixserverlib.PDU{
		joinRulesKey: new["jr"], powerLevelsKey: new["pl"], memberKey(charlie): new["charlie"],
	})

	r, states, old, _ := build(gomatrixserverlib.RoomVersionV11)
	expect(t, r.resolve(states...), map[Key]gomatrixserverlib.PDU{
		joinRulesKey: old["jr"], powerLevelsKey: old["pl"], memberKey(charlie): old["charlie"],
	})
}

// TestV21ConflictedSubgraph is MSC4297's "problem B", which room version 12
// fixes by adding the conflicted state subgraph to the full conflicted set
// (rooms/v12.md, "Conflicted state subgraph").
//
// Alice promotes Bob (PL2), Bob sets the topic, then promotes Charlie (PL3).
// The stale state still has PL1 but the new topic, whose auth events cite
// PL2: so both states' auth chains contain PL2 and it is not in the auth
// difference. v2 replays only PL1 and PL3; PL3 is checked against PL1, where
// Bob has no power, and is refused: the power levels reset to PL1. v2.1 also
// replays PL2, which lies on the auth path from PL3 to PL1, so PL3 passes and
// the later power levels win.
func TestV21ConflictedSubgraph(t *testing.T) {
	build := func(ver gomatrixserverlib.RoomVersion) (*room, []map[Key]string, gomatrixserverlib.PDU, gomatrixserverlib.PDU) {
		b := newRoom(t, ver, nil, bob, charlie)
		pl1 := b.state[powerLevelsKey]
		b.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50}))
		b.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "Bob was here"})
		pl3 := b.send(bob, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 50}))
		stale := b.ids()
		stale[powerLevelsKey] = pl1.EventID()
		return b.r, []map[Key]string{b.ids(), stale}, pl1, pl3
	}

	r, states, _, pl3 := build(gomatrixserverlib.RoomVersionV12)
	expect(t, r.resolve(states...), map[Key]gomatrixserverlib.PDU{powerLevelsKey: pl3})

	r, states, pl1, _ := build(gomatrixserverlib.RoomVersionV11)
	expect(t, r.resolve(states...), map[Key]gomatrixserverlib.PDU{powerLevelsKey: pl1})
}

// allVersions are the room versions Weft supports.
var allVersions = []gomatrixserverlib.RoomVersion{
	gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
	gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
	gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
	gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12,
}

// TestForks resolves two branches of a room, forked from the same state, in
// every room version: the answers are the same under v1, v2 and v2.1.
func TestForks(t *testing.T) {
	for _, ver := range allVersions {
		t.Run("v"+string(ver), func(t *testing.T) {
			t.Run("topic vs topic", func(t *testing.T) {
				b := newRoom(t, ver, map[string]int64{bob: 50}, bob)
				a, c := b.fork(), b.fork()
				ta := a.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "A"})
				tc := c.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "B"})
				// v2: both cite the same power levels, so the mainline ties
				// and the later origin_server_ts (Bob's) is replayed last.
				want := tc
				if ver == gomatrixserverlib.RoomVersionV1 {
					// v1: same depth, so the smaller sha1(event_id) wins.
					if sha1hex(ta.EventID()) < sha1hex(tc.EventID()) {
						want = ta
					}
				}
				expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{topicKey: want})
			})
			t.Run("ban vs topic", func(t *testing.T) {
				b := newRoom(t, ver, map[string]int64{bob: 50}, bob)
				topic := b.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "old"})
				a, c := b.fork(), b.fork()
				ban := a.send(alice, spec.MRoomMember, bob, map[string]any{"membership": "ban"})
				c.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "Bob's"})
				// The ban is a power event, replayed first; Bob's topic is
				// then refused, as he is no longer joined.
				expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{memberKey(bob): ban, topicKey: topic})
			})
			t.Run("power levels vs power levels", func(t *testing.T) {
				b := newRoom(t, ver, map[string]int64{bob: 50}, bob, charlie)
				a, c := b.fork(), b.fork()
				demote := a.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(nil))
				c.send(bob, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 50}))
				// Alice has more power, so her demotion of Bob is replayed
				// first and Bob's concurrent promotion of Charlie is refused.
				expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{powerLevelsKey: demote})
			})
			t.Run("promotion chain vs power levels", func(t *testing.T) {
				b := newRoom(t, ver, nil, bob, charlie)
				a, c := b.fork(), b.fork()
				other := c.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{charlie: 0}))
				a.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50}))
				promote := a.send(bob, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 50}))
				// v2: Alice's promotion of Bob is in one branch's auth chain
				// only, so it is in the auth difference and replayed before
				// Bob's promotion of Charlie, which then passes.
				want := promote
				if ver == gomatrixserverlib.RoomVersionV1 {
					// v1 replays only the conflicted power levels, shallowest
					// first: Bob's, checked against Alice's other change
					// where he has no power, is refused (the reset v2 fixed).
					want = other
				}
				expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{powerLevelsKey: want})
			})
		})
	}
}

// TestPowerOrdersBeforeTime: in the reverse topological power ordering the
// sender's power comes before origin_server_ts (rooms/v2.md), so of two
// concurrent join rules the one by the more powerful sender is replayed
// first and the other, replayed last, wins, even though it is older. In room
// version 12 the creators' power is infinite (rooms/v12.md) although the
// power levels do not list them, additional_creators included.
func TestPowerOrdersBeforeTime(t *testing.T) {
	for _, ver := range allVersions[1:] {
		t.Run("v"+string(ver), func(t *testing.T) {
			b := newRoom(t, ver, map[string]int64{bob: 50}, bob)
			a, c := b.fork(), b.fork()
			older := c.send(bob, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"})
			a.send(alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "knock"})
			expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{joinRulesKey: older})
		})
	}
	t.Run("v12 additional creator", func(t *testing.T) {
		b := newRoomWith(t, gomatrixserverlib.RoomVersionV12, map[string]any{"additional_creators": []string{charlie}},
			map[string]int64{bob: 50}, bob, charlie)
		a, c := b.fork(), b.fork()
		older := c.send(bob, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"})
		a.send(charlie, spec.MRoomJoinRules, "", map[string]any{"join_rule": "knock"})
		expect(t, b.r.resolve(a.ids(), c.ids()), map[Key]gomatrixserverlib.PDU{joinRulesKey: older})
	})
}

func sha1hex(s string) string {
	sum := sha1.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// chain40 builds two branches of a room: one of 40 events alternating a
// power levels change by Alice and a display name change by Bob, each
// citing the previous ones, the other a topic and a rename. It returns the
// room, the two states and the last power levels and rename of the chain.
func chain40(t testing.TB, ver gomatrixserverlib.RoomVersion) (r *room, states []map[Key]string, pl, rename, topic gomatrixserverlib.PDU) {
	b := newRoom(t, ver, map[string]int64{bob: 50}, bob)
	long, short := b.fork(), b.fork()
	for i := range 20 {
		levels := long.powerLevels(map[string]int64{bob: 50})
		levels["events"] = map[string]int64{"org.example.counter": int64(i)}
		pl = long.send(alice, spec.MRoomPowerLevels, "", levels)
		rename = long.join(bob, fmt.Sprintf("Bob %d", i))
	}
	topic = short.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "short"})
	short.join(bob, "Bob on the short branch")
	return b.r, []map[Key]string{long.ids(), short.ids()}, pl, rename, topic
}

// TestChain40 checks the answer BenchmarkResolveChain40 times: every power
// levels change of the chain is replayed in order, and the renames sort by
// the mainline of the last one, so the chain's last rename wins over the
// short branch's.
func TestChain40(t *testing.T) {
	for _, ver := range []gomatrixserverlib.RoomVersion{gomatrixserverlib.RoomVersionV10, gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12} {
		r, states, pl, rename, topic := chain40(t, ver)
		got := r.resolve(states...)
		expect(t, got, map[Key]gomatrixserverlib.PDU{powerLevelsKey: pl, memberKey(bob): rename, topicKey: topic})
	}
}

func BenchmarkResolveChain40(b *testing.B) {
	r, states, _, _, _ := chain40(b, gomatrixserverlib.RoomVersionV12)
	s := r.store()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Resolve(context.Background(), r.ver, states, s.load); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveLargeUnconflicted resolves two branches of a room of
// 10,000 members that differ in a few keys. With "topics" the conflicts'
// auth chains are explained by the unconflicted events they reach, so the
// 10,000 members are never loaded. With "superseded power levels" one branch
// changed the power levels twice, so the first change is in one auth chain
// only and the unconflicted events must all be walked to learn whether one
// of them cites it: the cost of the spec's auth difference without an index.
func BenchmarkResolveLargeUnconflicted(b *testing.B) {
	const members = 10_000
	base := newRoom(b, gomatrixserverlib.RoomVersionV12, map[string]int64{bob: 50}, bob, charlie)
	for i := range members {
		base.join(fmt.Sprintf("@m%d:m.example", i), "")
	}
	b.Run("topics", func(b *testing.B) {
		x, y := base.fork(), base.fork()
		x.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "x"})
		x.join("@m1:m.example", "renamed")
		y.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "y"})
		y.send("@m2:m.example", spec.MRoomMember, "@m2:m.example", map[string]any{"membership": "leave"})
		benchResolve(b, base.r, x.ids(), y.ids())
	})
	b.Run("superseded power levels", func(b *testing.B) {
		x, y := base.fork(), base.fork()
		x.send(alice, spec.MRoomPowerLevels, "", x.powerLevels(map[string]int64{bob: 50, charlie: 10}))
		x.send(alice, spec.MRoomPowerLevels, "", x.powerLevels(map[string]int64{bob: 50, charlie: 20}))
		y.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "y"})
		benchResolve(b, base.r, x.ids(), y.ids())
	})
}

func benchResolve(b *testing.B, r *room, states ...map[Key]string) {
	s := r.store()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Resolve(context.Background(), r.ver, states, s.load); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(s.calls)/float64(b.N), "loads/op")
	b.ReportMetric(float64(s.loaded)/float64(b.N), "events/op")
}

// TestUnconflictedLoadsNothing: states that agree on every key (identical
// or not) need no event at all.
func TestUnconflictedLoadsNothing(t *testing.T) {
	b := newRoom(t, gomatrixserverlib.RoomVersionV12, nil, bob)
	never := func(context.Context, []string) (map[string]gomatrixserverlib.PDU, error) {
		t.Fatal("Loader called for unconflicted states")
		return nil, nil
	}
	s := b.ids()
	for _, states := range [][]map[Key]string{{s}, {s, s}, {s, b.ids(), b.fork().ids()}} {
		got, err := Resolve(context.Background(), b.r.ver, states, never)
		if err != nil || len(got) != len(s) {
			t.Fatalf("got %d keys, %v; want %d", len(got), err, len(s))
		}
	}
	got, err := Resolve(context.Background(), b.r.ver, nil, never)
	if err != nil || len(got) != 0 {
		t.Fatalf("no states: got %v, %v", got, err)
	}
}

// TestLoaderBatches: the auth chains are loaded one level at a time across
// all conflicted events, not one event at a time.
func TestLoaderBatches(t *testing.T) {
	b := newRoom(t, gomatrixserverlib.RoomVersionV12, nil)
	for i := range 50 {
		b.join(fmt.Sprintf("@m%d:m.example", i), "")
	}
	x, y := b.fork(), b.fork()
	for i := range 50 {
		x.join(fmt.Sprintf("@m%d:m.example", i), "renamed")
	}
	y.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "y"})
	s := b.r.store()
	got, err := Resolve(context.Background(), b.r.ver, []map[Key]string{x.ids(), y.ids()}, s.load)
	if err != nil {
		t.Fatal(err)
	}
	if got[memberKey("@m7:m.example")] != x.state[memberKey("@m7:m.example")].EventID() {
		t.Error("rename lost")
	}
	// The renames, then the joins and power levels they cite, then those
	// events' own auth events: a handful of levels, whatever the width.
	if s.calls > 5 {
		t.Errorf("%d Loader calls for 51 conflicted events; want one per auth chain level", s.calls)
	}
}

// rewired is an event whose auth_events a broken or hostile store changed
// after the fact: the only way to make cycles with hash event ids.
type rewired struct {
	gomatrixserverlib.PDU
	auth []string
}

func (e rewired) AuthEventIDs() []string { return e.auth }

// TestBrokenGraphs: auth events the Loader lacks, events of another room,
// cycles (between power events, in the mainline, of an event with itself)
// must neither crash nor hang Resolve.
func TestBrokenGraphs(t *testing.T) {
	for _, ver := range []gomatrixserverlib.RoomVersion{gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV6, gomatrixserverlib.RoomVersionV11, gomatrixserverlib.RoomVersionV12} {
		t.Run("v"+string(ver), func(t *testing.T) {
			b := newRoom(t, ver, map[string]int64{bob: 50}, bob, charlie)
			a, c := b.fork(), b.fork()
			pla := a.send(alice, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 10}))
			tpa := a.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "a"})
			plc := c.send(bob, spec.MRoomPowerLevels, "", b.powerLevels(map[string]int64{bob: 50, charlie: 20}))
			tpc := c.send(charlie, spec.MRoomMember, charlie, map[string]any{"membership": "leave"})
			states := []map[Key]string{a.ids(), c.ids()}
			events := b.r.events

			run := func(name string, change func(map[string]gomatrixserverlib.PDU)) {
				t.Run(name, func(t *testing.T) {
					s := &store{events: map[string]gomatrixserverlib.PDU{}}
					for id, ev := range events {
						s.events[id] = ev
					}
					change(s.events)
					if _, err := Resolve(context.Background(), b.r.ver, states, s.load); err != nil {
						t.Fatalf("Resolve: %v", err)
					}
				})
			}
			run("missing power levels", func(m map[string]gomatrixserverlib.PDU) {
				delete(m, b.state[powerLevelsKey].EventID())
			})
			run("missing create and joins", func(m map[string]gomatrixserverlib.PDU) {
				delete(m, b.state[createKey].EventID())
				delete(m, b.state[memberKey(bob)].EventID())
			})
			run("missing conflicted event", func(m map[string]gomatrixserverlib.PDU) {
				delete(m, tpa.EventID())
			})
			run("power events in a cycle", func(m map[string]gomatrixserverlib.PDU) {
				m[pla.EventID()] = rewired{pla, append(pla.AuthEventIDs(), plc.EventID())}
				m[plc.EventID()] = rewired{plc, append(plc.AuthEventIDs(), pla.EventID())}
			})
			run("event citing itself", func(m map[string]gomatrixserverlib.PDU) {
				m[tpc.EventID()] = rewired{tpc, append(tpc.AuthEventIDs(), tpc.EventID())}
				m[pla.EventID()] = rewired{pla, append(pla.AuthEventIDs(), pla.EventID())}
			})
			run("mainline cycle", func(m map[string]gomatrixserverlib.PDU) {
				pl := b.state[powerLevelsKey]
				m[pl.EventID()] = rewired{pl, append(pl.AuthEventIDs(), pla.EventID())}
			})
			run("auth event of another room", func(m map[string]gomatrixserverlib.PDU) {
				foreign := newRoom(t, ver, nil).state[joinRulesKey]
				m[foreign.EventID()] = foreign
				m[tpa.EventID()] = rewired{tpa, append(tpa.AuthEventIDs(), foreign.EventID())}
			})
		})
	}
}

// TestErrors: a failing Loader, a cancelled context and malformed events
// come back as errors, never panics.
func TestErrors(t *testing.T) {
	b := newRoom(t, gomatrixserverlib.RoomVersionV12, nil, bob)
	a, c := b.fork(), b.fork()
	a.send(alice, spec.MRoomTopic, "", map[string]any{"topic": "a"})
	tc := c.send(bob, spec.MRoomTopic, "", map[string]any{"topic": "c"})
	states := []map[Key]string{a.ids(), c.ids()}

	boom := errors.New("database down")
	_, err := Resolve(context.Background(), b.r.ver, states, func(context.Context, []string) (map[string]gomatrixserverlib.PDU, error) {
		return nil, boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("failing Loader: got %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Resolve(ctx, b.r.ver, states, b.r.store().load); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v", err)
	}

	s := b.r.store()
	s.events[tc.EventID()] = panicky{tc}
	if _, err := Resolve(context.Background(), b.r.ver, states, s.load); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("malformed event: got %v", err)
	}

	if _, err := Resolve(context.Background(), nil, states, s.load); err == nil {
		t.Error("no room version: no error")
	}
}

// panicky is an event whose accessors blow up, as gomatrixserverlib's do
// on some malformed events.
type panicky struct{ gomatrixserverlib.PDU }

func (panicky) AuthEventIDs() []string { panic("bad auth_events") }

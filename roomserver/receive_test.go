package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// Remote input between two roomservers with their own databases, "a.test"
// and "b.test", wired to each other in-process: the peer implements
// Fetcher and Joiner by reading the other's database, as the federation
// endpoints do. Signatures are the federation layer's business and are not
// checked here; everything after them is.

const (
	rAlice = "@alice:a.test"
	rBob   = "@bob:b.test"
)

type peer struct {
	t      *testing.T
	remote *Roomserver // the other server, answering
	local  *Roomserver // the server asking (signs its joins)
	calls  map[string]int
}

func (p *peer) pdu(ctx context.Context, id string) (gomatrixserverlib.PDU, sql.Event, error) {
	row, err := p.remote.db.EventByID(ctx, id)
	if err != nil {
		return nil, row, err
	}
	pdu, err := ParseStored(row)
	return pdu, row, err
}

func (p *peer) Event(ctx context.Context, _ spec.ServerName, _ gomatrixserverlib.IRoomVersion, id string) (gomatrixserverlib.PDU, error) {
	p.calls["event"]++
	pdu, _, err := p.pdu(ctx, id)
	return pdu, err
}

func (p *peer) StateIDs(ctx context.Context, _ spec.ServerName, _, id string) ([]string, []string, error) {
	p.calls["state_ids"]++
	_, row, err := p.pdu(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	state, err := p.remote.db.Snapshot(ctx, row.StateBeforeNID)
	if err != nil {
		return nil, nil, err
	}
	var nids []int64
	for _, n := range state {
		nids = append(nids, n)
	}
	ids, err := p.remote.db.EventIDsByNID(ctx, nids)
	if err != nil {
		return nil, nil, err
	}
	stateIDs := slices.Collect(func(yield func(string) bool) {
		for _, id := range ids {
			if !yield(id) {
				return
			}
		}
	})
	chain, err := p.authChain(ctx, stateIDs)
	return stateIDs, chain, err
}

func (p *peer) authChain(ctx context.Context, ids []string) ([]string, error) {
	seen := map[string]bool{}
	todo := slices.Clone(ids)
	var out []string
	for len(todo) > 0 {
		id := todo[0]
		todo = todo[1:]
		pdu, _, err := p.pdu(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, a := range pdu.AuthEventIDs() {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
				todo = append(todo, a)
			}
		}
	}
	return out, nil
}

func (p *peer) MissingEvents(ctx context.Context, _ spec.ServerName, _ string, _ gomatrixserverlib.IRoomVersion,
	earliest, latest []string, limit int, _ int64) ([]gomatrixserverlib.PDU, error) {
	p.calls["get_missing_events"]++
	seen := map[string]bool{}
	for _, id := range earliest {
		seen[id] = true
	}
	var out []gomatrixserverlib.PDU
	frontier := slices.Clone(latest)
	for len(frontier) > 0 && len(out) < limit {
		pdu, _, err := p.pdu(ctx, frontier[0])
		frontier = frontier[1:]
		if err != nil {
			return nil, err
		}
		for _, prev := range pdu.PrevEventIDs() {
			if seen[prev] || len(out) >= limit {
				continue
			}
			seen[prev] = true
			e, _, err := p.pdu(ctx, prev)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
			frontier = append(frontier, prev)
		}
	}
	slices.Reverse(out)
	return out, nil
}

// Join builds the join on the remote server's current state, signed by
// the local server, has the remote server accept it, and returns the
// state before it, as make_join and send_join do.
func (p *peer) Join(ctx context.Context, _ []spec.ServerName, roomID, userID string, _ json.RawMessage) (*JoinResult, error) {
	info, err := p.remote.db.Room(ctx, roomID)
	if err != nil {
		return nil, err
	}
	state, err := p.remote.db.CurrentState(ctx, info.NID)
	if err != nil {
		return nil, err
	}
	ver := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(info.Version))
	lookup := func(ctx context.Context, k sql.StateKey) (gomatrixserverlib.PDU, error) {
		nid, ok := state[k]
		if !ok {
			return nil, nil
		}
		evs, err := p.remote.pdus(ctx, &p.remote.db.Queries, []int64{nid})
		return evs[nid], err
	}
	ev, err := p.local.buildEvent(ctx, ver, roomID, info.Extremities, info.MaxDepth+1, lookup,
		&NewEvent{Sender: userID, Type: spec.MRoomMember, StateKey: &userID, Content: js(map[string]any{"membership": "join"})}, time.Now())
	if err != nil {
		return nil, err
	}
	if _, err := p.remote.HandleInput(ctx, InputRequest{RoomID: roomID, Remote: &RemoteEvent{Origin: string(p.local.serverName), Event: ev.JSON()}}); err != nil {
		return nil, err
	}
	res := &JoinResult{RoomVersion: ver, Server: p.remote.serverName, Event: ev}
	var ids []string
	for _, nid := range state {
		evs, err := p.remote.pdus(ctx, &p.remote.db.Queries, []int64{nid})
		if err != nil {
			return nil, err
		}
		res.State = append(res.State, evs[nid])
		ids = append(ids, evs[nid].EventID())
	}
	chain, err := p.authChain(ctx, append(ids, ev.EventID()))
	if err != nil {
		return nil, err
	}
	for _, id := range chain {
		e, _, err := p.pdu(ctx, id)
		if err != nil {
			return nil, err
		}
		res.AuthChain = append(res.AuthChain, e)
	}
	return res, nil
}

// Leave and Knock are not used by these tests.
func (p *peer) Leave(context.Context, []spec.ServerName, string, string, json.RawMessage) (gomatrixserverlib.PDU, error) {
	return nil, errors.New("the test peer does not leave through the other server")
}

func (p *peer) Knock(context.Context, []spec.ServerName, string, string, json.RawMessage) (*KnockResult, error) {
	return nil, errors.New("the test peer does not knock through the other server")
}

type twoServers struct {
	a, b   *Roomserver
	toB    *peer // B asks A
	roomID string
}

func startTwo(t *testing.T, engine config.Engine, version string) *twoServers {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mk := func(name string) *Roomserver {
		key, err := serverkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		return New(sqltest.Open(t, engine), nil, name, key, log)
	}
	s := &twoServers{a: mk("a.test"), b: mk("b.test")}
	s.toB = &peer{t: t, remote: s.a, local: s.b, calls: map[string]int{}}
	s.b.UseFederation(s.toB, s.toB)
	s.a.UseFederation(&peer{t: t, remote: s.b, local: s.a, calls: map[string]int{}}, nil)
	create := map[string]any{"room_version": version}
	users := map[string]int{rAlice: 100}
	if version == "12" {
		users = map[string]int{}
	} else {
		create["creator"] = rAlice
	}
	resp, err := s.a.HandleInput(context.Background(), InputRequest{CreateRoom: &CreateRoom{RoomVersion: version, Events: []NewEvent{
		{Sender: rAlice, Type: "m.room.create", StateKey: ptr(""), Content: js(create)},
		{Sender: rAlice, Type: "m.room.member", StateKey: ptr(rAlice), Content: js(map[string]any{"membership": "join"})},
		{Sender: rAlice, Type: "m.room.power_levels", StateKey: ptr(""), Content: js(map[string]any{"users": users})},
		{Sender: rAlice, Type: "m.room.join_rules", StateKey: ptr(""), Content: js(map[string]any{"join_rule": "public"})},
	}}})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	s.roomID = resp.RoomID
	return s
}

// deliver hands an event of one server to the other, as /send does.
func deliver(ctx context.Context, from, to *Roomserver, eventID string) error {
	row, err := from.db.EventByID(ctx, eventID)
	if err != nil {
		return err
	}
	_, err = to.HandleInput(ctx, InputRequest{RoomID: row.RoomID, Remote: &RemoteEvent{Origin: string(from.serverName), Event: row.JSON}})
	return err
}

func sendOn(t *testing.T, rs *Roomserver, roomID, sender, body string) string {
	t.Helper()
	resp, err := rs.HandleInput(context.Background(), msg(roomID, sender, "", body))
	if err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
	return resp.EventIDs[0]
}

// timeline returns the bodies of a room's timeline, oldest first.
func timeline(t *testing.T, rs *Roomserver, roomID string) []string {
	t.Helper()
	ctx := context.Background()
	info, err := rs.db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := rs.db.RoomEventsByStream(ctx, info.NID, 0, 1<<62, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range slices.Backward(evs) {
		if e.Type == "m.room.message" {
			pdu, err := ParseStored(e)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, strings.Trim(string(pdu.Content()), "{}"))
		}
	}
	return out
}

func TestJoinThroughAndExchangeEvents(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		for _, version := range []string{"10", "12"} {
			t.Run(fmt.Sprintf("%s/v%s", engine, version), func(t *testing.T) {
				ctx := context.Background()
				s := startTwo(t, engine, version)
				sendOn(t, s.a, s.roomID, rAlice, "before")
				resp, err := s.b.HandleInput(ctx, InputRequest{InputID: "join-1", RoomID: s.roomID,
					JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}})
				if err != nil {
					t.Fatalf("join: %v", err)
				}
				joinID := resp.EventIDs[0]
				for name, rs := range map[string]*Roomserver{"A": s.a, "B": s.b} {
					if m, err := rs.Membership(ctx, s.roomID, rBob); err != nil || m != "join" {
						t.Errorf("%s: bob's membership %q, %v", name, m, err)
					}
					if m, err := rs.Membership(ctx, s.roomID, rAlice); err != nil || m != "join" {
						t.Errorf("%s: alice's membership %q, %v", name, m, err)
					}
				}
				// The join's input is idempotent.
				again, err := s.b.HandleInput(ctx, InputRequest{InputID: "join-1", RoomID: s.roomID,
					JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}})
				if err != nil || again.EventIDs[0] != joinID {
					t.Fatalf("repeated join: %v %v", again, err)
				}

				// A → B, in order, each on top of the last.
				for i := range 3 {
					id := sendOn(t, s.a, s.roomID, rAlice, fmt.Sprintf("a%d", i))
					if err := deliver(ctx, s.a, s.b, id); err != nil {
						t.Fatalf("deliver a%d: %v", i, err)
					}
				}
				// B → A.
				id := sendOn(t, s.b, s.roomID, rBob, "b0")
				if err := deliver(ctx, s.b, s.a, id); err != nil {
					t.Fatalf("deliver b0: %v", err)
				}
				want := []string{`"body":"a0","msgtype":"m.text"`, `"body":"a1","msgtype":"m.text"`, `"body":"a2","msgtype":"m.text"`, `"body":"b0","msgtype":"m.text"`}
				if got := timeline(t, s.b, s.roomID); !slices.Equal(got, want) {
					t.Errorf("B's timeline %v", got)
				}
				if got := timeline(t, s.a, s.roomID); !slices.Equal(got[1:], want) {
					t.Errorf("A's timeline %v", got)
				}
				// Delivered twice: still once.
				if err := deliver(ctx, s.b, s.a, id); err != nil {
					t.Fatalf("redeliver: %v", err)
				}
				if got := timeline(t, s.a, s.roomID); len(got) != 5 {
					t.Errorf("A's timeline after a redelivery %v", got)
				}
				// Both sides agree on the room's current state.
				sa, _ := s.a.CurrentState(ctx, s.roomID)
				sb, _ := s.b.CurrentState(ctx, s.roomID)
				if len(sa) != len(sb) || len(sa) != 5 {
					t.Errorf("current state: A has %d events, B %d", len(sa), len(sb))
				}
			})
		}
	}
}

// A gap longer than one /get_missing_events: the missing events are asked
// for, what stays missing is bridged with /state_ids, and the new event
// goes into the timeline.
func TestReceiveFillsGaps(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			s := startTwo(t, engine, "10")
			if _, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}}); err != nil {
				t.Fatal(err)
			}
			var last string
			for i := range 15 {
				last = sendOn(t, s.a, s.roomID, rAlice, fmt.Sprintf("m%d", i))
			}
			if err := deliver(ctx, s.a, s.b, last); err != nil {
				t.Fatalf("deliver the last: %v", err)
			}
			got := timeline(t, s.b, s.roomID)
			if len(got) == 0 || got[len(got)-1] != `"body":"m14","msgtype":"m.text"` {
				t.Fatalf("B's timeline %v", got)
			}
			if s.toB.calls["get_missing_events"] == 0 || s.toB.calls["state_ids"] == 0 {
				t.Errorf("calls %v: want get_missing_events then state_ids", s.toB.calls)
			}
			// The fetched ones are in the timeline too, in order.
			if len(got) != 1+maxMissingEvents {
				t.Errorf("B's timeline has %d messages, want %d: %v", len(got), 1+maxMissingEvents, got)
			}
			// The next event builds on it as usual.
			next := sendOn(t, s.a, s.roomID, rAlice, "after")
			if err := deliver(ctx, s.a, s.b, next); err != nil {
				t.Fatal(err)
			}
			// The gap stays a fork: B's old extremity is not an ancestor
			// of the bridged events as far as B knows, until an event
			// of B's merges it.
			info, _ := s.b.db.Room(ctx, s.roomID)
			if len(info.Extremities) != 2 || !slices.Contains(info.Extremities, next) || slices.Contains(info.Extremities, last) {
				t.Errorf("B's extremities %v, want [<B's join>, %s]", info.Extremities, next)
			}
			merge := sendOn(t, s.b, s.roomID, rBob, "merge")
			if err := deliver(ctx, s.b, s.a, merge); err != nil {
				t.Fatalf("A takes B's merge: %v", err)
			}
			if info, _ = s.b.db.Room(ctx, s.roomID); !slices.Equal(info.Extremities, []string{merge}) {
				t.Errorf("B's extremities after its own event %v", info.Extremities)
			}
		})
	}
}

// Events that fail the auth rules against their auth events are
// rejected; those that pass them and the state before them but not the
// current state are soft-failed: accepted, stored, and kept out of the
// timeline.
func TestRejectAndSoftFail(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			s := startTwo(t, engine, "10")
			// mallory of b.test is not in the room: A rejects her message.
			info, _ := s.a.db.Room(ctx, s.roomID)
			state, _ := s.a.db.CurrentState(ctx, info.NID)
			ver := gomatrixserverlib.MustGetRoomVersion("10")
			var auth []string
			for _, k := range []sql.StateKey{{Type: "m.room.create"}, {Type: "m.room.power_levels"}} {
				ids, _ := s.a.db.EventIDsByNID(ctx, []int64{state[k]})
				auth = append(auth, ids[state[k]])
			}
			proto := gomatrixserverlib.ProtoEvent{SenderID: "@mallory:b.test", RoomID: s.roomID, Type: "m.room.message",
				Content: spec.RawJSON(js(map[string]any{"body": "hi"})), PrevEvents: info.Extremities, AuthEvents: auth, Depth: info.MaxDepth + 1}
			bad, err := ver.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), "b.test", s.b.key.ID, s.b.key.Private)
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.a.HandleInput(ctx, InputRequest{RoomID: s.roomID, Remote: &RemoteEvent{Origin: "b.test", Event: bad.JSON()}})
			var merr *mxhttp.Error
			if !errors.As(err, &merr) || merr.Code != "M_FORBIDDEN" {
				t.Fatalf("mallory's message: %v", err)
			}
			row, err := s.a.db.EventByID(ctx, bad.EventID())
			if err != nil || !row.Rejected || row.StreamPos != 0 {
				t.Errorf("stored as %+v, %v; want rejected, not in the timeline", row, err)
			}

			// bob joins, then alice bans him; bob's message built before
			// he saw the ban passes the state before it, not the current.
			if _, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}}); err != nil {
				t.Fatal(err)
			}
			late := sendOn(t, s.b, s.roomID, rBob, "late")
			if _, err := s.a.HandleInput(ctx, member(s.roomID, rAlice, rBob, "", "ban")); err != nil {
				t.Fatal(err)
			}
			if err := deliver(ctx, s.b, s.a, late); err != nil {
				t.Fatalf("soft-failed event: %v, want accepted", err)
			}
			row, err = s.a.db.EventByID(ctx, late)
			if err != nil || row.Rejected || !row.Outlier || row.StreamPos != 0 {
				t.Errorf("stored as %+v, %v; want soft-failed (an outlier, not rejected)", row, err)
			}
			if got := timeline(t, s.a, s.roomID); slices.Contains(got, `"body":"late","msgtype":"m.text"`) {
				t.Errorf("soft-failed event in the timeline: %v", got)
			}
			info, _ = s.a.db.Room(ctx, s.roomID)
			if slices.Contains(info.Extremities, late) {
				t.Errorf("soft-failed event among the extremities %v", info.Extremities)
			}
		})
	}
}

// Both servers change the same state at once (spec: state resolution):
// each gets the other's change on a fork, and both settle on the same
// resolved state.
func TestForkConverges(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		for _, version := range []string{"10", "12"} {
			t.Run(fmt.Sprintf("%s/v%s", engine, version), func(t *testing.T) {
				ctx := context.Background()
				s := startTwo(t, engine, version)
				if _, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}}); err != nil {
					t.Fatal(err)
				}
				users := map[string]int{rAlice: 100, rBob: 50}
				if version == "12" {
					users = map[string]int{rBob: 50}
				}
				pl, err := s.a.HandleInput(ctx, InputRequest{RoomID: s.roomID, NewEvent: &NewEvent{Sender: rAlice, Type: "m.room.power_levels",
					StateKey: ptr(""), Content: js(map[string]any{"users": users, "state_default": 50})}})
				if err != nil {
					t.Fatal(err)
				}
				if err := deliver(ctx, s.a, s.b, pl.EventIDs[0]); err != nil {
					t.Fatal(err)
				}
				topic := func(rs *Roomserver, sender, text string) string {
					resp, err := rs.HandleInput(ctx, InputRequest{RoomID: s.roomID, NewEvent: &NewEvent{Sender: sender, Type: "m.room.topic",
						StateKey: ptr(""), Content: js(map[string]any{"topic": text})}})
					if err != nil {
						t.Fatal(err)
					}
					return resp.EventIDs[0]
				}
				ta, tb := topic(s.a, rAlice, "from A"), topic(s.b, rBob, "from B")
				if err := deliver(ctx, s.a, s.b, ta); err != nil {
					t.Fatalf("B takes A's topic: %v", err)
				}
				if err := deliver(ctx, s.b, s.a, tb); err != nil {
					t.Fatalf("A takes B's topic: %v", err)
				}
				ea, err := s.a.CurrentStateEvent(ctx, s.roomID, "m.room.topic", "")
				if err != nil {
					t.Fatal(err)
				}
				eb, err := s.b.CurrentStateEvent(ctx, s.roomID, "m.room.topic", "")
				if err != nil {
					t.Fatal(err)
				}
				if ea.EventID() != eb.EventID() {
					t.Fatalf("A's topic is %s, B's %s: they did not converge", ea.EventID(), eb.EventID())
				}
				// Both forks are extremities on both sides, and the next
				// event of either merges them.
				for name, rs := range map[string]*Roomserver{"A": s.a, "B": s.b} {
					info, _ := rs.db.Room(ctx, s.roomID)
					if len(info.Extremities) != 2 {
						t.Errorf("%s's extremities %v, want both topics", name, info.Extremities)
					}
				}
				merge := sendOn(t, s.a, s.roomID, rAlice, "merge")
				if err := deliver(ctx, s.a, s.b, merge); err != nil {
					t.Fatal(err)
				}
				for name, rs := range map[string]*Roomserver{"A": s.a, "B": s.b} {
					info, _ := rs.db.Room(ctx, s.roomID)
					if !slices.Equal(info.Extremities, []string{merge}) {
						t.Errorf("%s's extremities after the merge %v", name, info.Extremities)
					}
					if e, _ := rs.CurrentStateEvent(ctx, s.roomID, "m.room.topic", ""); e.EventID() != ea.EventID() {
						t.Errorf("%s's topic changed after the merge", name)
					}
				}
			})
		}
	}
}

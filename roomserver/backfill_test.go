package roomserver

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// serveBackfill answers GET /backfill as the federation endpoint does:
// the events of from and those before them through prev_events, newest
// first, up to limit.
func serveBackfill(t *testing.T, rs *Roomserver, from []string, limit int) []json.RawMessage {
	t.Helper()
	ctx := context.Background()
	var queue []gomatrixserverlib.PDU
	seen := map[string]bool{}
	push := func(ids []string) {
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			row, err := rs.db.EventByID(ctx, id)
			if err != nil {
				t.Fatalf("serve %s: %v", id, err)
			}
			pdu, err := ParseStored(row)
			if err != nil {
				t.Fatal(err)
			}
			queue = append(queue, pdu)
		}
	}
	push(from)
	var out []json.RawMessage
	for len(queue) > 0 && len(out) < limit {
		slices.SortFunc(queue, func(a, b gomatrixserverlib.PDU) int { return int(b.Depth() - a.Depth()) })
		ev := queue[0]
		queue = queue[1:]
		out = append(out, ev.JSON())
		push(ev.PrevEventIDs())
	}
	return out
}

// topological lists a room's timeline events in /messages order, with
// the state before each as event ids.
func topological(t *testing.T, rs *Roomserver, roomID string) (ids []string, states []map[sql.StateKey]string, rows []sql.Event) {
	t.Helper()
	ctx := context.Background()
	info, err := rs.db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	rows, err = rs.db.TimelineEvents(ctx, info.NID, sql.TopoStart, sql.TopoEnd, false, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rows {
		ids = append(ids, e.EventID)
		state, err := rs.db.Snapshot(ctx, e.StateBeforeNID)
		if err != nil {
			t.Fatal(err)
		}
		names, err := rs.db.EventIDsByNID(ctx, slices.Collect(maps.Values(state)))
		if err != nil {
			t.Fatal(err)
		}
		byKey := map[sql.StateKey]string{}
		for k, n := range state {
			byKey[k] = names[n]
		}
		states = append(states, byKey)
	}
	return ids, states, rows
}

// backfillRound runs one round as the federation layer does: where to
// start, A's answer, B's input. It returns the events B placed, and
// false when B has nothing to ask for.
func backfillRound(t *testing.T, s *twoServers, limit int, extra ...json.RawMessage) ([]string, bool) {
	t.Helper()
	ctx := context.Background()
	_, from, err := s.b.BackfillFrom(ctx, s.roomID)
	if err != nil {
		t.Fatal(err)
	}
	if len(from) == 0 {
		return nil, false
	}
	evs := append(serveBackfill(t, s.a, from, limit), extra...)
	resp, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, Backfill: &BackfillRequest{Origin: "a.test", Events: evs}})
	if err != nil {
		t.Fatalf("backfill from %v: %v", from, err)
	}
	return resp.EventIDs, true
}

// B joins A's room of 30 messages, then backfills its history in rounds
// of 10 events: B ends with A's timeline up to its join, in the same
// topological order and with the same state before every event, while
// /sync's reads, the room's current state, extremities and stream
// position do not move. The history's first events, stored as outliers
// when B joined (the create event and the state), take their place in
// the timeline; the round that reaches the create event is the last.
func TestBackfillHistory(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		for _, version := range []string{"10", "12"} {
			t.Run(fmt.Sprintf("%s/v%s", engine, version), func(t *testing.T) {
				ctx := context.Background()
				s := startTwo(t, engine, version)
				for i := range 30 {
					sendOn(t, s.a, s.roomID, rAlice, fmt.Sprintf("m%d", i))
				}
				resp, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}})
				if err != nil {
					t.Fatalf("join: %v", err)
				}
				join := resp.EventIDs[0]
				// An event of A that B has not received is no part of
				// the history before B's join: offered, it is dropped.
				later := sendOn(t, s.a, s.roomID, rAlice, "later")
				laterRow, _ := s.a.db.EventByID(ctx, later)

				infoBefore, _ := s.b.db.Room(ctx, s.roomID)
				stateBefore, _ := s.b.db.CurrentState(ctx, infoBefore.NID)
				if ids, _, _ := topological(t, s.b, s.roomID); !slices.Equal(ids, []string{join}) {
					t.Fatalf("B's timeline before backfill: %v", ids)
				}

				placed, _ := backfillRound(t, s, 10, laterRow.JSON)
				if len(placed) != 10 {
					t.Fatalf("first round placed %d events, want 10", len(placed))
				}
				if _, err := s.b.db.EventByID(ctx, later); err == nil {
					t.Errorf("an event that does not precede the timeline was stored")
				}
				rounds := 1
				for {
					got, more := backfillRound(t, s, 10)
					if !more {
						break
					}
					if len(got) == 0 {
						t.Fatalf("round %d placed nothing", rounds+1)
					}
					if rounds++; rounds > 10 {
						t.Fatal("backfill does not end")
					}
				}
				if rounds != 4 {
					t.Errorf("%d rounds, want 4 (34 events before the join, 10 a round)", rounds)
				}
				if n := s.toB.calls["state_ids"]; n == 0 || n > rounds {
					t.Errorf("%d /state_ids calls for %d rounds: want one per gap at most", n, rounds)
				}

				aIDs, aStates, _ := topological(t, s.a, s.roomID)
				bIDs, bStates, bRows := topological(t, s.b, s.roomID)
				want := aIDs[:slices.Index(aIDs, later)]
				if !slices.Equal(bIDs, want) {
					t.Fatalf("B's history\n%v\nA's\n%v", bIDs, want)
				}
				for i, id := range bIDs {
					j := slices.Index(aIDs, id)
					if !maps.Equal(bStates[i], aStates[j]) {
						t.Errorf("state before %s: B has %v, A %v", id, bStates[i], aStates[j])
					}
					if id != join && (bRows[i].StreamPos >= 0 || bRows[i].Outlier) {
						t.Errorf("history event %s at stream position %d (outlier %v), want negative", id, bRows[i].StreamPos, bRows[i].Outlier)
					}
				}
				if bRows[0].Type != spec.MRoomCreate {
					t.Errorf("history begins with %s", bRows[0].Type)
				}
				// Older events have lower positions, across rounds and
				// within them.
				for i := 1; i < len(bRows)-1; i++ {
					if bRows[i].StreamPos <= bRows[i-1].StreamPos {
						t.Errorf("positions out of order: %s at %d after %s at %d", bRows[i].EventID, bRows[i].StreamPos, bRows[i-1].EventID, bRows[i-1].StreamPos)
					}
				}

				// What /sync reads of the room is its join alone, and the
				// room has not moved.
				info, _ := s.b.db.Room(ctx, s.roomID)
				evs, err := s.b.db.RoomEventsByStream(ctx, info.NID, 0, math.MaxInt64, 100)
				if err != nil || len(evs) != 1 || evs[0].EventID != join {
					t.Errorf("/sync's events: %d, %v", len(evs), err)
				}
				keys, err := s.b.db.StateKeysChanged(ctx, info.NID, 0, math.MaxInt64)
				if err != nil || len(keys) != 1 || keys[0] != (sql.StateKey{Type: spec.MRoomMember, StateKey: rBob}) {
					t.Errorf("/sync's state changes: %v, %v", keys, err)
				}
				if !slices.Equal(info.Extremities, infoBefore.Extremities) || info.SnapshotNID != infoBefore.SnapshotNID ||
					info.LastStreamPos != infoBefore.LastStreamPos || info.MaxDepth != infoBefore.MaxDepth {
					t.Errorf("the room moved: %+v, was %+v", info, infoBefore)
				}
				if state, _ := s.b.db.CurrentState(ctx, info.NID); !maps.Equal(state, stateBefore) {
					t.Errorf("current state changed")
				}
				if v, _ := s.b.view(ctx, s.roomID); !maps.Equal(v.state, stateBefore) || !slices.Equal(v.info.Extremities, infoBefore.Extremities) {
					t.Errorf("the cached view moved")
				}

				// The same answer again changes nothing.
				again, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, Backfill: &BackfillRequest{Origin: "a.test",
					Events: serveBackfill(t, s.a, []string{want[len(want)-2]}, 10)}})
				if err != nil || len(again.EventIDs) != 0 {
					t.Errorf("repeated backfill: placed %v, %v", again.EventIDs, err)
				}
				if ids, _, _ := topological(t, s.b, s.roomID); len(ids) != len(want) {
					t.Errorf("after a repeat: %d events, want %d", len(ids), len(want))
				}

				// Live events still go on top.
				next := sendOn(t, s.a, s.roomID, rAlice, "next")
				if err := deliver(ctx, s.a, s.b, next); err != nil {
					t.Fatal(err)
				}
				if got := timeline(t, s.b, s.roomID); len(got) == 0 || got[len(got)-1] != `"body":"next","msgtype":"m.text"` {
					t.Errorf("B's live timeline %v", got)
				}
			})
		}
	}
}

// History a server may not see is not asked for: with history
// visibility "joined", nothing before B's join was B's to see.
func TestBackfillHiddenHistory(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			s := startTwo(t, engine, "10")
			if _, err := s.a.HandleInput(ctx, InputRequest{RoomID: s.roomID, NewEvent: &NewEvent{Sender: rAlice,
				Type: spec.MRoomHistoryVisibility, StateKey: ptr(""), Content: js(map[string]any{"history_visibility": "joined"})}}); err != nil {
				t.Fatal(err)
			}
			sendOn(t, s.a, s.roomID, rAlice, "hidden")
			if _, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}}); err != nil {
				t.Fatal(err)
			}
			if _, from, err := s.b.BackfillFrom(ctx, s.roomID); err != nil || len(from) != 0 {
				t.Errorf("backfill from %v, %v; want nowhere", from, err)
			}
			// A room's own server never needs to: its timeline starts
			// with the create event.
			if _, from, err := s.a.BackfillFrom(ctx, s.roomID); err != nil || len(from) != 0 {
				t.Errorf("A would backfill from %v, %v", from, err)
			}
			if _, _, err := s.b.BackfillFrom(ctx, "!unknown:a.test"); err == nil {
				t.Error("an unknown room has a place to backfill from")
			}
		})
	}
}

// History carries its relations and redactions: a thread reply is
// indexed under its root, and a redaction of another user's message,
// whose power the state before it decides, marks the message redacted
// (the message itself comes already stripped by the server that
// redacted it).
func TestBackfillRelationsAndRedactions(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		for _, version := range []string{"10", "12"} {
			t.Run(fmt.Sprintf("%s/v%s", engine, version), func(t *testing.T) {
				ctx := context.Background()
				s := startTwo(t, engine, version)
				const carol = "@carol:a.test"
				if _, err := s.a.HandleInput(ctx, member(s.roomID, carol, carol, "", "join")); err != nil {
					t.Fatal(err)
				}
				secret := sendOn(t, s.a, s.roomID, carol, "secret")
				root := sendOn(t, s.a, s.roomID, rAlice, "root")
				reply, err := s.a.HandleInput(ctx, InputRequest{RoomID: s.roomID, NewEvent: &NewEvent{Sender: rAlice, Type: "m.room.message",
					Content: js(map[string]any{"msgtype": "m.text", "body": "in thread",
						"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})}})
				if err != nil {
					t.Fatal(err)
				}
				redaction, err := s.a.HandleInput(ctx, InputRequest{RoomID: s.roomID, NewEvent: &NewEvent{Sender: rAlice,
					Type: spec.MRoomRedaction, Redacts: secret, Content: js(map[string]any{"redacts": secret})}})
				if err != nil {
					t.Fatal(err)
				}
				sendOn(t, s.a, s.roomID, rAlice, "after")
				if _, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}}); err != nil {
					t.Fatal(err)
				}
				for rounds := 0; ; rounds++ {
					if _, more := backfillRound(t, s, 100); !more {
						break
					}
					if rounds > 3 {
						t.Fatal("backfill does not end")
					}
				}
				row, err := s.b.db.EventByID(ctx, secret)
				if err != nil || row.RedactedBy != redaction.EventIDs[0] || row.StreamPos >= 0 {
					t.Errorf("carol's message on B: redacted by %q at %d, %v; want redacted by %s, in the history", row.RedactedBy, row.StreamPos, err, redaction.EventIDs[0])
				}
				info, _ := s.b.db.Room(ctx, s.roomID)
				children, err := s.b.db.ChildrenOf(ctx, info.NID, []string{root}, []string{"m.thread"}, false)
				if err != nil || len(children) != 1 || children[0].Event.EventID != reply.EventIDs[0] {
					t.Errorf("thread of the root on B: %v, %v", children, err)
				}
			})
		}
	}
}

package roomserver

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// gapsAt maps each timeline event of a room with a recorded gap that
// may be asked for now to its missing prev events.
func gapsAt(t *testing.T, rs *Roomserver, roomID string) map[string][]string {
	t.Helper()
	ctx := context.Background()
	info, err := rs.db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	gaps, err := rs.db.GapsIn(ctx, info.NID, sql.TopoStart, sql.TopoEnd, 100)
	if err != nil {
		t.Fatal(err)
	}
	var nids []int64
	for _, g := range gaps {
		nids = append(nids, g.EventNID)
	}
	names, err := rs.db.EventIDsByNID(ctx, nids)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, g := range gaps {
		out[names[g.EventNID]] = append(out[names[g.EventNID]], g.Prev)
	}
	return out
}

// recorded returns those of prevs that are missing prev events of the
// room's recorded gaps, claimed or not.
func recorded(t *testing.T, rs *Roomserver, roomID string, prevs ...string) []string {
	t.Helper()
	ctx := context.Background()
	info, err := rs.db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rs.db.GapPrevs(ctx, info.NID, prevs)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// fill runs one backfill round from the given missing prev events, as
// the federation layer does: B claims them, A answers up to limit
// events, B places them. It returns the events placed.
func fill(t *testing.T, s *twoServers, prevs []string, limit int) []string {
	t.Helper()
	ctx := context.Background()
	_, from, err := s.b.BackfillFrom(ctx, s.roomID, prevs)
	if err != nil || !slices.Equal(from, prevs) {
		t.Fatalf("claimed %v, %v; want %v", from, err, prevs)
	}
	resp, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, Backfill: &BackfillRequest{Origin: "a.test", From: from,
		Events: serveBackfill(t, s.a, from, limit)}})
	if err != nil {
		t.Fatalf("backfill from %v: %v", from, err)
	}
	return resp.EventIDs
}

// streamIDs lists what /sync reads of a room on a server: its events by
// stream position.
func streamIDs(t *testing.T, rs *Roomserver, roomID string) []string {
	t.Helper()
	ctx := context.Background()
	info, err := rs.db.Room(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := rs.db.RoomEventsByStream(ctx, info.NID, 0, math.MaxInt64, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.EventID)
	}
	slices.Sort(out)
	return out
}

// The scenario found running against Dendrite: bob of B joins A's room,
// talks, leaves; alice says something; bob joins again. B was not in the
// room when alice spoke: bob's second join has her message for prev
// event, which B lacks. B records the gap there; one backfill round from
// it places the message in B's history between bob's leave and his new
// join, in A's order and with A's state before it, at a negative stream
// position: /sync never shows it, and the room does not move. The gap
// is then closed.
func TestGapAtRejoin(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		for _, version := range []string{"10", "12"} {
			t.Run(fmt.Sprintf("%s/v%s", engine, version), func(t *testing.T) {
				ctx := context.Background()
				s := startTwo(t, engine, version)
				join := func() string {
					t.Helper()
					resp, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}})
					if err != nil {
						t.Fatalf("join: %v", err)
					}
					return resp.EventIDs[0]
				}
				join1 := join()
				hello := sendOn(t, s.b, s.roomID, rBob, "hello")
				if err := deliver(ctx, s.b, s.a, hello); err != nil {
					t.Fatal(err)
				}
				resp, err := s.b.HandleInput(ctx, member(s.roomID, rBob, rBob, "", "leave"))
				if err != nil {
					t.Fatal(err)
				}
				leave := resp.EventIDs[0]
				if err := deliver(ctx, s.b, s.a, leave); err != nil {
					t.Fatal(err)
				}
				away := sendOn(t, s.a, s.roomID, rAlice, "while bob was away")
				join2 := join()

				gaps := gapsAt(t, s.b, s.roomID)
				if !slices.Equal(gaps[join2], []string{away}) || len(gaps[join1]) != 1 || len(gaps) != 2 {
					t.Fatalf("B's gaps %v; want the second join's at alice's message %s, and the start of its history", gaps, away)
				}
				infoBefore, _ := s.b.db.Room(ctx, s.roomID)
				stateBefore, _ := s.b.db.CurrentState(ctx, infoBefore.NID)
				synced := streamIDs(t, s.b, s.roomID)

				// A answers the message and what B has before it.
				if placed := fill(t, s, []string{away}, 3); !slices.Equal(placed, []string{away}) {
					t.Fatalf("placed %v, want alice's message alone", placed)
				}
				bIDs, bStates, bRows := topological(t, s.b, s.roomID)
				if got, want := bIDs[len(bIDs)-4:], []string{hello, leave, away, join2}; !slices.Equal(got, want) {
					t.Fatalf("B's history ends %v, want %v", got, want)
				}
				aIDs, aStates, _ := topological(t, s.a, s.roomID)
				i, j := slices.Index(bIDs, away), slices.Index(aIDs, away)
				if !slices.Equal(aIDs[j-2:j+2], bIDs[i-2:i+2]) || !maps.Equal(bStates[i], aStates[j]) {
					t.Errorf("B's history around the message %v, A's %v; state before it %v, A's %v", bIDs[i-2:i+2], aIDs[j-2:j+2], bStates[i], aStates[j])
				}
				if bRows[i].StreamPos >= 0 {
					t.Errorf("the message is at stream position %d, want negative", bRows[i].StreamPos)
				}
				if gaps := gapsAt(t, s.b, s.roomID); gaps[away] != nil || len(recorded(t, s.b, s.roomID, away)) != 0 {
					t.Errorf("gaps after the round %v: want the second join's closed, none opened", gaps)
				}

				// What /sync reads did not move, nor did the room.
				if got := streamIDs(t, s.b, s.roomID); !slices.Equal(got, synced) {
					t.Errorf("/sync's events %v, were %v", got, synced)
				}
				info, _ := s.b.db.Room(ctx, s.roomID)
				state, _ := s.b.db.CurrentState(ctx, info.NID)
				if !slices.Equal(info.Extremities, infoBefore.Extremities) || info.LastStreamPos != infoBefore.LastStreamPos || !maps.Equal(state, stateBefore) {
					t.Errorf("the room moved: %+v, was %+v", info, infoBefore)
				}
			})
		}
	}
}

// A gap that remote input bridged with /state_ids: B gets the last of
// fifteen messages, fetches ten with /get_missing_events and takes the
// state at the eleventh, the oldest one it lacks, from /state_ids. The
// oldest fetched message records the gap at that one, an outlier for B.
// A round from it places it and the rest of the missing messages in
// B's history, in A's order, the outlier taking its place there, and
// closes the gap without opening another: the history joins up with
// bob's join.
func TestGapBridgedByStateIDs(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			s := startTwo(t, engine, "10")
			resp, err := s.b.HandleInput(ctx, InputRequest{RoomID: s.roomID, JoinRemote: &JoinRemote{UserID: rBob, Servers: []string{"a.test"}}})
			if err != nil {
				t.Fatal(err)
			}
			join := resp.EventIDs[0]
			var sent []string
			for i := range 15 {
				sent = append(sent, sendOn(t, s.a, s.roomID, rAlice, fmt.Sprintf("m%d", i)))
			}
			if err := deliver(ctx, s.a, s.b, sent[14]); err != nil {
				t.Fatal(err)
			}
			// m4 … m14 are in B's timeline; m3 is an outlier.
			oldest := sent[14-maxMissingEvents]
			missing := sent[13-maxMissingEvents]
			gaps := gapsAt(t, s.b, s.roomID)
			if !slices.Equal(gaps[oldest], []string{missing}) || len(gaps) != 2 {
				t.Fatalf("B's gaps %v; want %s's at %s, and the start of its history", gaps, oldest, missing)
			}
			synced := streamIDs(t, s.b, s.roomID)

			placed := fill(t, s, []string{missing}, 14-maxMissingEvents)
			if want := sent[:14-maxMissingEvents]; !sameSet(placed, want) {
				t.Fatalf("placed %v, want %v", placed, want)
			}
			bIDs, _, bRows := topological(t, s.b, s.roomID)
			k := slices.Index(bIDs, join)
			if got := bIDs[k:]; !slices.Equal(got, append([]string{join}, sent...)) {
				t.Fatalf("B's history from the join %v, want the join and %v", got, sent)
			}
			for _, r := range bRows[k+1 : k+1+len(placed)] {
				if r.StreamPos >= 0 {
					t.Errorf("%s at stream position %d, want negative", r.EventID, r.StreamPos)
				}
			}
			if gaps := gapsAt(t, s.b, s.roomID); len(gaps) != 1 || gaps[join] == nil || len(recorded(t, s.b, s.roomID, missing)) != 0 {
				t.Errorf("gaps after the round %v, want the start of the history alone", gaps)
			}
			if got := streamIDs(t, s.b, s.roomID); !slices.Equal(got, synced) {
				t.Errorf("/sync's events %v, were %v", got, synced)
			}
		})
	}
}

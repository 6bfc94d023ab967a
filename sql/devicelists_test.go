package sql_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// memberRoom stores membership events straight into a room, with the
// state snapshots, membership rows and room row the roomserver would
// write, so that device-list tests control every membership change.
type memberRoom struct {
	t      *testing.T
	db     *sql.DB
	nid    int64
	snap   int64
	chain  int
	stream *int64
}

func newMemberRoom(t *testing.T, db *sql.DB, roomID string, stream *int64) *memberRoom {
	t.Helper()
	nid, err := db.CreateRoom(context.Background(), roomID, "11")
	if err != nil {
		t.Fatal(err)
	}
	return &memberRoom{t: t, db: db, nid: nid, stream: stream}
}

// set stores userID's membership event.
func (r *memberRoom) set(userID, membership string) {
	r.t.Helper()
	ctx := context.Background()
	*r.stream++
	pos := *r.stream
	js, _ := json.Marshal(map[string]any{"type": "m.room.member", "state_key": userID, "sender": userID,
		"content": map[string]string{"membership": membership}})
	sk := userID
	nid, err := r.db.InsertEvent(ctx, sql.Event{RoomNID: r.nid, EventID: fmt.Sprintf("$m%d", pos), Type: "m.room.member",
		StateKey: &sk, Sender: userID, Depth: pos, StreamPos: pos, StateBeforeNID: r.snap, JSON: js})
	if err != nil {
		r.t.Fatal(err)
	}
	r.chain++
	if r.snap, err = r.db.AddSnapshot(ctx, r.nid, r.snap, r.chain, sql.StateMap{{Type: "m.room.member", StateKey: userID}: nid}); err != nil {
		r.t.Fatal(err)
	}
	if err := r.db.SetMembership(ctx, r.nid, userID, membership, nid, pos); err != nil {
		r.t.Fatal(err)
	}
	if err := r.db.UpdateRoom(ctx, sql.RoomInfo{NID: r.nid, SnapshotNID: r.snap, Extremities: []string{}, MaxDepth: pos, LastStreamPos: pos}); err != nil {
		r.t.Fatal(err)
	}
}

// lists computes userID's device lists between two positions.
func lists(t *testing.T, db *sql.DB, userID string, from, to sql.StreamPositions) sql.DeviceLists {
	t.Helper()
	mems, err := db.SyncMemberships(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	l, err := db.DeviceListChanges(context.Background(), userID, mems, from, to)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func wantLists(t *testing.T, what string, got sql.DeviceLists, changed, left []string) {
	t.Helper()
	if !slices.Equal(got.Changed, changed) || !slices.Equal(got.Left, left) {
		t.Errorf("%s: changed %v left %v, want changed %v left %v", what, got.Changed, got.Left, changed, left)
	}
}

// TestDeviceListChangesOfDevices: a user sees the device-list changes of
// the users sharing a room with them and their own, and the users whose
// keys they signed; only the latest change of a user counts.
func TestDeviceListChangesOfDevices(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var stream int64
		shared := newMemberRoom(t, db, "!shared:test", &stream)
		shared.set("@alice:test", "join")
		shared.set("@bob:test", "join")
		shared.set("@ivan:test", "invite") // invited: no room shared yet
		other := newMemberRoom(t, db, "!other:test", &stream)
		other.set("@carol:test", "join")
		start := sql.StreamPositions{Events: stream}

		for _, u := range []string{"@bob:test", "@carol:test", "@dave:test", "@alice:test", "@ivan:test"} {
			ch, err := db.AddDeviceListChange(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if u == "@bob:test" && !slices.Equal(ch.Rooms, []string{"!shared:test"}) {
				t.Errorf("bob's change wakes %v", ch.Rooms)
			}
		}
		now, _ := db.SyncPositions(ctx)
		now.Events = stream
		wantLists(t, "alice", lists(t, db, "@alice:test", start, now), []string{"@alice:test", "@bob:test"}, nil)
		wantLists(t, "carol", lists(t, db, "@carol:test", start, now), []string{"@carol:test"}, nil)
		wantLists(t, "an empty window", lists(t, db, "@alice:test", now, now), nil, nil)

		// Alice signs carol's keys: alice's devices, and nobody else's,
		// see carol changed.
		if err := db.AddSignatureChange(ctx, "@alice:test", []string{"@carol:test"}); err != nil {
			t.Fatal(err)
		}
		after, _ := db.SyncPositions(ctx)
		after.Events = stream
		wantLists(t, "alice after signing", lists(t, db, "@alice:test", now, after), []string{"@carol:test"}, nil)
		wantLists(t, "bob after alice signed", lists(t, db, "@bob:test", now, after), nil, nil)

		// Bob changes again: a window with only his latest change has him,
		// and the older change no longer counts on its own.
		if _, err := db.AddDeviceListChange(ctx, "@bob:test"); err != nil {
			t.Fatal(err)
		}
		latest, _ := db.SyncPositions(ctx)
		latest.Events = stream
		wantLists(t, "bob's second change", lists(t, db, "@alice:test", after, latest), []string{"@bob:test"}, nil)
		wantLists(t, "window of bob's first change only", lists(t, db, "@alice:test", start, sql.StreamPositions{Events: stream, DeviceLists: 1}), nil, nil)
	})
}

// TestDeviceListChangesOfMemberships: joins and leaves in the event
// window, the caller's own (newly joined, newly left; a profile change
// is neither; a rejected invite is no leave) and others'.
func TestDeviceListChangesOfMemberships(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		var stream int64
		main := newMemberRoom(t, db, "!main:test", &stream)
		main.set("@alice:test", "join")
		main.set("@bob:test", "join")
		main.set("@dave:test", "join")
		side := newMemberRoom(t, db, "!side:test", &stream) // alice and hank share it
		side.set("@alice:test", "join")
		side.set("@hank:test", "join")
		old := newMemberRoom(t, db, "!old:test", &stream) // alice will leave it
		old.set("@frank:test", "join")
		old.set("@hank:test", "join")
		old.set("@alice:test", "join")
		fresh := newMemberRoom(t, db, "!fresh:test", &stream) // alice will join it
		fresh.set("@erin:test", "join")
		invited := newMemberRoom(t, db, "!invited:test", &stream) // alice will reject its invite
		invited.set("@gina:test", "join")
		invited.set("@alice:test", "invite")
		since := sql.StreamPositions{Events: stream}

		main.set("@carol:test", "join")  // joins a room alice is in: changed
		main.set("@bob:test", "leave")   // leaves the only shared room: left
		main.set("@alice:test", "join")  // alice's profile change: dave is not "changed"
		main.set("@ivan:test", "invite") // invited: changed (clients encrypt for invitees)
		fresh.set("@alice:test", "join") // newly joined: erin changed
		old.set("@alice:test", "leave")  // newly left: frank left, hank still shares side
		invited.set("@alice:test", "leave")
		to := sql.StreamPositions{Events: stream}

		wantLists(t, "alice", lists(t, db, "@alice:test", since, to),
			[]string{"@carol:test", "@erin:test", "@ivan:test"}, []string{"@bob:test", "@frank:test"})
		// What bob sees: he left, so everyone joined in main he no longer
		// shares a room with.
		wantLists(t, "bob", lists(t, db, "@bob:test", since, to), nil, []string{"@alice:test", "@carol:test", "@dave:test"})
		// A window before the changes has none of them.
		wantLists(t, "alice before", lists(t, db, "@alice:test", sql.StreamPositions{Events: since.Events - 1}, since), nil, nil)

		// Joining and leaving within the window is a leave of a room
		// that was joined.
		brief := newMemberRoom(t, db, "!brief:test", &stream)
		brief.set("@judy:test", "join")
		since2 := sql.StreamPositions{Events: stream}
		brief.set("@alice:test", "join")
		brief.set("@alice:test", "leave")
		wantLists(t, "alice joined and left", lists(t, db, "@alice:test", since2, sql.StreamPositions{Events: stream}), nil, []string{"@judy:test"})
	})
}

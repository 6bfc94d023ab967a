package sql_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestRemoteDeviceCache: a fetched list replaces the cache; an update
// applies only on top of the stream_id it names; a stale list is not
// applied to; the cache is fresh only while a local user and the remote
// user have shared a room since the fetch.
func TestRemoteDeviceCache(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		const bob, carol = "@bob:remote.example", "@carol:remote.example"
		nid, err := db.CreateRoom(ctx, "!r:ours.example", "11")
		if err != nil {
			t.Fatal(err)
		}
		join := func(user, membership string, pos int64) {
			t.Helper()
			if err := db.SetMembership(ctx, nid, user, membership, pos, pos); err != nil {
				t.Fatal(err)
			}
		}
		join("@alice:ours.example", "join", 2)
		join(bob, "join", 5)
		join(carol, "join", 3)
		// A user of OURS.example (another server name on SQLite's
		// case-blind LIKE) is not local.
		join("@dave:OURS.example", "join", 1)

		since, err := db.SharedSince(ctx, "ours.example", []string{bob, carol, "@nobody:remote.example"})
		if err != nil || fmt.Sprint(since) != "map[@bob:remote.example:5 @carol:remote.example:3]" {
			t.Fatalf("shared since %v %v", since, err)
		}

		if _, err := db.RemoteDeviceList(ctx, bob); !errors.Is(err, sql.ErrNotFound) {
			t.Fatalf("untracked list: %v", err)
		}
		devices := []sql.RemoteDevice{{DeviceID: "B1", DisplayName: "phone", Keys: []byte(`{"device_id":"B1"}`)}, {DeviceID: "B2"}}
		cross := map[string][]byte{sql.CrossSigningMaster: []byte(`{"usage":["master"]}`)}
		if err := db.ReplaceRemoteDeviceList(ctx, sql.RemoteDeviceList{UserID: bob, StreamID: 7, SyncedPos: 10}, devices, cross); err != nil {
			t.Fatal(err)
		}
		fresh := func(want string) {
			t.Helper()
			got, err := db.FreshRemoteDeviceKeys(ctx, "ours.example", []string{bob, carol})
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, u := range slices.Sorted(maps.Keys(got)) {
				s = append(s, fmt.Sprintf("%s %d", u, len(got[u].Devices)))
				for _, d := range got[u].Devices {
					s = append(s, d.DeviceID+"="+d.DisplayName+":"+string(d.Keys))
				}
				for _, typ := range []string{sql.CrossSigningMaster, sql.CrossSigningSelfSigning} {
					if k, ok := got[u].CrossSigning[typ]; ok {
						s = append(s, typ+":"+string(k))
					}
				}
			}
			if fmt.Sprint(s) != want {
				t.Errorf("fresh cache %v, want %s", s, want)
			}
		}
		fresh(`[@bob:remote.example 2 B1=phone:{"device_id":"B1"} B2=: master:{"usage":["master"]}]`)

		// An update naming another prev_id is not applied.
		if ok, err := db.ApplyRemoteDeviceUpdate(ctx, bob, 6, 8, sql.RemoteDevice{DeviceID: "B3"}, false); err != nil || ok {
			t.Fatalf("update on the wrong prev: %v %v", ok, err)
		}
		if ok, err := db.ApplyRemoteDeviceUpdate(ctx, bob, 7, 8, sql.RemoteDevice{DeviceID: "B1", Keys: []byte(`{"new":1}`)}, false); err != nil || !ok {
			t.Fatalf("update: %v %v", ok, err)
		}
		if ok, err := db.ApplyRemoteDeviceUpdate(ctx, bob, 8, 9, sql.RemoteDevice{DeviceID: "B2"}, true); err != nil || !ok {
			t.Fatalf("deletion: %v %v", ok, err)
		}
		if err := db.SetRemoteCrossSigningKeys(ctx, bob, map[string][]byte{sql.CrossSigningSelfSigning: []byte(`{"s":1}`)}); err != nil {
			t.Fatal(err)
		}
		fresh(`[@bob:remote.example 1 B1=:{"new":1} master:{"usage":["master"]} self_signing:{"s":1}]`)
		if l, err := db.RemoteDeviceList(ctx, bob); err != nil || l.StreamID != 9 || l.SyncedPos != 10 || l.Stale {
			t.Fatalf("list %+v %v", l, err)
		}

		// Bob leaves and comes back after the fetch: updates may have
		// been withheld meanwhile.
		join(bob, "leave", 11)
		fresh("[]")
		join(bob, "join", 12)
		fresh("[]")
		// A fetch after that makes it fresh again; a stale mark ends it
		// and stops updates.
		if err := db.ReplaceRemoteDeviceList(ctx, sql.RemoteDeviceList{UserID: bob, StreamID: 20, SyncedPos: 12}, nil, nil); err != nil {
			t.Fatal(err)
		}
		fresh(`[@bob:remote.example 0]`)
		if err := db.MarkRemoteDeviceListStale(ctx, bob); err != nil {
			t.Fatal(err)
		}
		fresh("[]")
		if ok, err := db.ApplyRemoteDeviceUpdate(ctx, bob, 20, 21, sql.RemoteDevice{DeviceID: "B9"}, false); err != nil || ok {
			t.Fatalf("update of a stale list: %v %v", ok, err)
		}
		if err := db.MarkRemoteDeviceListStale(ctx, carol); err != nil {
			t.Fatal(err)
		}
		if l, err := db.RemoteDeviceList(ctx, carol); err != nil || !l.Stale {
			t.Fatalf("stale mark of an untracked user: %+v %v", l, err)
		}

		members, err := db.RemoteMembersSharingRoom(ctx, "ours.example", []string{"@alice:ours.example", "@eve:ours.example"})
		if err != nil {
			t.Fatal(err)
		}
		got := members["@alice:ours.example"]
		slices.Sort(got)
		if len(members) != 1 || fmt.Sprint(got) != "[@bob:remote.example @carol:remote.example @dave:OURS.example]" {
			t.Fatalf("remote members %v", members)
		}
	})
}

// TestDeviceListOutbound: the sender reads local users' changes after its
// position, moves it only from where it read it, and records each user's
// sequence, which GET /user/devices serves.
func TestDeviceListOutbound(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		var local []int64
		for _, u := range []string{"@a:ours.example", "@b:remote.example", "@c:ours.example", "@d:OURS.example"} {
			ch, err := db.AddDeviceListChange(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			if u[len(u)-len("ours.example"):] == "ours.example" {
				local = append(local, ch.Pos)
			}
		}
		if err := db.AddSignatureChange(ctx, "@z:ours.example", []string{"@y:ours.example"}); err != nil {
			t.Fatal(err)
		}
		pos, err := db.DeviceListOutboundPos(ctx)
		if err != nil || pos != 0 {
			t.Fatalf("initial position %d %v", pos, err)
		}
		changes, err := db.LocalDeviceListChanges(ctx, "ours.example", 0, 10)
		if err != nil || fmt.Sprint(changes) != fmt.Sprintf("[{@a:ours.example %d} {@c:ours.example %d}]", local[0], local[1]) {
			t.Fatalf("local changes %v %v", changes, err)
		}
		if changes, err := db.LocalDeviceListChanges(ctx, "ours.example", local[0], 10); err != nil || len(changes) != 1 {
			t.Fatalf("changes after the first %v %v", changes, err)
		}
		if err := db.AdvanceDeviceListOutbound(ctx, 0, local[1]); err != nil {
			t.Fatal(err)
		}
		if err := db.AdvanceDeviceListOutbound(ctx, 0, local[1]); !errors.Is(err, sql.ErrMoved) {
			t.Fatalf("second advance from the same place: %v", err)
		}

		if id, err := db.DeviceListStreamID(ctx, "@a:ours.example"); err != nil || id != 0 {
			t.Fatalf("stream id before any update %d %v", id, err)
		}
		dev := sql.DeviceListSentKey{Kind: "device", DeviceID: "D1"}
		master := sql.DeviceListSentKey{Kind: sql.CrossSigningMaster}
		if err := db.RecordDeviceListSent(ctx, "@a:ours.example", 2, map[sql.DeviceListSentKey]string{dev: "h1", master: "m1"}); err != nil {
			t.Fatal(err)
		}
		if err := db.RecordDeviceListSent(ctx, "@a:ours.example", 3, map[sql.DeviceListSentKey]string{dev: ""}); err != nil {
			t.Fatal(err)
		}
		last, sent, err := db.DeviceListSent(ctx, "@a:ours.example")
		if err != nil || last != 3 || fmt.Sprint(sent) != "map[{master }:m1]" {
			t.Fatalf("sent %d %v %v", last, sent, err)
		}
		if id, err := db.DeviceListStreamID(ctx, "@a:ours.example"); err != nil || id != 3 {
			t.Fatalf("stream id %d %v", id, err)
		}
	})
}

// TestStaleRemoteDeviceLists: the stale lists are listed by user id, a
// page at a time, and found among given users; a fetch takes a list off.
func TestStaleRemoteDeviceLists(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, u := range []string{"@c:r.example", "@a:r.example", "@b:r.example"} {
			if err := db.MarkRemoteDeviceListStale(ctx, u); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.ReplaceRemoteDeviceList(ctx, sql.RemoteDeviceList{UserID: "@b:r.example", StreamID: 3}, nil, nil); err != nil {
			t.Fatal(err)
		}
		page, err := db.StaleRemoteDeviceLists(ctx, "", 1)
		if err != nil || fmt.Sprint(page) != "[@a:r.example]" {
			t.Fatalf("first page %v %v", page, err)
		}
		page, err = db.StaleRemoteDeviceLists(ctx, page[0], 5)
		if err != nil || fmt.Sprint(page) != "[@c:r.example]" {
			t.Fatalf("next page %v %v", page, err)
		}
		among, err := db.StaleAmong(ctx, []string{"@b:r.example", "@c:r.example", "@d:r.example"})
		if err != nil || fmt.Sprint(among) != "[@c:r.example]" {
			t.Fatalf("stale among %v %v", among, err)
		}
	})
}

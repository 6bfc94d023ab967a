package sql_test

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestSyncHead: the one query a sync starts with gives what the separate
// reads give: positions, memberships, account data of the types asked,
// key counts, and whether the device has to-device messages to
// acknowledge and to receive.
func TestSyncHead(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		addDevices(t, db, "bob", "B1", "B2")
		const bob = "@bob:test"
		for i, id := range []string{"!b:test", "!a:test"} {
			room, err := db.CreateRoom(ctx, id, "11")
			if err != nil {
				t.Fatal(err)
			}
			if err := db.SetMembership(ctx, room, bob, []string{"join", "invite"}[i], int64(10+i), int64(10+i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.PutAccountData(ctx, "bob", "", "m.ignored_user_list", []byte(`{"ignored_users":{}}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.PutAccountData(ctx, "bob", "", "m.other", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"signed_curve25519:A", "signed_curve25519:B"} {
			if _, err := db.AddOneTimeKey(ctx, "bob", "B1", sql.OneTimeKey{KeyID: id, Algorithm: "signed_curve25519", JSON: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.SetFallbackKey(ctx, "bob", "B1", sql.OneTimeKey{KeyID: "signed_curve25519:F", Algorithm: "signed_curve25519", JSON: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "bob", Devices: map[string][]byte{"B1": []byte(`{}`)}}}, 10); err != nil {
			t.Fatal(err)
		}

		head, err := db.SyncHead(ctx, sql.SyncHeadRequest{UserID: bob, Localpart: "bob", DeviceID: "B1",
			AccountDataTypes: []string{"m.ignored_user_list", "m.invite_permission_config"}})
		if err != nil {
			t.Fatal(err)
		}
		pos, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mems, err := db.SyncMemberships(ctx, bob)
		if err != nil {
			t.Fatal(err)
		}
		counts, fallback, err := db.DeviceKeyCounts(ctx, "bob", "B1")
		if err != nil {
			t.Fatal(err)
		}
		if head.Positions != pos {
			t.Errorf("positions %+v, want %+v", head.Positions, pos)
		}
		if !slices.Equal(head.Memberships, mems) {
			t.Errorf("memberships %+v, want %+v", head.Memberships, mems)
		}
		if !maps.Equal(head.OneTimeKeys, counts) || !slices.Equal(head.FallbackKeys, fallback) || counts["signed_curve25519"] != 2 {
			t.Errorf("keys %v %v, want %v %v", head.OneTimeKeys, head.FallbackKeys, counts, fallback)
		}
		if len(head.AccountData) != 1 || string(head.AccountData["m.ignored_user_list"]) != `{"ignored_users":{}}` {
			t.Errorf("account data %q", head.AccountData)
		}
		if head.ToDeviceToAck || !head.ToDeviceNew {
			t.Errorf("to-device from 0: ack %v, new %v", head.ToDeviceToAck, head.ToDeviceNew)
		}
		head, err = db.SyncHead(ctx, sql.SyncHeadRequest{UserID: bob, Localpart: "bob", DeviceID: "B1", ToDeviceSince: pos.ToDevice})
		if err != nil || !head.ToDeviceToAck || head.ToDeviceNew {
			t.Errorf("to-device from %d: ack %v, new %v, %v", pos.ToDevice, head.ToDeviceToAck, head.ToDeviceNew, err)
		}
		head, err = db.SyncHead(ctx, sql.SyncHeadRequest{UserID: bob, Localpart: "bob", DeviceID: "B2"})
		if err != nil || head.ToDeviceToAck || head.ToDeviceNew || len(head.OneTimeKeys) != 0 || len(head.FallbackKeys) != 0 {
			t.Errorf("another device: %+v %v", head, err)
		}
	})
}

// TestSyncHeadsBatch: heads read together are each what a read of their
// own gives, whatever the others in the batch ask (the account data types
// of one request are not another's), for batches of every padded size.
func TestSyncHeadsBatch(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		addDevices(t, db, "bob", "B1", "B2")
		addDevices(t, db, "carol", "C1")
		room, err := db.CreateRoom(ctx, "!r:test", "11")
		if err != nil {
			t.Fatal(err)
		}
		for i, u := range []string{"@bob:test", "@carol:test"} {
			if err := db.SetMembership(ctx, room, u, "join", int64(10+i), int64(10+i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.PutAccountData(ctx, "bob", "", "m.ignored_user_list", []byte(`{"ignored_users":{}}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.PutAccountData(ctx, "carol", "", "m.other", []byte(`{"c":1}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.AddOneTimeKey(ctx, "bob", "B1", sql.OneTimeKey{KeyID: "signed_curve25519:A", Algorithm: "signed_curve25519", JSON: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "carol", Devices: map[string][]byte{"C1": []byte(`{}`)}}}, 10); err != nil {
			t.Fatal(err)
		}
		reqs := []sql.SyncHeadRequest{
			{UserID: "@bob:test", Localpart: "bob", DeviceID: "B1", WantUnread: true, WantCountChanges: true,
				AccountDataTypes: []string{"m.ignored_user_list"}},
			{UserID: "@carol:test", Localpart: "carol", DeviceID: "C1", AccountDataTypes: []string{"m.other"}},
			{UserID: "@bob:test", Localpart: "bob", DeviceID: "B2", ToDeviceSince: 1},
			{UserID: "@nobody:test", Localpart: "nobody", DeviceID: "N"},
			{UserID: "@carol:test", Localpart: "carol", DeviceID: "C1", ToDeviceSince: 1 << 40},
		}
		var alone []sql.SyncHead
		for _, r := range reqs {
			h, err := db.SyncHead(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			alone = append(alone, h)
		}
		if len(alone[0].AccountData) != 1 || len(alone[1].AccountData) != 1 || !alone[1].ToDeviceNew || !alone[4].ToDeviceToAck {
			t.Fatalf("the heads read alone do not tell the requests apart: %+v", alone)
		}
		for n := 1; n <= len(reqs); n++ {
			heads, err := db.SyncHeads(ctx, reqs[:n])
			if err != nil {
				t.Fatal(err)
			}
			if len(heads) != n {
				t.Fatalf("%d heads for %d requests", len(heads), n)
			}
			for i, h := range heads {
				if !reflect.DeepEqual(h, alone[i]) {
					t.Errorf("batch of %d, request %d: %+v, alone %+v", n, i, h, alone[i])
				}
			}
		}
		if _, err := db.SyncHeads(ctx, make([]sql.SyncHeadRequest, sql.MaxSyncHeads+1)); err == nil {
			t.Error("a batch over the limit was read")
		}
	})
}

// TestSyncHeadsOneText: the head query's text does not depend on the
// number of requests, so each connection prepares it once.
func TestSyncHeadsOneText(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		types := []string{"m.ignored_user_list", "m.invite_permission_config"}
		one := db.SyncHeadsQueryForTest(1, types)
		for _, n := range []int{2, 3, 33, sql.MaxSyncHeads} {
			if db.SyncHeadsQueryForTest(n, types) != one {
				t.Errorf("the head query of %d requests is another text than of one", n)
			}
		}
	})
}

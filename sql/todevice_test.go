package sql_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func addDevices(t *testing.T, db *sql.DB, localpart string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := db.UpsertDevice(context.Background(), localpart, id, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// inbox lists the contents of a device's whole inbox, oldest first.
func inbox(t *testing.T, db *sql.DB, localpart, deviceID string) []string {
	t.Helper()
	msgs, err := db.ToDeviceMessages(context.Background(), localpart, deviceID, 0, 1<<62, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Content))
	}
	return out
}

// TestDeliverToDevice: explicit devices, the wildcard for the others,
// unknown devices and users dropped, one contiguous position per message
// taken from the to_device counter, and nothing stored past the limit.
func TestDeliverToDevice(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		addDevices(t, db, "bob", "B1", "B2", "B3")
		addDevices(t, db, "carol", "C1")
		woken, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "bob", Devices: map[string][]byte{"B1": []byte(`{"n":"b1"}`), "*": []byte(`{"n":"all"}`), "NOPE": []byte(`{"n":"x"}`)}},
			{Localpart: "carol", Devices: map[string][]byte{"C1": []byte(`{"n":"c1"}`)}},
			{Localpart: "nobody", Devices: map[string][]byte{"*": []byte(`{"n":"x"}`)}},
		}, 100)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(woken, []string{"bob", "carol"}) {
			t.Errorf("woken = %v", woken)
		}
		for dev, want := range map[string][]string{"B1": {`{"n":"b1"}`}, "B2": {`{"n":"all"}`}, "B3": {`{"n":"all"}`}} {
			if got := inbox(t, db, "bob", dev); !slices.Equal(got, want) {
				t.Errorf("bob %s inbox = %v, want %v", dev, got, want)
			}
		}
		if got := inbox(t, db, "carol", "C1"); !slices.Equal(got, []string{`{"n":"c1"}`}) {
			t.Errorf("carol inbox = %v", got)
		}
		pos, err := db.SyncPositions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pos.ToDevice != 4 {
			t.Errorf("to_device position = %d after 4 messages", pos.ToDevice)
		}
		msgs, err := db.ToDeviceMessages(ctx, "bob", "B2", 0, 10, 10)
		if err != nil || len(msgs) != 1 || msgs[0].Sender != "@alice:test" || msgs[0].Type != "m.test" || msgs[0].Pos < 1 || msgs[0].Pos > 4 {
			t.Errorf("message = %+v %v", msgs, err)
		}

		// Past the limit (the wildcard counts each device) nothing is
		// stored and no position is taken.
		_, err = db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "bob", Devices: map[string][]byte{"*": []byte(`{}`)}},
		}, 2)
		if !errors.Is(err, sql.ErrTooManyToDevice) {
			t.Errorf("over the limit: %v", err)
		}
		if after, _ := db.SyncPositions(ctx); after.ToDevice != 4 || len(inbox(t, db, "bob", "B3")) != 1 {
			t.Errorf("a refused delivery left traces: position %d, inbox %v", after.ToDevice, inbox(t, db, "bob", "B3"))
		}
		if woken, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "bob", Devices: map[string][]byte{"GONE": []byte(`{}`)}}}, 10); err != nil || len(woken) != 0 {
			t.Errorf("only unknown devices: woken %v, %v", woken, err)
		}
	})
}

// TestToDeviceWindowAndAck: reads are bounded by (after, upTo] and the
// limit, oldest first; an ack deletes at or below its position only, for
// that device only.
func TestToDeviceWindowAndAck(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		addDevices(t, db, "bob", "B1", "B2")
		for i := range 10 {
			if _, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
				{Localpart: "bob", Devices: map[string][]byte{"*": fmt.Appendf(nil, `{"i":%d}`, i)}}}, 10); err != nil {
				t.Fatal(err)
			}
		}
		all, err := db.ToDeviceMessages(ctx, "bob", "B1", 0, 100, 100)
		if err != nil || len(all) != 10 {
			t.Fatalf("B1 has %d messages: %v", len(all), err)
		}
		page, err := db.ToDeviceMessages(ctx, "bob", "B1", all[2].Pos, all[8].Pos, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) != 3 || page[0].Pos != all[3].Pos || page[2].Pos != all[5].Pos {
			t.Errorf("page (%d, %d] limit 3 = %+v", all[2].Pos, all[8].Pos, page)
		}
		if err := db.AckToDevice(ctx, "bob", "B1", all[4].Pos); err != nil {
			t.Fatal(err)
		}
		if err := db.AckToDevice(ctx, "bob", "B1", all[4].Pos); err != nil { // nothing left to delete
			t.Fatal(err)
		}
		if got := inbox(t, db, "bob", "B1"); len(got) != 5 || got[0] != `{"i":5}` {
			t.Errorf("B1 after ack = %v", got)
		}
		if got := inbox(t, db, "bob", "B2"); len(got) != 10 {
			t.Errorf("B2 lost messages to B1's ack: %v", got)
		}
	})
}

// TestToDeviceTxn: a transaction id is claimed once per device and event
// type.
func TestToDeviceTxn(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, c := range []struct {
			device, typ, txn string
			want             bool
		}{
			{"A1", "m.test", "t1", true},
			{"A1", "m.test", "t1", false},
			{"A1", "m.other", "t1", true},
			{"A2", "m.test", "t1", true},
			{"A1", "m.test", "t2", true},
		} {
			got, err := db.ClaimToDeviceTxn(ctx, "alice", c.device, c.typ, c.txn)
			if err != nil || got != c.want {
				t.Errorf("claim %s %s %s = %v %v, want %v", c.device, c.typ, c.txn, got, err, c.want)
			}
		}
	})
}

// TestDevicesDeleted: deleting devices drops their inboxes and
// transactions (others' stay), forgets a dehydrated device among them,
// and records a device-list change.
func TestDevicesDeleted(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		addDevices(t, db, "bob", "B1", "B2", "DEHY")
		if err := db.SetDehydratedDevice(ctx, "bob", "DEHY", []byte(`{"algorithm":"a"}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := db.DeliverToDevice(ctx, "@alice:test", "m.test", []sql.ToDeviceDelivery{
			{Localpart: "bob", Devices: map[string][]byte{"*": []byte(`{}`)}}}, 10); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ClaimToDeviceTxn(ctx, "bob", "B1", "m.test", "t"); err != nil {
			t.Fatal(err)
		}
		ch, err := db.DevicesDeleted(ctx, "@bob:test", "bob", []string{"B1"})
		if err != nil {
			t.Fatal(err)
		}
		if ch.UserID != "@bob:test" || ch.Pos != 1 {
			t.Errorf("change = %+v", ch)
		}
		if len(inbox(t, db, "bob", "B1")) != 0 || len(inbox(t, db, "bob", "B2")) != 1 {
			t.Errorf("inboxes after deleting B1: %v %v", inbox(t, db, "bob", "B1"), inbox(t, db, "bob", "B2"))
		}
		if fresh, _ := db.ClaimToDeviceTxn(ctx, "bob", "B1", "m.test", "t"); !fresh {
			t.Error("a deleted device's transaction ids survived")
		}
		if _, err := db.DehydratedDevice(ctx, "bob"); err != nil {
			t.Errorf("deleting another device forgot the dehydrated one: %v", err)
		}
		if _, err := db.DevicesDeleted(ctx, "@bob:test", "bob", []string{"DEHY"}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.DehydratedDevice(ctx, "bob"); !errors.Is(err, sql.ErrNotFound) {
			t.Errorf("dehydrated device after deleting it: %v", err)
		}
		if _, err := db.DevicesDeleted(ctx, "@bob:test", "bob", nil); err != nil {
			t.Fatal(err)
		}
		if len(inbox(t, db, "bob", "B2")) != 0 {
			t.Error("deleting every device kept an inbox")
		}
	})
}

// TestDehydratedDevice: one per user, replaced by the next.
func TestDehydratedDevice(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		if _, err := db.DehydratedDevice(ctx, "bob"); !errors.Is(err, sql.ErrNotFound) {
			t.Errorf("none yet: %v", err)
		}
		for _, id := range []string{"D1", "D2"} {
			if err := db.SetDehydratedDevice(ctx, "bob", id, []byte(`{"algorithm":"`+id+`"}`)); err != nil {
				t.Fatal(err)
			}
		}
		d, err := db.DehydratedDevice(ctx, "bob")
		if err != nil || d.DeviceID != "D2" || string(d.Data) != `{"algorithm":"D2"}` {
			t.Errorf("dehydrated device = %+v %v", d, err)
		}
	})
}

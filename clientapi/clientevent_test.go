package clientapi_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// pduFrom parses trusted event JSON of a room version.
func pduFrom(t testing.TB, version, eventID, js string, redacted bool) gomatrixserverlib.PDU {
	t.Helper()
	pdu, err := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version)).
		NewEventFromTrustedJSONWithEventID(eventID, []byte(js), redacted)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

const testMessageJSON = `{"auth_events":[],"content":{"body":"hi","msgtype":"m.text"},"depth":3,"hashes":{"sha256":"x"},
	"origin_server_ts":1000,"prev_events":[],"room_id":"!r:test.local","sender":"@alice:test.local","signatures":{},"type":"m.room.message"}`

func TestFormatEvent(t *testing.T) {
	now := time.UnixMilli(5000)
	msg := pduFrom(t, "11", "$msg", testMessageJSON, false)
	got, err := json.Marshal(clientapi.FormatEvent(msg, now))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"content":{"body":"hi","msgtype":"m.text"},"event_id":"$msg","origin_server_ts":1000,"room_id":"!r:test.local",` +
		`"sender":"@alice:test.local","type":"m.room.message","unsigned":{"age":4000}}`
	if string(got) != want {
		t.Fatalf("client event\n got %s\nwant %s", got, want)
	}
	if !reflect.DeepEqual(clientapi.FormatRoomEvent(msg, "!r:test.local", now), clientapi.FormatEvent(msg, now)) {
		t.Fatal("FormatRoomEvent differs from FormatEvent")
	}

	state := pduFrom(t, "11", "$s", `{"auth_events":[],"content":{},"depth":3,"hashes":{"sha256":"x"},"origin_server_ts":1000,
		"prev_events":[],"room_id":"!r:test.local","sender":"@alice:test.local","signatures":{},"state_key":"","type":"m.room.topic"}`, false)
	if ev := clientapi.FormatEvent(state, now); ev.StateKey == nil || *ev.StateKey != "" || string(ev.Content) != "{}" {
		t.Fatalf("state event %+v", ev)
	}

	// A v11 redaction from elsewhere may carry redacts in content only.
	red := pduFrom(t, "11", "$red", `{"auth_events":[],"content":{"redacts":"$msg"},"depth":4,"hashes":{"sha256":"x"},"origin_server_ts":1000,
		"prev_events":[],"room_id":"!r:test.local","sender":"@alice:test.local","signatures":{},"type":"m.room.redaction"}`, false)
	if ev := clientapi.FormatEvent(red, now); ev.Redacts != "$msg" {
		t.Fatalf("redaction's redacts %q", ev.Redacts)
	}
}

// fakeStore answers ClientEvents' lookups and counts them.
type fakeStore struct {
	txns       map[string]string
	redactions map[string]sql.Event
	calls      int
}

func (f *fakeStore) TransactionIDs(_ context.Context, _, _ string, ids []string) (map[string]string, error) {
	f.calls++
	out := map[string]string{}
	for _, id := range ids {
		if txn, ok := f.txns[id]; ok {
			out[id] = txn
		}
	}
	return out, nil
}

func (f *fakeStore) Redactions(_ context.Context, ids []string) (map[string]sql.Event, error) {
	f.calls++
	out := map[string]sql.Event{}
	for _, id := range ids {
		if r, ok := f.redactions[id]; ok {
			out[id] = r
		}
	}
	return out, nil
}

func TestClientEventsLookups(t *testing.T) {
	ctx := context.Background()
	now := time.UnixMilli(5000)
	msg := pduFrom(t, "11", "$msg", testMessageJSON, false)
	redactionJSON := `{"auth_events":[],"content":{"reason":"spam","redacts":"$gone"},"depth":5,"hashes":{"sha256":"x"},"origin_server_ts":2000,
		"prev_events":[],"redacts":"$gone","room_id":"!r:test.local","sender":"@mod:test.local","signatures":{},"type":"m.room.redaction"}`
	// Stored redacted events hold their stripped JSON.
	gone := pduFrom(t, "11", "$gone", strings.Replace(testMessageJSON, `{"body":"hi","msgtype":"m.text"}`, `{}`, 1), true)
	store := &fakeStore{txns: map[string]string{"$msg": "t1"},
		redactions: map[string]sql.Event{"$gone": {EventID: "$red", RoomVersion: "11", JSON: []byte(redactionJSON)}}}

	evs, err := clientapi.ClientEvents(ctx, store, []gomatrixserverlib.PDU{msg, gone}, &userapi.Device{UserID: "@alice:test.local", DeviceID: "D"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Unsigned.TransactionID != "t1" || evs[1].Unsigned.TransactionID != "" {
		t.Fatalf("transaction ids %q %q", evs[0].Unsigned.TransactionID, evs[1].Unsigned.TransactionID)
	}
	rb := evs[1].Unsigned.RedactedBecause
	if rb == nil || rb.EventID != "$red" || rb.Redacts != "$gone" || rb.Unsigned.Age != 3000 || evs[0].Unsigned.RedactedBecause != nil {
		t.Fatalf("redacted_because %+v", rb)
	}
	if string(evs[1].Content) != "{}" {
		t.Fatalf("redacted content %s", evs[1].Content)
	}

	// Another user's device: no transaction lookup; nothing redacted: no
	// redaction lookup.
	store.calls = 0
	evs, err = clientapi.ClientEvents(ctx, store, []gomatrixserverlib.PDU{msg}, &userapi.Device{UserID: "@bob:test.local", DeviceID: "B"}, now)
	if err != nil || evs[0].Unsigned.TransactionID != "" || store.calls != 0 {
		t.Fatalf("%d lookups for another user's unredacted event (%v)", store.calls, err)
	}
	if _, err := clientapi.ClientEvents(ctx, store, []gomatrixserverlib.PDU{msg}, nil, now); err != nil || store.calls != 0 {
		t.Fatalf("%d lookups without a device (%v)", store.calls, err)
	}
	if !reflect.DeepEqual(clientapi.FormatEvent(msg, now), evs[0]) {
		t.Fatal("ClientEvents without lookups differs from FormatEvent")
	}
}

// plainEvent is ClientEvent without its MarshalJSON: encoding/json's
// reflection encoding, which AppendJSON must match.
type plainEvent clientapi.ClientEvent

// sameJSON fails unless AppendJSON makes valid JSON meaning what
// encoding/json makes of the struct.
func sameJSON(t testing.TB, ev clientapi.ClientEvent) {
	t.Helper()
	fast := ev.AppendJSON(nil)
	if !json.Valid(fast) {
		t.Fatalf("AppendJSON made invalid JSON: %q", fast)
	}
	slow, err := json.Marshal(plainEvent(ev))
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(fast, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(slow, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("AppendJSON\n %s\nencoding/json\n %s", fast, slow)
	}
}

func TestAppendJSON(t *testing.T) {
	now := time.UnixMilli(5000)
	ev := clientapi.FormatEvent(pduFrom(t, "11", "$msg", testMessageJSON, false), now)
	sameJSON(t, ev)
	sk := "k\"ey\\ \u2028"
	rb := clientapi.FormatEvent(pduFrom(t, "11", "$msg", testMessageJSON, false), now)
	ev.StateKey, ev.Redacts, ev.RoomID = &sk, "$r", ""
	ev.Unsigned = clientapi.Unsigned{Age: -5, TransactionID: "t\x00\x1f\n\r\t<>&\xff\u2029é", RedactedBecause: &rb,
		PrevContent: json.RawMessage(`{"a":[1,2]}`), Membership: "join"}
	sameJSON(t, ev)
	ev.Content = nil
	if got := string(ev.AppendJSON(nil)); got[:13] != `{"content":{}` {
		t.Fatalf("no content encodes as %s", got)
	}
}

// FuzzAppendJSON: client strings (a transaction id comes from the request
// path) always encode to valid JSON that decodes to what encoding/json's
// does.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range []string{"", "txn", "\x00", "\"\\", "\xff\xfe", "\u2028\u2029", "é<>&"} {
		f.Add(s)
	}
	ev := clientapi.FormatEvent(pduFrom(f, "11", "$msg", testMessageJSON, false), time.UnixMilli(5000))
	f.Fuzz(func(t *testing.T, s string) {
		e := ev
		e.Unsigned.TransactionID, e.StateKey = s, &s
		sameJSON(t, e)
	})
}

// BenchmarkClientEvent measures formatting and encoding one event into a
// reused buffer, the per-event cost of /sync and /messages.
func BenchmarkClientEvent(b *testing.B) {
	msg := pduFrom(b, "11", "$msg", testMessageJSON, false)
	now := time.Now()
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		ev := clientapi.FormatRoomEvent(msg, "!r:test.local", now)
		buf = ev.AppendJSON(buf[:0])
	}
}

// recentTxns is what the roomserver remembers of the events it committed
// lately: by event id, sender, device and transaction id.
type recentTxns map[string][3]string

func (r recentTxns) RecentTransaction(eventID string) (userID, deviceID, txnID string, ok bool) {
	e, ok := r[eventID]
	return e[0], e[1], e[2], ok
}

// TestSentTransactionIDs: Sent answers from the roomserver's memory for
// the events it committed lately, with the transaction id for their
// device only and without a query; it asks the store for the others.
func TestSentTransactionIDs(t *testing.T) {
	store := &fakeStore{txns: map[string]string{"$old": "t-old"}}
	s := clientapi.NewSent(store, recentTxns{
		"$new":   {"@a:x", "DEV", "t-new"},
		"$state": {"@a:x", "DEV", ""}, // sent in no transaction
	})
	ctx := context.Background()
	check := func(device string, ids []string, want map[string]string, wantCalls int) {
		t.Helper()
		store.calls = 0
		got, err := s.TransactionIDs(ctx, "@a:x", device, ids)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) || store.calls != wantCalls {
			t.Fatalf("%s %v: %v with %d queries, want %v with %d", device, ids, got, store.calls, want, wantCalls)
		}
		for id, txn := range want {
			if got[id] != txn {
				t.Fatalf("%s %v: %v, want %v", device, ids, got, want)
			}
		}
	}
	check("DEV", []string{"$new"}, map[string]string{"$new": "t-new"}, 0)
	check("OTHER", []string{"$new"}, map[string]string{}, 0)
	check("DEV", []string{"$new", "$old"}, map[string]string{"$new": "t-new", "$old": "t-old"}, 1)
	check("DEV", []string{"$state"}, map[string]string{}, 0)
}

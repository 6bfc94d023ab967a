package syncapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// toDeviceEvent is a to-device event as a sync serves it.
type toDeviceEvent struct {
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		Seq int `json:"seq"`
	} `json:"content"`
}

func (r syncResp) toDevice(t *testing.T) []toDeviceEvent {
	t.Helper()
	if r.ToDevice == nil {
		return nil
	}
	var td struct {
		Events []toDeviceEvent `json:"events"`
	}
	if err := json.Unmarshal(r.ToDevice, &td); err != nil {
		t.Fatalf("to_device: %v in %s", err, r.ToDevice)
	}
	return td.Events
}

type deviceListsResp struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

func (r syncResp) deviceLists(t *testing.T) deviceListsResp {
	t.Helper()
	var dl deviceListsResp
	if r.DeviceLists != nil {
		if err := json.Unmarshal(r.DeviceLists, &dl); err != nil {
			t.Fatalf("device_lists: %v in %s", err, r.DeviceLists)
		}
	}
	return dl
}

var testEventType = event.Type{Type: "org.weft.test", Class: event.ToDeviceEventType}

// sendToDevice sends one PUT /sendToDevice with an explicit transaction
// id (mautrix's SendToDevice makes a new one each call).
func sendToDevice(t *testing.T, cli *mautrix.Client, txnID string, messages map[id.UserID]map[id.DeviceID]map[string]any) {
	t.Helper()
	u := cli.BuildClientURL("v3", "sendToDevice", testEventType.Type, txnID)
	if _, err := cli.MakeRequest(context.Background(), http.MethodPut, u, map[string]any{"messages": messages}, nil); err != nil {
		t.Fatalf("sendToDevice %s: %v", txnID, err)
	}
}

// seqs lists the seq of each event.
func seqs(evs []toDeviceEvent) []int {
	out := make([]int, len(evs))
	for i, e := range evs {
		out[i] = e.Content.Seq
	}
	return out
}

// TestToDeviceExactlyOnce: alice sends 250 messages to bob's device, one
// per request (spec: one message per device per transaction), retrying
// some requests with the same transaction id; bob reads them in pages of
// 100, reconnects once with the same token (and gets the page again), and
// continues from his last token after the server stopped and started
// again on the same database and data directory. He gets every message
// exactly once, in the order sent (spec: "in order of arrival").
func TestToDeviceExactlyOnce(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			srv := hstest.Start(t, cfg)
			h := hs{srv}
			alice := testclient.Register(t, srv.ClientURL, "alice")
			bob := testclient.Register(t, srv.ClientURL, "bob")
			token := h.sync(t, bob, url.Values{"timeout": {"0"}}).NextBatch
			startToken := token

			const total = 250
			for i := range total {
				txn := "txn" + strconv.Itoa(i)
				msg := map[id.UserID]map[id.DeviceID]map[string]any{bob.UserID: {bob.DeviceID: {"seq": i}}}
				sendToDevice(t, alice, txn, msg)
				if i%7 == 0 {
					sendToDevice(t, alice, txn, msg) // a retry: nothing new
				}
			}
			// A transaction id reused with another body is still a retry.
			sendToDevice(t, alice, "txn3", map[id.UserID]map[id.DeviceID]map[string]any{bob.UserID: {bob.DeviceID: {"seq": 9999}}})

			var got []int
			page := func(since string) syncResp {
				t.Helper()
				start := time.Now()
				// A long-poll: with messages waiting it must answer at once.
				r := h.sync(t, bob, url.Values{"since": {since}, "timeout": {"20000"}})
				if took := time.Since(start); took > 10*time.Second {
					t.Fatalf("a sync with messages waiting took %s", took)
				}
				for _, ev := range r.toDevice(t) {
					if ev.Type != testEventType.Type || ev.Sender != alice.UserID.String() {
						t.Fatalf("event %+v", ev)
					}
				}
				return r
			}
			first := page(token)
			if n := len(first.toDevice(t)); n != 100 {
				t.Fatalf("first page has %d messages, want 100", n)
			}
			// The client lost the answer and reconnects with the same
			// token: the same page again, nothing deleted yet.
			again := page(token)
			if !slices.Equal(seqs(again.toDevice(t)), seqs(first.toDevice(t))) {
				t.Fatalf("repeated token: %v, want %v", seqs(again.toDevice(t)), seqs(first.toDevice(t)))
			}
			got = append(got, seqs(again.toDevice(t))...)
			second := page(again.NextBatch)
			got = append(got, seqs(second.toDevice(t))...)
			token = second.NextBatch

			// Stop, then start on the same database and data directory.
			if err := srv.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			srv = hstest.Start(t, cfg)
			h = hs{srv}
			bob.HomeserverURL, _ = url.Parse(srv.ClientURL)
			for range 5 {
				r := h.syncSince(t, bob, token)
				evs := r.toDevice(t)
				got = append(got, seqs(evs)...)
				token = r.NextBatch
				if len(evs) == 0 {
					break
				}
			}
			want := make([]int, total)
			for i := range want {
				want[i] = i
			}
			if !slices.Equal(got, want) {
				t.Fatalf("bob got %d messages %v, want 0..%d once each in order", len(got), got, total-1)
			}
			// Everything acknowledged is gone: neither the next sync nor a
			// client going back to the first token gets any of it again.
			if evs := h.syncSince(t, bob, token).toDevice(t); len(evs) != 0 {
				t.Errorf("after the last page: %v", seqs(evs))
			}
			if evs := h.syncSince(t, bob, startToken).toDevice(t); len(evs) != 0 {
				t.Errorf("acknowledged messages served again from the first token: %v", seqs(evs))
			}
		})
	}
}

// TestToDeviceDelivery: "*" reaches every device the user has, unknown
// devices and users are dropped without an error, messages to another
// server's users are accepted (and dropped until federation), the
// recipient's long-poll wakes, and each device's inbox is its own.
func TestToDeviceDelivery(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		bob := h.user(t, "bob")
		bob2, err := mautrix.NewClient(h.ClientURL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		login, err := bob2.Login(context.Background(), &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"}, Password: "password", StoreCredentials: true})
		if err != nil {
			t.Fatal(err)
		}
		tok1 := h.sync(t, bob, url.Values{"timeout": {"0"}}).NextBatch
		tok2 := h.sync(t, bob2, url.Values{"timeout": {"0"}}).NextBatch

		waiting := h.syncAsync(t, bob, tok1, 20*time.Second)
		stillWaiting(t, waiting, "before any message")
		_, err = alice.SendToDevice(context.Background(), testEventType, &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
			bob.UserID:                {"*": {Raw: map[string]any{"seq": 1}}, "NOSUCHDEVICE": {Raw: map[string]any{"seq": 2}}},
			"@nobody:localhost":       {"*": {Raw: map[string]any{"seq": 3}}},
			"@someone:remote.example": {"DEV": {Raw: map[string]any{"seq": 4}}},
			alice.UserID:              {alice.DeviceID: {Raw: map[string]any{"seq": 5}}},
		}})
		if err != nil {
			t.Fatalf("SendToDevice: %v", err)
		}
		r := await(t, waiting, 10*time.Second)
		if got := seqs(r.resp.toDevice(t)); !slices.Equal(got, []int{1}) {
			t.Errorf("bob's first device got %v", got)
		}
		if got := seqs(h.syncSince(t, bob2, tok2).toDevice(t)); !slices.Equal(got, []int{1}) {
			t.Errorf("bob's second device (%s) got %v", login.DeviceID, got)
		}
		// An initial sync serves what waits too.
		if got := seqs(h.sync(t, alice, url.Values{"timeout": {"0"}}).toDevice(t)); !slices.Equal(got, []int{5}) {
			t.Errorf("alice's own device got %v", got)
		}
	})
}

// TestSendToDeviceErrors: bad bodies get the spec's errors; nothing is
// stored by a refused request.
func TestSendToDeviceErrors(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		bob := h.user(t, "bob")
		token := h.sync(t, bob, url.Values{"timeout": {"0"}}).NextBatch
		put := func(cli *mautrix.Client, txn, body string) reply {
			req, _ := http.NewRequest(http.MethodPut, h.ClientURL+"/_matrix/client/v3/sendToDevice/m.test/"+txn, strings.NewReader(body))
			if cli != nil {
				req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var b json.RawMessage
			_ = json.NewDecoder(res.Body).Decode(&b)
			return reply{status: res.StatusCode, body: b}
		}
		bobDev := fmt.Sprintf(`{"messages":{%q:{%q:`, bob.UserID, bob.DeviceID)
		for _, c := range []struct {
			name, body string
			status     int
			code       string
		}{
			{"not JSON", `{"messages":`, 400, "M_NOT_JSON"},
			{"no messages", `{}`, 400, "M_MISSING_PARAM"},
			{"messages not an object", `{"messages":[]}`, 400, "M_BAD_JSON"},
			{"content not an object", bobDev + `"text"}}}`, 400, "M_BAD_JSON"},
			{"not a user id", `{"messages":{"bob":{"D":{}}}}`, 400, "M_INVALID_PARAM"},
		} {
			wantError(t, c.name, put(alice, "bad-"+c.name, c.body), c.status, c.code)
		}
		wantError(t, "no token", put(nil, "t", bobDev+`{}}}}`), 401, "M_MISSING_TOKEN")
		if r := put(alice, "ok", bobDev+`{"seq":7}}}}`); r.status != 200 || string(r.body) != "{}" {
			t.Errorf("good request: %d %s", r.status, r.body)
		}
		if got := seqs(h.syncSince(t, bob, token).toDevice(t)); !slices.Equal(got, []int{7}) {
			t.Errorf("bob got %v, want only the good request's message", got)
		}
	})
}

// signedDeviceKeys makes a device's self-signed device keys.
func signedDeviceKeys(t *testing.T, cli *mautrix.Client) *mautrix.DeviceKeys {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	edKey := base64.RawStdEncoding.EncodeToString(pub)
	keys := mautrix.KeyMap{
		id.NewDeviceKeyID(id.KeyAlgorithmEd25519, cli.DeviceID):    edKey,
		id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, cli.DeviceID): "curve" + cli.DeviceID.String(),
	}
	algs := []id.Algorithm{id.AlgorithmOlmV1, id.AlgorithmMegolmV1}
	raw, _ := json.Marshal(map[string]any{"user_id": cli.UserID, "device_id": cli.DeviceID, "algorithms": algs, "keys": keys})
	signed, err := gomatrixserverlib.SignJSON(cli.UserID.String(), gomatrixserverlib.KeyID("ed25519:"+cli.DeviceID.String()), priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Signatures map[id.UserID]map[id.KeyID]string `json:"signatures"`
	}
	_ = json.Unmarshal(signed, &s)
	return &mautrix.DeviceKeys{UserID: cli.UserID, DeviceID: cli.DeviceID, Algorithms: algs, Keys: keys, Signatures: s.Signatures}
}

// keyChanges calls GET /keys/changes (mautrix's GetKeyChanges uses POST,
// which the spec does not define).
func (h hs) keyChanges(t *testing.T, cli *mautrix.Client, from, to string) deviceListsResp {
	t.Helper()
	var r deviceListsResp
	h.getJSON(t, cli, "/_matrix/client/v3/keys/changes", url.Values{"from": {from}, "to": {to}}, &r)
	return r
}

// TestDeviceListsSync: bob's new device keys put him in the
// device_lists.changed of alice, who shares a room with him, in one sync
// only (and wake her long-poll); his leaving their only room puts him in
// left; /keys/changes agrees; an initial sync has no device_lists.
func TestDeviceListsSync(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		bob := h.user(t, "bob")
		carol := h.user(t, "carol") // shares no room with alice
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, bob, roomID)
		initial := h.sync(t, alice, url.Values{"timeout": {"0"}})
		if initial.DeviceLists != nil {
			t.Errorf("initial sync has device_lists %s", initial.DeviceLists)
		}
		t0 := initial.NextBatch

		waiting := h.syncAsync(t, alice, t0, 20*time.Second)
		stillWaiting(t, waiting, "before any key upload")
		if _, err := bob.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: signedDeviceKeys(t, bob)}); err != nil {
			t.Fatalf("bob uploads keys: %v", err)
		}
		if _, err := carol.UploadKeys(ctx, &mautrix.ReqUploadKeys{DeviceKeys: signedDeviceKeys(t, carol)}); err != nil {
			t.Fatalf("carol uploads keys: %v", err)
		}
		r := await(t, waiting, 10*time.Second)
		t1 := r.resp.NextBatch
		dl := r.resp.deviceLists(t)
		if r.resp.DeviceLists == nil {
			// The wake-up may have come before carol's upload committed:
			// the change is then in the next sync.
			r2 := h.syncSince(t, alice, t1)
			dl, t1 = r2.deviceLists(t), r2.NextBatch
		}
		if !slices.Equal(dl.Changed, []string{bob.UserID.String()}) || len(dl.Left) != 0 {
			t.Errorf("alice's device_lists after bob's upload: %+v", dl)
		}
		// Once: the next sync does not repeat it.
		next := h.syncSince(t, alice, t1)
		if next.DeviceLists != nil {
			t.Errorf("device_lists repeated: %s", next.DeviceLists)
		}
		if kc := h.keyChanges(t, alice, t0, next.NextBatch); !slices.Equal(kc.Changed, []string{bob.UserID.String()}) || len(kc.Left) != 0 {
			t.Errorf("/keys/changes from before the upload: %+v", kc)
		}
		if kc := h.keyChanges(t, alice, next.NextBatch, next.NextBatch); len(kc.Changed) != 0 || len(kc.Left) != 0 {
			t.Errorf("/keys/changes from after the upload: %+v", kc)
		}
		// Uploading the same keys again changes nothing.
		t2 := next.NextBatch

		leave(t, bob, roomID)
		r3 := h.syncSince(t, alice, t2)
		if dl := r3.deviceLists(t); !slices.Equal(dl.Left, []string{bob.UserID.String()}) || len(dl.Changed) != 0 {
			t.Errorf("alice's device_lists after bob left: %+v", dl)
		}
		if kc := h.keyChanges(t, alice, t2, r3.NextBatch); !slices.Equal(kc.Left, []string{bob.UserID.String()}) {
			t.Errorf("/keys/changes after bob left: %+v", kc)
		}
		// Bob's own sync tells him about alice: they no longer share a room.
		if r := h.syncSince(t, bob, t2); !slices.Contains(r.deviceLists(t).Left, alice.UserID.String()) {
			t.Errorf("bob's device_lists after leaving: %s", r.DeviceLists)
		}

		// Errors of /keys/changes.
		wantError(t, "no from", h.get(t, alice, "/_matrix/client/v3/keys/changes", nil), 400, "M_MISSING_PARAM")
		wantError(t, "bad from", h.get(t, alice, "/_matrix/client/v3/keys/changes", url.Values{"from": {"nonsense"}}), 400, "M_INVALID_PARAM")
		wantError(t, "bad to", h.get(t, alice, "/_matrix/client/v3/keys/changes", url.Values{"from": {t0}, "to": {"x"}}), 400, "M_INVALID_PARAM")
		wantError(t, "no token", h.get(t, nil, "/_matrix/client/v3/keys/changes", url.Values{"from": {t0}}), 401, "M_MISSING_TOKEN")
	})
}

// TestDeviceListsOnJoinAndDelete: when bob joins a room alice is in, he is
// in her changed (his devices may have changed while they shared no room,
// spec note); deleting one of his devices puts him there again, and so
// does uploading cross-signing keys.
func TestDeviceListsOnJoinAndDelete(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, h hs) {
		ctx := context.Background()
		alice := h.user(t, "alice")
		bob := h.user(t, "bob")
		roomID := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		t0 := h.sync(t, alice, url.Values{"timeout": {"0"}}).NextBatch
		join(t, bob, roomID)
		r := h.syncSince(t, alice, t0)
		if dl := r.deviceLists(t); !slices.Equal(dl.Changed, []string{bob.UserID.String()}) {
			t.Errorf("after bob joined: %+v", dl)
		}
		// Bob, newly joined, gets alice.
		bobInitial := h.sync(t, bob, url.Values{"timeout": {"0"}}).NextBatch

		bob2, err := mautrix.NewClient(h.ClientURL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bob2.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "bob"}, Password: "password", StoreCredentials: true}); err != nil {
			t.Fatal(err)
		}
		t1 := r.NextBatch
		if _, err := bob2.Logout(ctx); err != nil {
			t.Fatal(err)
		}
		if dl := h.syncSince(t, alice, t1).deviceLists(t); !slices.Equal(dl.Changed, []string{bob.UserID.String()}) {
			t.Errorf("after bob's device was deleted: %+v", dl)
		}
		// Bob's other device learns of his own change.
		if dl := h.syncSince(t, bob, bobInitial).deviceLists(t); !slices.Contains(dl.Changed, bob.UserID.String()) {
			t.Errorf("bob's own device_lists after deleting a device: %+v", dl)
		}

		// New cross-signing keys change bob's device list too.
		t2 := h.syncSince(t, alice, t1).NextBatch
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		master := base64.RawStdEncoding.EncodeToString(pub)
		u := bob.BuildClientURL("v3", "keys", "device_signing", "upload")
		if _, err := bob.MakeRequest(ctx, http.MethodPost, u, map[string]any{"master_key": map[string]any{
			"user_id": bob.UserID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + master: master}}}, nil); err != nil {
			t.Fatalf("upload cross-signing keys: %v", err)
		}
		if dl := h.syncSince(t, alice, t2).deviceLists(t); !slices.Equal(dl.Changed, []string{bob.UserID.String()}) {
			t.Errorf("after bob's cross-signing upload: %+v", dl)
		}
	})
}

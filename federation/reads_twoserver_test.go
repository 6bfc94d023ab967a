package federation_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/weft-chat/weft/federation"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestTwoServersRoomReads has server A read a room of server B over the
// real federation API, TLS on loopback, signed requests verified by B.
//
// Federated joins do not exist yet, so A's user is put into B's room the
// only way a room of B can gain a member of A today: a second roomserver
// on B's database, signing with B's key, takes the join as input, as a
// second Weft process would (the roomserver checks the auth rules, not
// the sender's server). B's own roomserver then sees its cached view of
// the room go stale and rebuilds it on its next event. A's join is thus
// signed by B, not A, which another server would refuse: the test never
// asks A to verify that one event.
func TestTwoServersRoomReads(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			cfgB.Federation.AllowPublicRooms = true
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA, nameB := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName)
			keyA, err := serverkey.LoadOrGenerate(cfgA.SigningKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			fc := a.FederationClient()
			bob := testclient.Register(t, b.ClientURL, "bob")
			aliceID := "@alice:" + string(nameA)

			created, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public", Name: "Bob's room",
				InitialState: []*event.Event{{Type: event.StateHistoryVisibility, StateKey: new(string),
					Content: event.Content{Raw: map[string]any{"history_visibility": "joined"}}}}})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID.String()
			text := func(body string) string {
				t.Helper()
				resp, err := bob.SendText(ctx, created.RoomID, body)
				if err != nil {
					t.Fatal(err)
				}
				return resp.EventID.String()
			}
			m1, m2 := text("before one"), text("before two")

			// A has nobody in the room: 403 everywhere.
			_, err = fc.LookupStateIDs(ctx, nameA, nameB, roomID, m2)
			if !isHTTPError(err, 403, "M_FORBIDDEN") {
				t.Fatalf("state_ids before joining: %v", err)
			}
			if _, err = fc.GetEvent(ctx, nameA, nameB, m1); !isHTTPError(err, 403, "M_FORBIDDEN") {
				t.Fatalf("event before joining: %v", err)
			}
			if _, err = fc.Backfill(ctx, nameA, nameB, roomID, 10, []string{m2}); !isHTTPError(err, 403, "M_FORBIDDEN") {
				t.Fatalf("backfill before joining: %v", err)
			}
			if code, _ := signedRequest(t, fc, keyA, nameB, "GET", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape(roomID)+"?ts=0&dir=f", nil); code != 403 {
				t.Fatalf("timestamp_to_event before joining: %d", code)
			}
			if _, err = fc.LookupStateIDs(ctx, nameA, nameB, "!unknown:"+string(nameB), m2); !isHTTPError(err, 404, "M_NOT_FOUND") {
				t.Fatalf("unknown room: %v", err)
			}

			// Alice of A joins B's room (see above).
			keyB, err := serverkey.LoadOrGenerate(cfgB.SigningKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			dbB := openDB(t, cfgB.Database.URL)
			second := roomserver.New(dbB, nil, cfgB.ServerName, keyB, slog.New(slog.NewTextHandler(io.Discard, nil)))
			joined, err := second.HandleInput(ctx, roomserver.InputRequest{RoomID: roomID, NewEvent: &roomserver.NewEvent{
				Sender: aliceID, Type: "m.room.member", StateKey: &aliceID, Content: json.RawMessage(`{"membership":"join"}`)}})
			if err != nil {
				t.Fatalf("alice joins: %v", err)
			}
			join := joined.EventIDs[0]
			m3 := text("after")

			version, err := dbB.Room(ctx, roomID)
			if err != nil {
				t.Fatal(err)
			}
			verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version.Version))
			if err != nil {
				t.Fatal(err)
			}
			// parse checks a served PDU as A would: its hashes (a redacted
			// PDU fails the content hash and is taken as redacted) and, for
			// bob's events, B's signature through A's key ring.
			parse := func(raw []byte) gomatrixserverlib.PDU {
				t.Helper()
				ev, err := verImpl.NewEventFromUntrustedJSON(raw)
				if err != nil {
					t.Fatalf("served PDU does not parse: %v\n%s", err, raw)
				}
				if string(ev.SenderID()) == bob.UserID.String() {
					if err := gomatrixserverlib.VerifyEventSignatures(ctx, ev, a.KeyRing(), func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
						return spec.NewUserID(string(s), true)
					}); err != nil {
						t.Errorf("B's signature on %s does not verify: %v", ev.EventID(), err)
					}
				}
				return ev
			}
			body := func(ev gomatrixserverlib.PDU) any {
				var c map[string]any
				_ = json.Unmarshal(ev.Content(), &c)
				return c["body"]
			}

			// /event: before alice's join redacted (history is joined-only),
			// after it whole.
			txn, err := fc.GetEvent(ctx, nameA, nameB, m1)
			if err != nil || len(txn.PDUs) != 1 || txn.Origin != nameB {
				t.Fatalf("event m1: %+v %v", txn, err)
			}
			if ev := parse(txn.PDUs[0]); ev.EventID() != m1 || body(ev) != nil {
				t.Errorf("m1 served as %s: %s", ev.EventID(), ev.Content())
			}
			txn, err = fc.GetEvent(ctx, nameA, nameB, m3)
			if err != nil || len(txn.PDUs) != 1 {
				t.Fatalf("event m3: %+v %v", txn, err)
			}
			if ev := parse(txn.PDUs[0]); ev.EventID() != m3 || body(ev) != "after" {
				t.Errorf("m3 served as %s: %s", ev.EventID(), ev.Content())
			}
			if _, err := fc.GetEvent(ctx, nameA, nameB, "$nope"); !isHTTPError(err, 404, "M_NOT_FOUND") {
				t.Errorf("unknown event: %v", err)
			}

			// /state_ids and /state at m3 hold alice's join.
			ids, err := fc.LookupStateIDs(ctx, nameA, nameB, roomID, m3)
			if err != nil {
				t.Fatalf("state_ids: %v", err)
			}
			if !slices.Contains(ids.StateEventIDs, join) || len(ids.AuthEventIDs) == 0 {
				t.Errorf("state_ids at m3: %+v", ids)
			}
			state, err := fc.LookupState(ctx, nameA, nameB, roomID, m3, verImpl.Version())
			if err != nil {
				t.Fatalf("state: %v", err)
			}
			var stateIDs []string
			for _, raw := range state.StateEvents {
				stateIDs = append(stateIDs, parse(raw).EventID())
			}
			slices.Sort(stateIDs)
			want := slices.Clone(ids.StateEventIDs)
			slices.Sort(want)
			if !slices.Equal(stateIDs, want) || len(state.AuthEvents) != len(ids.AuthEventIDs) {
				t.Errorf("state %v (auth %d), state_ids %v (auth %d)", stateIDs, len(state.AuthEvents), want, len(ids.AuthEventIDs))
			}
			for _, raw := range state.AuthEvents {
				parse(raw)
			}
			if _, err := fc.LookupStateIDs(ctx, nameA, nameB, roomID, "$nope"); !isHTTPError(err, 404, "M_NOT_FOUND") {
				t.Errorf("state_ids at an unknown event: %v", err)
			}

			// /event_auth of m3: bob's join among its auth events.
			auth, err := fc.GetEventAuth(ctx, nameA, nameB, verImpl.Version(), roomID, m3)
			if err != nil || len(auth.AuthEvents) == 0 {
				t.Fatalf("event_auth: %+v %v", auth, err)
			}
			var authTypes []string
			for _, raw := range auth.AuthEvents {
				authTypes = append(authTypes, parse(raw).Type())
			}
			if !slices.Contains(authTypes, "m.room.member") || !slices.Contains(authTypes, "m.room.power_levels") {
				t.Errorf("event_auth types %v", authTypes)
			}

			// /backfill from m3: newest first, back to the create event.
			back, err := fc.Backfill(ctx, nameA, nameB, roomID, 100, []string{m3})
			if err != nil {
				t.Fatalf("backfill: %v", err)
			}
			var order []string
			for _, raw := range back.PDUs {
				ev := parse(raw)
				order = append(order, ev.EventID())
				if (ev.EventID() == m1 || ev.EventID() == m2) && body(ev) != nil {
					t.Errorf("%s served unredacted by backfill", ev.EventID())
				}
			}
			if len(order) < 5 || !slices.Equal(order[:4], []string{m3, join, m2, m1}) || parse(back.PDUs[len(back.PDUs)-1]).Type() != "m.room.create" {
				t.Errorf("backfill order %v", order)
			}
			back, err = fc.Backfill(ctx, nameA, nameB, roomID, 2, []string{m3})
			if err != nil || len(back.PDUs) != 2 {
				t.Errorf("backfill limit 2: %d %v", len(back.PDUs), err)
			}

			// /get_missing_events between m1 and m3.
			missing, err := fc.LookupMissingEvents(ctx, nameA, nameB, roomID, fclient.MissingEvents{
				Limit: 10, EarliestEvents: []string{m1}, LatestEvents: []string{m3}}, verImpl.Version())
			if err != nil {
				t.Fatalf("get_missing_events: %v", err)
			}
			var got []string
			for _, raw := range missing.Events {
				got = append(got, parse(raw).EventID())
			}
			if !slices.Equal(got, []string{m2, join}) {
				t.Errorf("missing events %v, want [%s %s]", got, m2, join)
			}

			// /timestamp_to_event.
			code, raw := signedRequest(t, fc, keyA, nameB, "GET", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape(roomID)+"?ts=99999999999999&dir=b", nil)
			var tte struct {
				EventID string `json:"event_id"`
				TS      int64  `json:"origin_server_ts"`
			}
			if json.Unmarshal(raw, &tte); code != 200 || tte.EventID != m3 || tte.TS == 0 {
				t.Errorf("timestamp_to_event: %d %s", code, raw)
			}
			if code, _ := signedRequest(t, fc, keyA, nameB, "GET", "/_matrix/federation/v1/timestamp_to_event/"+url.PathEscape(roomID)+"?ts=0&dir=sideways", nil); code != 400 {
				t.Errorf("timestamp_to_event with a bad dir: %d", code)
			}

			// /publicRooms: B shares its directory (allow_public_rooms), A
			// does not (the default).
			pub, err := fc.GetPublicRooms(ctx, nameA, nameB, 0, "", false, "")
			if err != nil || len(pub.Chunk) != 1 || pub.Chunk[0].RoomID != roomID || pub.Chunk[0].Name != "Bob's room" || pub.Chunk[0].JoinedMembersCount != 2 {
				t.Errorf("B's public rooms: %+v %v", pub, err)
			}
			pub, err = fc.GetPublicRoomsFiltered(ctx, nameA, nameB, 10, "", "nothing like it", false, "")
			if err != nil || len(pub.Chunk) != 0 {
				t.Errorf("B's public rooms, filtered: %+v %v", pub, err)
			}
			if _, err := b.FederationClient().GetPublicRooms(ctx, nameB, nameA, 0, "", false, ""); !isHTTPError(err, 403, "M_FORBIDDEN") {
				t.Errorf("A's public rooms: %v", err)
			}

			// /hierarchy of a public space holding the room.
			space, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Bob's space", CreationContent: map[string]any{"type": "m.space"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.SendStateEvent(ctx, space.RoomID, event.StateSpaceChild, roomID, map[string]any{"via": []string{string(nameB)}}); err != nil {
				t.Fatal(err)
			}
			h, err := fc.RoomHierarchy(ctx, nameA, nameB, space.RoomID.String(), false)
			if err != nil {
				t.Fatalf("hierarchy: %v", err)
			}
			if h.Room.RoomID != space.RoomID.String() || h.Room.RoomType != "m.space" || len(h.Room.ChildrenState) != 1 ||
				len(h.Children) != 1 || h.Children[0].RoomID != roomID || len(h.InaccessibleChildren) != 0 {
				t.Errorf("hierarchy: %+v", h)
			}
			// (Not through fc.RoomHierarchy, which retries a 404 on an
			// unstable path.)
			if code, raw := signedRequest(t, fc, keyA, nameB, "GET", "/_matrix/federation/v1/hierarchy/"+url.PathEscape("!unknown:"+string(nameB)), nil); code != 404 || !bytes.Contains(raw, []byte("M_NOT_FOUND")) {
				t.Errorf("hierarchy of an unknown room: %d %s", code, raw)
			}

			// Bob's devices and keys.
			bobID := bob.UserID.String()
			dev, master, self, user := newPair(t), newPair(t), newPair(t), newPair(t)
			devID := bob.DeviceID.String()
			clientPost(t, bob, []any{"keys", "upload"}, map[string]any{
				"device_keys": dev.sign(t, bobID, "ed25519:"+devID, map[string]any{"user_id": bobID, "device_id": devID,
					"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
					"keys":       map[string]string{"ed25519:" + devID: dev.pub, "curve25519:" + devID: newPair(t).pub}}),
				"one_time_keys": map[string]any{"signed_curve25519:AAAA": dev.sign(t, bobID, "ed25519:"+devID, map[string]any{"key": "one"})},
				"fallback_keys": map[string]any{"signed_curve25519:FFFF": dev.sign(t, bobID, "ed25519:"+devID, map[string]any{"key": "fb", "fallback": true})},
			})
			csk := func(usage string, k keyPair) any {
				obj := map[string]any{"user_id": bobID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
				if usage == "master" {
					return obj
				}
				return master.sign(t, bobID, "ed25519:"+master.pub, obj)
			}
			clientPost(t, bob, []any{"keys", "device_signing", "upload"}, map[string]any{"master_key": csk("master", master),
				"self_signing_key": csk("self_signing", self), "user_signing_key": csk("user_signing", user)})

			// The stream_id is that of B's latest device-list update about
			// bob, which B's sender makes right after the uploads.
			var devices fclient.RespUserDevices
			for deadline := time.Now().Add(10 * time.Second); devices.StreamID == 0 && time.Now().Before(deadline); {
				if devices, err = fc.GetUserDevices(ctx, nameA, nameB, bobID); err != nil {
					t.Fatalf("user/devices: %v", err)
				}
			}
			if devices.UserID != bobID || devices.StreamID == 0 || len(devices.Devices) != 1 || devices.Devices[0].DeviceID != devID ||
				devices.Devices[0].Keys.Keys[gomatrixserverlib.KeyID("ed25519:"+devID)].Encode() != dev.pub || devices.MasterKey == nil || devices.SelfSigningKey == nil {
				t.Errorf("user/devices: %+v", devices)
			}
			if _, err := fc.GetUserDevices(ctx, nameA, nameB, aliceID); !isHTTPError(err, 400, "M_INVALID_PARAM") {
				t.Errorf("user/devices of a user of A: %v", err)
			}
			keys, err := fc.QueryKeys(ctx, nameA, nameB, map[string][]string{bobID: {}})
			if err != nil {
				t.Fatalf("user/keys/query: %v", err)
			}
			if _, ok := keys.DeviceKeys[bobID][devID]; !ok || len(keys.MasterKeys[bobID].Keys) != 1 || len(keys.SelfSigningKeys[bobID].Keys) != 1 {
				t.Errorf("user/keys/query: %+v", keys)
			}
			for i, want := range []string{"signed_curve25519:AAAA", "signed_curve25519:FFFF", "signed_curve25519:FFFF"} {
				claimed, err := fc.ClaimKeys(ctx, nameA, nameB, map[string]map[string]string{bobID: {devID: "signed_curve25519"}})
				if err != nil {
					t.Fatalf("user/keys/claim: %v", err)
				}
				if _, ok := claimed.OneTimeKeys[bobID][devID][want]; !ok {
					t.Errorf("claim %d: %+v, want %s", i, claimed.OneTimeKeys, want)
				}
			}

			// OpenID: bob's token, exchanged at B by a service (unsigned).
			tok, err := bob.RequestOpenIDToken(ctx)
			if err != nil {
				t.Fatalf("request_token: %v", err)
			}
			if tok.TokenType != "Bearer" || tok.MatrixServerName != string(nameB) || tok.ExpiresIn != 3600 || tok.AccessToken == "" {
				t.Errorf("openid token %+v", tok)
			}
			code, raw = plainRequest(t, fc, nameB, "/_matrix/federation/v1/openid/userinfo?access_token="+url.QueryEscape(tok.AccessToken))
			var info struct {
				Sub string `json:"sub"`
			}
			if json.Unmarshal(raw, &info); code != 200 || info.Sub != bobID {
				t.Errorf("userinfo: %d %s", code, raw)
			}
			code, raw = plainRequest(t, fc, nameB, "/_matrix/federation/v1/openid/userinfo?access_token=nope")
			if code != 401 || !bytes.Contains(raw, []byte("M_UNKNOWN_TOKEN")) {
				t.Errorf("userinfo with a bad token: %d %s", code, raw)
			}
			// The OpenID token is no access token.
			other, _ := mautrix.NewClient(b.ClientURL, bob.UserID, tok.AccessToken)
			if _, err := other.Whoami(ctx); err == nil {
				t.Error("an OpenID token works as an access token")
			}
			_, err = bob.MakeRequest(ctx, http.MethodPost, bob.BuildClientURL("v3", "user", aliceID, "openid", "request_token"), map[string]any{}, nil)
			if !isMautrixError(err, 403, "M_FORBIDDEN") {
				t.Errorf("request_token for another user: %v", err)
			}
		})
	}
}

// signedRequest sends a request signed by A's key from A's client to
// dest, and returns the status and body.
func signedRequest(t *testing.T, fc *federation.Client, key serverkey.Key, dest spec.ServerName, method, path string, content any) (int, []byte) {
	t.Helper()
	fr := fclient.NewFederationRequest(method, fc.Origin(), dest, path)
	if content != nil {
		if err := fr.SetContent(content); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.Sign(fc.Origin(), key.ID, key.Private); err != nil {
		t.Fatal(err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	return doRaw(t, fc, req)
}

// plainRequest sends an unsigned GET to dest's federation listener.
func plainRequest(t *testing.T, fc *federation.Client, dest spec.ServerName, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "matrix://"+string(dest)+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return doRaw(t, fc, req)
}

func doRaw(t *testing.T, fc *federation.Client, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := fc.FederationClient.(rawDoer).DoHTTPRequest(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// clientPost POSTs a JSON body to the client API as cli; it must succeed.
func clientPost(t *testing.T, cli *mautrix.Client, path []any, body any) {
	t.Helper()
	if _, err := cli.MakeRequest(context.Background(), http.MethodPost, cli.BuildClientURL(append([]any{"v3"}, path...)...), body, nil); err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
}

func isMautrixError(err error, status int, errcode string) bool {
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.Response == nil || he.RespError == nil {
		return false
	}
	return he.Response.StatusCode == status && he.RespError.ErrCode == errcode
}

// keyPair signs JSON as the spec's "Signing JSON".
type keyPair struct {
	pub  string
	priv ed25519.PrivateKey
}

func newPair(t *testing.T) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

func (k keyPair) sign(t *testing.T, userID, keyID string, obj any) json.RawMessage {
	t.Helper()
	raw, _ := json.Marshal(obj)
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), k.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// TestDeviceListSender: a local user's changes become updates for the
// servers sharing a room with them: a device with new keys an
// m.device_list_update (without its display name), new cross-signing
// keys an m.signing_key_update, a deleted device a deleted update, in one
// chain of stream_ids that GET /user/devices serves; a pass with nothing
// new sends nothing, and remote users' changes are not sent.
func TestDeviceListSender(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		sharedRoom(t, db)
		if err := db.CreateAccount(ctx, sql.Account{Localpart: "alice"}); err != nil {
			t.Fatal(err)
		}
		keys := e2ee.New(db, string(ours))
		upload := func(deviceID string) {
			t.Helper()
			if err := db.UpsertDevice(ctx, "alice", deviceID, "Alice's "+deviceID); err != nil {
				t.Fatal(err)
			}
			dev := newKeyPair(t)
			signed := dev.sign(t, fedAlice, "ed25519:"+deviceID, map[string]any{
				"user_id": fedAlice, "device_id": deviceID, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
				"keys": map[string]string{"ed25519:" + deviceID: dev.pub, "curve25519:" + deviceID: "curve"},
			})
			if _, err := keys.UploadKeys(ctx, e2ee.Caller{UserID: fedAlice, Localpart: "alice", DeviceID: deviceID},
				e2ee.Upload{DeviceKeys: signed}); err != nil {
				t.Fatal(err)
			}
		}
		s := NewDeviceListSender(db, unstartedQueue(t, db), keys, ours, discard())
		pass := func() []string {
			t.Helper()
			for {
				more, err := s.pass(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !more {
					break
				}
			}
			var out []string
			for _, line := range drainQueue(t, db, fedRemote) {
				var c struct {
					UserID   string          `json:"user_id"`
					DeviceID string          `json:"device_id"`
					StreamID int64           `json:"stream_id"`
					PrevID   []int64         `json:"prev_id"`
					Deleted  bool            `json:"deleted"`
					Keys     map[string]any  `json:"keys"`
					Master   json.RawMessage `json:"master_key"`
					Self     json.RawMessage `json:"self_signing_key"`
				}
				typ, content, _ := strings.Cut(line, " ")
				if err := json.Unmarshal([]byte(content), &c); err != nil {
					t.Fatal(err)
				}
				switch typ {
				case DeviceListUpdateEDUType:
					if c.PrevID == nil {
						t.Errorf("update without a prev_id list: %s", content)
					}
					if c.Keys != nil && (c.Keys["device_id"] != c.DeviceID || c.Keys["unsigned"] != nil) {
						t.Errorf("update keys %v", c.Keys)
					}
					out = append(out, fmt.Sprintf("%s %s %d %v deleted=%t keys=%t", c.UserID, c.DeviceID, c.StreamID, c.PrevID, c.Deleted, c.Keys != nil))
				case SigningKeyUpdateEDUType:
					out = append(out, fmt.Sprintf("signing %s master=%t self=%t", c.UserID, c.Master != nil, c.Self != nil))
				default:
					t.Errorf("unexpected EDU %s", line)
				}
			}
			return out
		}
		expect := func(want ...string) {
			t.Helper()
			got := pass()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("sent %q, want %q", got, want)
			}
		}

		upload("PHONE")
		expect(fedAlice + " PHONE 1 [] deleted=false keys=true")
		expect()

		upload("LAPTOP")
		master, self := newKeyPair(t), newKeyPair(t)
		csk := func(usage string, k keyPair) json.RawMessage {
			obj := map[string]any{"user_id": fedAlice, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
			if usage == "master" {
				return jsonOf(obj)
			}
			return master.sign(t, fedAlice, "ed25519:"+master.pub, obj)
		}
		if err := keys.UploadCrossSigningKeys(ctx, e2ee.Caller{UserID: fedAlice, Localpart: "alice", DeviceID: "PHONE"},
			e2ee.CrossSigningUpload{MasterKey: csk("master", master), SelfSigningKey: csk("self_signing", self)},
			func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		expect(fedAlice+" LAPTOP 2 [1] deleted=false keys=true", "signing "+fedAlice+" master=true self=true")

		err := db.WithTx(ctx, func(q *sql.Queries) error {
			if _, err := q.DeleteDevices(ctx, "alice", []string{"PHONE"}); err != nil {
				return err
			}
			_, err := q.DevicesDeleted(ctx, fedAlice, "alice", []string{"PHONE"})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		expect(fedAlice + " PHONE 3 [2] deleted=true keys=false")
		if id, err := db.DeviceListStreamID(ctx, fedAlice); err != nil || id != 3 {
			t.Fatalf("stream id served %d %v", id, err)
		}

		if _, err := db.AddDeviceListChange(ctx, fedBob); err != nil {
			t.Fatal(err)
		}
		expect()
	})
}

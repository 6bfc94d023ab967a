package testclient

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// SignedDeviceKeys makes device keys for cli's device that a server
// accepts: a fresh ed25519 key that signs them (as /keys/upload checks)
// and a placeholder curve25519 key, for tests that need keys to exist but
// encrypt nothing.
func SignedDeviceKeys(t testing.TB, cli *mautrix.Client) *mautrix.DeviceKeys {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := mautrix.KeyMap{
		id.NewDeviceKeyID(id.KeyAlgorithmEd25519, cli.DeviceID):    base64.RawStdEncoding.EncodeToString(pub),
		id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, cli.DeviceID): "curve" + cli.DeviceID.String(),
	}
	algs := []id.Algorithm{id.AlgorithmOlmV1, id.AlgorithmMegolmV1}
	raw, err := json.Marshal(map[string]any{"user_id": cli.UserID, "device_id": cli.DeviceID, "algorithms": algs, "keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gomatrixserverlib.SignJSON(cli.UserID.String(), gomatrixserverlib.KeyID("ed25519:"+cli.DeviceID.String()), priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Signatures map[id.UserID]map[id.KeyID]string `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &s); err != nil {
		t.Fatal(err)
	}
	return &mautrix.DeviceKeys{UserID: cli.UserID, DeviceID: cli.DeviceID, Algorithms: algs, Keys: keys, Signatures: s.Signatures}
}

package federation_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/federation"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
)

func newKeyServer(t *testing.T) (*federation.KeyServer, serverkey.Key) {
	t.Helper()
	current, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	old, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &federation.KeyServer{
		ServerName: "example.org",
		Key:        current,
		Old: []config.OldSigningKey{{
			KeyID:     string(old.ID),
			PublicKey: base64.RawStdEncoding.EncodeToString(old.Public()),
			ExpiredTS: 1_600_000_000_000,
		}},
		Validity: 2 * time.Hour,
	}, old
}

func TestSignedKeys(t *testing.T) {
	ks, old := newKeyServer(t)
	now := time.UnixMilli(1_700_000_000_123)
	body, err := ks.SignedKeys(now)
	if err != nil {
		t.Fatal(err)
	}
	if err := gomatrixserverlib.VerifyJSON("example.org", ks.Key.ID, ks.Key.Public(), body); err != nil {
		t.Fatalf("key document does not verify: %v\n%s", err, body)
	}
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(body, &keys); err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != "example.org" {
		t.Errorf("server_name = %q", keys.ServerName)
	}
	if want := spec.Timestamp(now.Add(2 * time.Hour).UnixMilli()); keys.ValidUntilTS != want {
		t.Errorf("valid_until_ts = %d, want %d", keys.ValidUntilTS, want)
	}
	if len(keys.VerifyKeys) != 1 || !bytes.Equal(keys.VerifyKeys[ks.Key.ID].Key, ks.Key.Public()) {
		t.Errorf("verify_keys = %v, want only %s", keys.VerifyKeys, ks.Key.ID)
	}
	ov, ok := keys.OldVerifyKeys[old.ID]
	if !ok || len(keys.OldVerifyKeys) != 1 {
		t.Fatalf("old_verify_keys = %v, want %s", keys.OldVerifyKeys, old.ID)
	}
	if !bytes.Equal(ov.Key, old.Public()) || ov.ExpiredTS != 1_600_000_000_000 {
		t.Errorf("old key = %+v, want the configured key with expired_ts 1600000000000", ov)
	}
	// The raw JSON uses the spec's field names and unpadded base64.
	var raw map[string]json.RawMessage
	json.Unmarshal(body, &raw)
	for _, f := range []string{"server_name", "verify_keys", "old_verify_keys", "valid_until_ts", "signatures"} {
		if _, ok := raw[f]; !ok {
			t.Errorf("no %s in %s", f, body)
		}
	}
	if !strings.Contains(string(raw["old_verify_keys"]), `"expired_ts":1600000000000`) {
		t.Errorf("old_verify_keys %s lacks expired_ts", raw["old_verify_keys"])
	}
	if strings.Contains(string(raw["verify_keys"]), "=") {
		t.Errorf("verify_keys %s uses padded base64", raw["verify_keys"])
	}

	// The signature is worth something: another key or a changed body fails.
	other, _ := serverkey.Generate()
	if err := gomatrixserverlib.VerifyJSON("example.org", ks.Key.ID, other.Public(), body); err == nil {
		t.Error("verified with the wrong public key")
	}
	tampered := bytes.Replace(body, []byte(`"server_name":"example.org"`), []byte(`"server_name":"evil.org"`), 1)
	if bytes.Equal(tampered, body) {
		t.Fatal("tamper failed")
	}
	if err := gomatrixserverlib.VerifyJSON("example.org", ks.Key.ID, ks.Key.Public(), tampered); err == nil {
		t.Error("a changed document still verifies")
	}
}

func TestSignedKeysWithoutOldKeys(t *testing.T) {
	ks, _ := newKeyServer(t)
	ks.Old = nil
	body, err := ks.SignedKeys(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := gomatrixserverlib.VerifyJSON("example.org", ks.Key.ID, ks.Key.Public(), body); err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	json.Unmarshal(body, &raw)
	// Clients of the key API expect the object, even when empty.
	if string(raw["old_verify_keys"]) != "{}" {
		t.Errorf("old_verify_keys = %s, want {}", raw["old_verify_keys"])
	}
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, []byte) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	res, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, body
}

func TestKeyRoutes(t *testing.T) {
	ks, _ := newKeyServer(t)
	r := mxhttp.NewRouter()
	ks.Routes(r)
	h := mxhttp.Stack{Log: slog.New(slog.DiscardHandler), MaxBodyBytes: 1 << 20}.Wrap(r)

	status, header, body := get(t, h, "/_matrix/key/v2/server")
	if status != 200 || header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /_matrix/key/v2/server: %d %s %s", status, header.Get("Content-Type"), body)
	}
	if err := gomatrixserverlib.VerifyJSON("example.org", ks.Key.ID, ks.Key.Public(), body); err != nil {
		t.Fatalf("served key document does not verify: %v", err)
	}
	var keys gomatrixserverlib.ServerKeys
	json.Unmarshal(body, &keys)
	if keys.ValidUntilTS.Time().Before(time.Now().Add(time.Hour)) {
		t.Errorf("valid_until_ts %d is not about 2h ahead", keys.ValidUntilTS)
	}

	status, _, body = get(t, h, "/_matrix/federation/v1/version")
	var v struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	if status != 200 || json.Unmarshal(body, &v) != nil || v.Server.Name != "Weft" || v.Server.Version == "" {
		t.Fatalf("GET /_matrix/federation/v1/version: %d %s", status, body)
	}
}

func TestWellKnownServer(t *testing.T) {
	for _, delegated := range []string{"", "matrix.example.org:443"} {
		r := mxhttp.NewRouter()
		federation.WellKnownRoutes(r, delegated)
		status, _, body := get(t, r, "/.well-known/matrix/server")
		var got map[string]string
		json.Unmarshal(body, &got)
		if delegated == "" {
			if status != 404 || got["errcode"] != "M_NOT_FOUND" {
				t.Errorf("unset delegation: %d %s, want 404 M_NOT_FOUND", status, body)
			}
			continue
		}
		if status != 200 || got["m.server"] != delegated {
			t.Errorf("delegation %s: %d %s", delegated, status, body)
		}
	}
}

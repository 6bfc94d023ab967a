package federation_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/federation"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

// rawDoer is the part of gomatrixserverlib's client that sends a request
// as built, for requests we sign ourselves.
type rawDoer interface {
	DoHTTPRequest(ctx context.Context, req *http.Request) (*http.Response, error)
}

// TestTwoServers runs two whole Weft servers on loopback, each trusting the
// other's certificate, and has them talk over the real federation API.
func TestTwoServers(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			a, b := servers[0], servers[1]
			nameA, nameB := spec.ServerName(cfgA.ServerName), spec.ServerName(cfgB.ServerName)
			dbA, dbB := openDB(t, cfgA.Database.URL), openDB(t, cfgB.Database.URL)

			bob := testclient.Register(t, b.ClientURL, "bob")
			if err := bob.SetDisplayName(ctx, "Bob the Builder"); err != nil {
				t.Fatal(err)
			}
			alice := testclient.Register(t, a.ClientURL, "alice")
			if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
				t.Fatal(err)
			}

			// A fetches B's key document over TLS; it is self-signed by the
			// key B publishes.
			keysB, err := a.FederationClient().GetServerKeys(ctx, nameB)
			if err != nil {
				t.Fatalf("A fetches B's keys: %v", err)
			}
			if checks, _ := gomatrixserverlib.CheckKeys(nameB, time.Now(), keysB); !checks.AllChecksOK || len(keysB.VerifyKeys) != 1 {
				t.Fatalf("B's key document fails its checks: %+v", checks)
			}
			keyIDB := onlyKeyID(keysB)
			keysA, err := b.FederationClient().GetServerKeys(ctx, nameA)
			if err != nil {
				t.Fatalf("B fetches A's keys: %v", err)
			}
			keyIDA := onlyKeyID(keysA)

			// A asks B for bob's display name: B verifies A's signature,
			// fetching A's keys, and answers.
			prof, err := a.FederationClient().LookupProfile(ctx, nameA, nameB, "@bob:"+string(nameB), "displayname")
			if err != nil {
				t.Fatalf("profile query A -> B: %v", err)
			}
			if prof.DisplayName != "Bob the Builder" {
				t.Fatalf("display name over federation = %q", prof.DisplayName)
			}
			cachedA := serverKeys(t, dbB, nameA)
			if len(cachedA) != 1 {
				t.Fatalf("B's cache of A's keys: %+v", cachedA)
			}
			if docs, _ := dbB.ServerKeyJSONs(ctx, string(nameA)); len(docs) != 1 {
				t.Fatalf("B kept %d documents of A for its notary, want 1", len(docs))
			}
			// A second request is verified from the cache.
			if _, err := a.FederationClient().LookupProfile(ctx, nameA, nameB, "@bob:"+string(nameB), ""); err != nil {
				t.Fatal(err)
			}
			if again := serverKeys(t, dbB, nameA); again[0].FetchedTS != cachedA[0].FetchedTS {
				t.Fatalf("B refetched A's keys for the second request: %+v then %+v", cachedA, again)
			}
			_, err = a.FederationClient().LookupProfile(ctx, nameA, nameB, "@nobody:"+string(nameB), "")
			if !isHTTPError(err, 404, "M_NOT_FOUND") {
				t.Fatalf("unknown user: %v", err)
			}

			// The other way: B resolves A's alias, and A caches B's keys.
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "lobby"})
			if err != nil {
				t.Fatal(err)
			}
			dir, err := b.FederationClient().LookupRoomAlias(ctx, nameB, nameA, "#lobby:"+string(nameA))
			if err != nil {
				t.Fatalf("directory query B -> A: %v", err)
			}
			if dir.RoomID != room.RoomID.String() || len(dir.Servers) != 1 || dir.Servers[0] != nameA {
				t.Fatalf("directory answer %+v, want %s via [%s]", dir, room.RoomID, nameA)
			}
			_, err = b.FederationClient().LookupRoomAlias(ctx, nameB, nameA, "#nothing:"+string(nameA))
			if !isHTTPError(err, 404, "M_NOT_FOUND") {
				t.Fatalf("unknown alias: %v", err)
			}
			if got := serverKeys(t, dbA, nameB); len(got) != 1 || got[0].KeyID != string(keyIDB) {
				t.Fatalf("A's cache of B's keys: %+v", got)
			}

			// A request from A signed with a key A does not publish is
			// refused by B.
			bogus, _ := serverkey.Generate()
			fr := fclient.NewFederationRequest("GET", nameA, nameB, "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape("@bob:"+string(nameB)))
			if err := fr.Sign(nameA, bogus.ID, bogus.Private); err != nil {
				t.Fatal(err)
			}
			req, err := fr.HTTPRequest()
			if err != nil {
				t.Fatal(err)
			}
			resp, err := a.FederationClient().FederationClient.(rawDoer).DoHTTPRequest(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if code, errcode := decodeError(t, resp); code != 401 || errcode != "M_UNAUTHORIZED" {
				t.Fatalf("unknown key: %d %s, want 401 M_UNAUTHORIZED", code, errcode)
			}
			// And one with no signature at all.
			plain, _ := http.NewRequest("GET", "matrix://"+string(nameB)+"/_matrix/federation/v1/query/profile?user_id=x", nil)
			resp, err = a.FederationClient().FederationClient.(rawDoer).DoHTTPRequest(ctx, plain)
			if err != nil {
				t.Fatal(err)
			}
			if code, errcode := decodeError(t, resp); code != 401 || errcode != "M_UNAUTHORIZED" {
				t.Fatalf("unsigned: %d %s, want 401 M_UNAUTHORIZED", code, errcode)
			}

			// B as a notary: A's own keys and B's, each signed by B (and A's
			// by A); a server B cannot reach gets no entry.
			docs, err := a.FederationClient().LookupServerKeys(ctx, nameB, map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{
				{ServerName: nameA}: 0, {ServerName: nameB}: 0, {ServerName: "127.0.0.1:1"}: 0,
			})
			if err != nil {
				t.Fatalf("notary query: %v", err)
			}
			byName := map[spec.ServerName]gomatrixserverlib.ServerKeys{}
			for _, d := range docs {
				byName[d.ServerName] = d
			}
			if len(docs) != 2 || byName[nameA].Raw == nil || byName[nameB].Raw == nil {
				t.Fatalf("notary answered for %d servers: %v", len(docs), byName)
			}
			keyB := ed25519.PublicKey(keysB.VerifyKeys[keyIDB].Key)
			for _, d := range docs {
				if err := gomatrixserverlib.VerifyJSON(string(nameB), keyIDB, keyB, d.Raw); err != nil {
					t.Errorf("notary's document of %s not signed by B: %v", d.ServerName, err)
				}
				if checks, _ := gomatrixserverlib.CheckKeys(d.ServerName, time.Now(), d); !checks.AllChecksOK {
					t.Errorf("notary's document of %s fails the origin's checks: %+v", d.ServerName, checks)
				}
			}
			if _, ok := byName[nameA].VerifyKeys[keyIDA]; !ok {
				t.Errorf("B's answer for A lacks A's key: %+v", byName[nameA].VerifyKeys)
			}
		})
	}
}

// TestFederationTLSAndAddressPolicy checks the outbound client against a
// real server: no connection to loopback unless allowed, no unverified
// certificate unless verification is off.
func TestFederationTLSAndAddressPolicy(t *testing.T) {
	cfg := hstest.FederationConfig(t, "sqlite")
	srv := hstest.StartFederated(t, cfg)[0]
	name := spec.ServerName(cfg.ServerName)
	key, _ := serverkey.Generate()
	client := func(cc federation.ClientConfig) *federation.Client {
		cc.ServerName, cc.Key = "client.example", key
		c, err := federation.NewClient(cc)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	loopback := []string{"127.0.0.0/8"}

	_, err := client(federation.ClientConfig{InsecureSkipVerify: true}).GetServerKeys(ctx, name)
	if err == nil || !strings.Contains(err.Error(), "private or reserved address") {
		t.Fatalf("loopback without allow_private_networks: %v", err)
	}
	_, err = client(federation.ClientConfig{AllowNetworks: loopback}).GetServerKeys(ctx, name)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("self-signed certificate, not trusted: %v", err)
	}
	keys, err := client(federation.ClientConfig{AllowNetworks: loopback, InsecureSkipVerify: true}).GetServerKeys(ctx, name)
	if err != nil || keys.ServerName != name {
		t.Fatalf("skip verify: %+v %v", keys.ServerName, err)
	}
	keys, err = client(federation.ClientConfig{AllowNetworks: loopback, TrustedCAFile: srv.Config.Federation.TrustedCAFile}).GetServerKeys(ctx, name)
	if err != nil || keys.ServerName != name {
		t.Fatalf("trusted CA file: %+v %v", keys.ServerName, err)
	}
	if _, err := federation.NewClient(federation.ClientConfig{TrustedCAFile: "/nonexistent.pem"}); err == nil {
		t.Fatal("a missing trusted_ca_file was accepted")
	}
}

func onlyKeyID(keys gomatrixserverlib.ServerKeys) gomatrixserverlib.KeyID {
	for id := range keys.VerifyKeys {
		return id
	}
	return ""
}

func openDB(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open(context.Background(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func serverKeys(t *testing.T, db *sql.DB, name spec.ServerName) []sql.ServerKey {
	t.Helper()
	rows, err := db.ServerKeysFor(context.Background(), []string{string(name)})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// isHTTPError reports whether err is gomatrixserverlib's error for an
// HTTP answer of code with errcode (gomatrix.HTTPError, which it writes
// as "… code=404 wrapped=M_NOT_FOUND: …").
func isHTTPError(err error, code int, errcode string) bool {
	return err != nil && strings.Contains(err.Error(), "code="+strconv.Itoa(code)+" ") && strings.Contains(err.Error(), errcode)
}

func decodeError(t *testing.T, resp *http.Response) (int, string) {
	t.Helper()
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body struct {
		ErrCode string `json:"errcode"`
	}
	json.Unmarshal(raw, &body)
	return resp.StatusCode, body.ErrCode
}

package clientapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
	"github.com/weft-chat/weft/userapi"
)

// hsClient makes raw requests to a whole test homeserver.
type hsClient struct {
	t   testing.TB
	url string
}

// do is testServer.call against the homeserver.
func (c hsClient) do(method, path, token string, body any) response {
	c.t.Helper()
	if !strings.HasPrefix(path, "/_") {
		path = "/_matrix/client/v3" + path
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Body: data}
}

// hsPasswordAccount creates an account with a password directly in the
// homeserver's database, through a second connection to it.
func hsPasswordAccount(t testing.TB, srv *hstest.Server, localpart, password string) {
	t.Helper()
	db, err := sql.Open(context.Background(), srv.Config.Database.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users, err := userapi.New(db, srv.Config.ServerName, srv.Config.Auth, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer users.Close()
	createPasswordAccount(t, db, users.HashPassword, sql.Account{Localpart: localpart}, password)
}

// unrecognized reports whether err is the 404 M_UNRECOGNIZED of an
// endpoint that is not built.
func unrecognized(err error) bool {
	var he mautrix.HTTPError
	return errors.As(err, &he) && he.RespError != nil && he.RespError.ErrCode == "M_UNRECOGNIZED"
}

// TestAccountsEndToEnd drives the whole server with mautrix, a real client
// library: register (or an account made directly while /register is not
// built), log in, whoami, display name, list, rename and delete devices
// with password auth, log out.
func TestAccountsEndToEnd(t *testing.T) {
	t.Parallel()
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			ctx := context.Background()
			srv := hstest.StartEngine(t, e)
			const password = "wonderland"
			newClient := func() *mautrix.Client {
				cli, err := mautrix.NewClient(srv.ClientURL, "", "")
				if err != nil {
					t.Fatal(err)
				}
				return cli
			}

			var devices []id.DeviceID
			probe := hsClient{t: t, url: srv.ClientURL}.do("POST", "/register", "", map[string]any{})
			if probe.Status == 404 && strings.Contains(string(probe.Body), "M_UNRECOGNIZED") {
				t.Log("/register is not built: creating the account directly")
				hsPasswordAccount(t, srv, "alice", password)
			} else {
				reg, err := newClient().RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: password})
				if err != nil {
					t.Fatalf("register: %v", err)
				}
				if reg.DeviceID != "" {
					devices = append(devices, reg.DeviceID)
				}
			}
			userID := id.UserID("@alice:" + srv.Config.ServerName)

			loginAs := func(name string) *mautrix.Client {
				cli := newClient()
				res, err := cli.Login(ctx, &mautrix.ReqLogin{
					Type:                     mautrix.AuthTypePassword,
					Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
					Password:                 password,
					InitialDeviceDisplayName: name,
					StoreCredentials:         true,
				})
				if err != nil {
					t.Fatalf("login: %v", err)
				}
				if res.UserID != userID || res.DeviceID == "" || res.AccessToken == "" {
					t.Fatalf("login %+v", res)
				}
				devices = append(devices, res.DeviceID)
				return cli
			}
			cli := loginAs("main")

			who, err := cli.Whoami(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if who.UserID != userID || who.DeviceID != cli.DeviceID {
				t.Fatalf("whoami %+v", who)
			}

			if err := cli.SetDisplayName(ctx, "Alice"); unrecognized(err) {
				t.Log("PUT /profile/{userId}/displayname is not built (404 M_UNRECOGNIZED): display name step skipped")
			} else if err != nil {
				t.Fatalf("set display name: %v", err)
			} else if got, err := cli.GetOwnDisplayName(ctx); err != nil || got.DisplayName != "Alice" {
				t.Fatalf("display name %+v %v", got, err)
			}

			second := loginAs("second")
			list, err := cli.GetDevicesInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var listed []id.DeviceID
			for _, d := range list.Devices {
				listed = append(listed, d.DeviceID)
			}
			slices.Sort(listed)
			slices.Sort(devices)
			if !slices.Equal(listed, devices) {
				t.Fatalf("devices %v, want %v", listed, devices)
			}

			if err := cli.SetDeviceInfo(ctx, second.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "renamed"}); err != nil {
				t.Fatal(err)
			}
			info, err := cli.GetDeviceInfo(ctx, second.DeviceID)
			if err != nil || info.DisplayName != "renamed" {
				t.Fatalf("renamed device %+v %v", info, err)
			}

			// The user-interactive auth round trip: the first attempt
			// answers 401 with the flows and a session...
			deleteURL := cli.BuildClientURL("v3", "devices", second.DeviceID)
			body, err := cli.MakeRequest(ctx, http.MethodDelete, deleteURL, &mautrix.ReqDeleteDevice[any]{}, nil)
			var he mautrix.HTTPError
			if !errors.As(err, &he) || !he.IsStatus(401) {
				t.Fatalf("delete without auth: %v", err)
			}
			var uia mautrix.RespUserInteractive
			if err := json.Unmarshal(body, &uia); err != nil {
				t.Fatal(err)
			}
			if !uia.HasSingleStageFlow(mautrix.AuthTypePassword) || uia.Session == "" {
				t.Fatalf("challenge %s", body)
			}
			// ...and the second carries the password.
			err = cli.DeleteDevice(ctx, second.DeviceID, &mautrix.ReqDeleteDevice[any]{Auth: map[string]any{
				"type":       mautrix.AuthTypePassword,
				"session":    uia.Session,
				"identifier": mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: string(userID)},
				"password":   password,
			}})
			if err != nil {
				t.Fatalf("delete with password: %v", err)
			}
			if _, err := second.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
				t.Fatalf("deleted device's token: %v", err)
			}
			if _, err := cli.GetDeviceInfo(ctx, second.DeviceID); !errors.Is(err, mautrix.MNotFound) {
				t.Fatalf("deleted device: %v", err)
			}

			if _, err := cli.Logout(ctx); err != nil {
				t.Fatal(err)
			}
			_, err = cli.Whoami(ctx)
			if !errors.Is(err, mautrix.MUnknownToken) || !errors.As(err, &he) || !he.IsStatus(401) {
				t.Fatalf("whoami after logout: %v", err)
			}
		})
	}
}

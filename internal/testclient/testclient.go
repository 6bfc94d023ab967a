// Package testclient makes signed-in mautrix clients against a test
// homeserver, for end-to-end tests.
package testclient

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
)

// Register registers localpart (password "password") through
// /register with the m.login.dummy stage and returns a client signed in
// as the new user.
func Register(t testing.TB, baseURL, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(baseURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: localpart, Password: "password"})
	if err != nil {
		t.Fatalf("register %s: %v", localpart, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// RegisterGuest registers a guest account (the server must allow guests)
// and returns a client signed in as it.
func RegisterGuest(t testing.TB, baseURL string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(baseURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := cli.RegisterGuest(context.Background(), &mautrix.ReqRegister[any]{})
	if err != nil {
		t.Fatalf("register guest: %v", err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

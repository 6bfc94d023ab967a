package userapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestAccessTokenFrom(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		header, query, want string
		ok                  bool
	}{
		{header: "Bearer abc", want: "abc", ok: true},
		{header: "bearer abc", want: "abc", ok: true},
		{header: "Basic abc"},
		{header: "Bearer "},
		{query: "abc", want: "abc", ok: true},
		{header: "Bearer h", query: "q", want: "h", ok: true},
		{},
	} {
		r := httptest.NewRequest("GET", "/?access_token="+tc.query, nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		got, ok := AccessTokenFrom(r)
		if got != tc.want || ok != tc.ok {
			t.Errorf("header %q query %q: got %q %v, want %q %v", tc.header, tc.query, got, ok, tc.want, tc.ok)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		sess, err := s.StartSession(ctx, "alice", "", "phone", false)
		if err != nil {
			t.Fatal(err)
		}
		if sess.UserID != "@alice:"+testServer || len(sess.DeviceID) != 10 || sess.RefreshToken != "" || sess.ExpiresInMS != 0 {
			t.Fatalf("session %+v", sess)
		}
		for range 2 { // the second answer comes from the cache
			dev, err := s.Authenticate(ctx, sess.AccessToken)
			if err != nil {
				t.Fatal(err)
			}
			if dev.UserID != sess.UserID || dev.Localpart != "alice" || dev.DeviceID != sess.DeviceID || dev.IsGuest {
				t.Fatalf("device %+v", dev)
			}
		}
		_, err = s.Authenticate(ctx, "wft_nonsense")
		me := wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		if me.Extra["soft_logout"] != nil {
			t.Fatalf("unknown token answered soft_logout: %v", me.Extra)
		}
	})
}

func TestRefreshableTokenExpiresAndRefreshes(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		cfg := testAuth()
		s := newTestService(t, db, cfg, nil)
		clk := useClock(s)
		createUser(t, s, "alice", alicePassword)
		sess, err := s.StartSession(ctx, "alice", "DEV", "", true)
		if err != nil {
			t.Fatal(err)
		}
		if sess.RefreshToken == "" || sess.ExpiresInMS != cfg.RefreshableTokenExpiry.Milliseconds() {
			t.Fatalf("session %+v", sess)
		}
		if _, err := s.Authenticate(ctx, sess.AccessToken); err != nil {
			t.Fatal(err)
		}

		clk.advance(cfg.RefreshableTokenExpiry)
		_, err = s.Authenticate(ctx, sess.AccessToken)
		me := wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		if me.Extra["soft_logout"] != true {
			t.Fatalf("expired token without soft_logout: %v", me.Extra)
		}

		next, err := s.Refresh(ctx, sess.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if next.DeviceID != "DEV" || next.AccessToken == sess.AccessToken || next.RefreshToken == sess.RefreshToken {
			t.Fatalf("refreshed %+v", next)
		}
		dev, err := s.Authenticate(ctx, next.AccessToken)
		if err != nil || dev.DeviceID != "DEV" {
			t.Fatalf("new token: %v %+v", err, dev)
		}
		_, err = s.Refresh(ctx, sess.RefreshToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		_, err = s.Refresh(ctx, "wfr_never-issued")
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	})
}

func TestLoginWithKnownDeviceRevokesItsTokens(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		first, err := s.StartSession(ctx, "alice", "PHONE", "Alice's phone", true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, first.AccessToken); err != nil { // cache it
			t.Fatal(err)
		}
		second, err := s.StartSession(ctx, "alice", "PHONE", "Some other name", false)
		if err != nil {
			t.Fatal(err)
		}
		// The spec: the server invalidates the tokens previously
		// assigned to a device id the client sets.
		_, err = s.Authenticate(ctx, first.AccessToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		_, err = s.Refresh(ctx, first.RefreshToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		if _, err := s.Authenticate(ctx, second.AccessToken); err != nil {
			t.Fatal(err)
		}
		// initial_device_display_name is ignored for a known device.
		d, err := s.Device(ctx, "alice", "PHONE")
		if err != nil || d.DisplayName != "Alice's phone" {
			t.Fatalf("device %+v %v", d, err)
		}
		ds, err := s.Devices(ctx, "alice")
		if err != nil || len(ds) != 1 {
			t.Fatalf("devices %+v %v", ds, err)
		}
	})
}

func TestLogoutAndLogoutAll(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		s := newTestService(t, db, testAuth(), nil)
		createUser(t, s, "alice", alicePassword)
		var tokens []string
		for _, id := range []string{"A", "B", "C"} {
			sess, err := s.StartSession(ctx, "alice", id, "", false)
			if err != nil {
				t.Fatal(err)
			}
			tokens = append(tokens, sess.AccessToken)
		}
		devA, err := s.Authenticate(ctx, tokens[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Logout(ctx, devA); err != nil {
			t.Fatal(err)
		}
		_, err = s.Authenticate(ctx, tokens[0])
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		if _, err := s.Device(ctx, "alice", "A"); err == nil {
			t.Fatal("logout kept the device")
		}

		if err := s.LogoutAll(ctx, "alice", "C"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Authenticate(ctx, tokens[1])
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
		if _, err := s.Authenticate(ctx, tokens[2]); err != nil {
			t.Fatalf("kept device lost its token: %v", err)
		}
		if err := s.LogoutAll(ctx, "alice", ""); err != nil {
			t.Fatal(err)
		}
		_, err = s.Authenticate(ctx, tokens[2])
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	})
}

// TestRevocationReachesOtherProcesses: two services on one database share
// NATS, as two processes of a scaled-out server do. A token one of them
// revokes stops working in the other although the other had it cached; a
// third service without the bus shows that the cache would otherwise have
// kept it alive, so the test fails if the broadcast breaks.
func TestRevocationReachesOtherProcesses(t *testing.T) {
	t.Parallel()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		a := newTestService(t, db, testAuth(), b.Conn())
		other := newTestService(t, db, testAuth(), b.Conn())
		isolated := newTestService(t, db, testAuth(), nil)

		createUser(t, a, "alice", alicePassword)
		sess, err := a.StartSession(ctx, "alice", "", "", false)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Service{other, isolated} {
			if _, err := s.Authenticate(ctx, sess.AccessToken); err != nil {
				t.Fatal(err)
			}
		}
		dev, err := a.Authenticate(ctx, sess.AccessToken)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Logout(ctx, dev); err != nil {
			t.Fatal(err)
		}
		_, err = a.Authenticate(ctx, sess.AccessToken)
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

		// Delivery is asynchronous, so allow it a moment; it takes well
		// under a millisecond in-process.
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, err = other.Authenticate(ctx, sess.AccessToken)
			if err != nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		wantErr(t, err, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

		if _, err := isolated.Authenticate(ctx, sess.AccessToken); err != nil {
			t.Fatalf("control: a service without the bus should still hold the cached token, got %v", err)
		}
	})
}

package userapi

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestNormalizeUsername(t *testing.T) {
	for in, want := range map[string]string{
		"Alice":        "alice",
		"user-UPPER":   "user-upper",
		"already.low":  "already.low",
		"\u212Aelvin":  "\u212Aelvin", // the Kelvin sign is not an ASCII K
		"ÉCOLE":        "École",
		"MiXeD_09=/+-": "mixed_09=/+-",
	} {
		if got := NormalizeUsername(in); got != want {
			t.Errorf("NormalizeUsername(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateLocalpart(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		// "@" + localpart + ":weft.test" is len(localpart)+11 bytes.
		longest := strings.Repeat("a", MaxUserIDBytes-len("@:"+testServer))
		for _, lp := range []string{"alice", "a.b_c=d-e/f+g", "x", "a1", longest, "1a"} {
			if err := s.ValidateLocalpart(lp, false); err != nil {
				t.Errorf("%q refused: %v", lp, err)
			}
		}
		for _, lp := range []string{"", "Alice", "al ice", "al:ice", "al@ice", "é", "\u212Aelvin", "tab\t", "_bridge", longest + "a", "12345", "0"} {
			wantErr(t, s.ValidateLocalpart(lp, false), 400, "M_INVALID_USERNAME")
		}
		// Numeric localparts are the guests' (Synapse's rule).
		if err := s.ValidateLocalpart("12345", true); err != nil {
			t.Errorf("numeric guest localpart refused: %v", err)
		}
	})
}

func TestRegisterUser(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		if err := s.CheckUsername(ctx, "alice"); err != nil {
			t.Fatalf("free name: %v", err)
		}
		lp, err := s.Register(ctx, NewAccount{Localpart: "alice", Password: "wonderland"})
		if err != nil || lp != "alice" {
			t.Fatalf("Register = %q, %v", lp, err)
		}
		acc, err := s.CheckPassword(ctx, "alice", "wonderland")
		if err != nil {
			t.Fatalf("the new account cannot log in: %v", err)
		}
		if acc.IsAdmin || acc.IsGuest || acc.UserType != "" {
			t.Errorf("account %+v, want an ordinary user", acc)
		}
		if name, err := db.ProfileField(ctx, "alice", "displayname"); err != nil || string(name) != `"alice"` {
			t.Errorf("display name = %s, %v; want the localpart as JSON", name, err)
		}
		wantErr(t, s.CheckUsername(ctx, "alice"), 400, "M_USER_IN_USE")
		_, err = s.Register(ctx, NewAccount{Localpart: "alice", Password: "again"})
		wantErr(t, err, 400, "M_USER_IN_USE")
		if _, err := s.CheckPassword(ctx, "alice", "again"); err == nil {
			t.Error("a refused registration changed the password")
		}

		lp, err = s.Register(ctx, NewAccount{Localpart: "bot", Password: "pw", Admin: true, UserType: UserTypeBot, DisplayName: "Robot"})
		if err != nil {
			t.Fatal(err)
		}
		acc, err = db.Account(ctx, lp)
		if err != nil || !acc.IsAdmin || acc.UserType != "bot" {
			t.Errorf("admin bot account = %+v, %v", acc, err)
		}
		if name, _ := db.ProfileField(ctx, "bot", "displayname"); string(name) != `"Robot"` {
			t.Errorf("display name = %s, want \"Robot\"", name)
		}

		_, err = s.Register(ctx, NewAccount{Localpart: "nopw"})
		wantErr(t, err, 400, "M_MISSING_PARAM")
		_, err = s.Register(ctx, NewAccount{Localpart: "longpw", Password: strings.Repeat("x", MaxPasswordBytes+1)})
		wantErr(t, err, 400, "M_WEAK_PASSWORD")
		_, err = s.Register(ctx, NewAccount{Localpart: "typed", Password: "pw", UserType: "wizard"})
		wantErr(t, err, 400, "M_INVALID_PARAM")
		_, err = s.Register(ctx, NewAccount{Localpart: "Upper", Password: "pw"})
		wantErr(t, err, 400, "M_INVALID_USERNAME")
		_, err = s.Register(ctx, NewAccount{Localpart: "4242", Password: "pw"})
		wantErr(t, err, 400, "M_INVALID_USERNAME")
		for _, lp := range []string{"nopw", "longpw", "typed", "4242"} {
			if ok, _ := db.AccountExists(ctx, lp); ok {
				t.Errorf("refused registration of %q created an account", lp)
			}
		}
	})
}

func TestRegisterGeneratedNames(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		seen := map[string]bool{}
		for range 5 {
			lp, err := s.Register(ctx, NewAccount{Password: "pw"})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.ValidateLocalpart(lp, false); err != nil || len(lp) != 12 || seen[lp] {
				t.Errorf("generated user localpart %q: %v", lp, err)
			}
			seen[lp] = true
		}
		lp, err := s.Register(ctx, NewAccount{Guest: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(lp) != 10 || strings.Trim(lp, "0123456789") != "" {
			t.Errorf("guest localpart %q, want ten digits", lp)
		}
		acc, err := db.Account(ctx, lp)
		if err != nil || !acc.IsGuest || acc.PasswordHash != "" {
			t.Errorf("guest account %+v, %v", acc, err)
		}
		if _, err := db.ProfileField(ctx, lp, "displayname"); !errors.Is(err, sql.ErrNotFound) {
			t.Errorf("guest got a display name: %v", err)
		}
	})
}

func TestRegisterUsesRegistrationToken(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		clk := useClock(s)
		one := int64(1)
		rt, err := s.CreateRegistrationToken(ctx, TokenSpec{Token: "once", UsesAllowed: &one})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Register(ctx, NewAccount{Localpart: "first", Password: "pw", RegistrationToken: rt.Token}); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.RegistrationToken(ctx, "once"); got.Completed != 1 || got.Usable(clk.now().UnixMilli()) {
			t.Errorf("after one use: %+v", got)
		}
		_, err = s.Register(ctx, NewAccount{Localpart: "second", Password: "pw", RegistrationToken: "once"})
		wantErr(t, err, 403, "M_FORBIDDEN")
		if !errors.Is(err, ErrRegistrationTokenGone) {
			t.Errorf("error %v does not carry ErrRegistrationTokenGone", err)
		}
		// The account and the token count are one transaction.
		if ok, _ := db.AccountExists(ctx, "second"); ok {
			t.Error("an account was created with a used-up token")
		}
		if got, _ := s.RegistrationToken(ctx, "once"); got.Completed != 1 {
			t.Errorf("completed = %d after a refused use, want 1", got.Completed)
		}

		// Expiry is checked again when the account is made.
		if _, err := s.CreateRegistrationToken(ctx, TokenSpec{Token: "soon", ExpiryTS: clk.now().Add(time.Minute).UnixMilli()}); err != nil {
			t.Fatal(err)
		}
		clk.advance(2 * time.Minute)
		_, err = s.Register(ctx, NewAccount{Localpart: "late", Password: "pw", RegistrationToken: "soon"})
		if !errors.Is(err, ErrRegistrationTokenGone) {
			t.Errorf("expired token: %v", err)
		}
		_, err = s.Register(ctx, NewAccount{Localpart: "ghost", Password: "pw", RegistrationToken: "no-such-token"})
		if !errors.Is(err, ErrRegistrationTokenGone) {
			t.Errorf("unknown token: %v", err)
		}
	})
}

func TestRegistrationTokenNotOverused(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		three := int64(3)
		if _, err := s.CreateRegistrationToken(ctx, TokenSpec{Token: "three", UsesAllowed: &three}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, gone := 0, 0
		for i := range 10 {
			wg.Go(func() {
				_, err := s.Register(ctx, NewAccount{Localpart: "racer" + string(rune('a'+i)), Password: "pw", RegistrationToken: "three"})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, ErrRegistrationTokenGone):
					gone++
				default:
					t.Errorf("racer %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if ok != 3 || gone != 7 {
			t.Errorf("%d registrations succeeded and %d were refused, want 3 and 7", ok, gone)
		}
		if rt, _ := s.RegistrationToken(ctx, "three"); rt.Completed != 3 {
			t.Errorf("completed = %d, want 3", rt.Completed)
		}
	})
}

func TestRegistrationNonces(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		clk := useClock(s)
		n1, err := s.NewRegistrationNonce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n2, _ := s.NewRegistrationNonce(ctx)
		if len(n1) != 128 || n1 == n2 {
			t.Errorf("nonces %q and %q: want distinct 128-character hex strings", n1, n2)
		}
		if ok, err := s.TakeRegistrationNonce(ctx, n1); !ok || err != nil {
			t.Fatalf("fresh nonce: %v %v", ok, err)
		}
		if ok, _ := s.TakeRegistrationNonce(ctx, n1); ok {
			t.Error("a nonce worked twice")
		}
		if ok, _ := s.TakeRegistrationNonce(ctx, "never-issued"); ok {
			t.Error("an unknown nonce worked")
		}
		clk.advance(NonceLifetime + time.Second)
		if ok, _ := s.TakeRegistrationNonce(ctx, n2); ok {
			t.Error("a nonce older than NonceLifetime worked")
		}
		// Handing out a nonce prunes the stale ones.
		stale, _ := s.NewRegistrationNonce(ctx)
		clk.advance(NonceLifetime + time.Second)
		if _, err := s.NewRegistrationNonce(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := db.TakeRegistrationNonce(ctx, stale); !errors.Is(err, sql.ErrNotFound) {
			t.Errorf("stale nonce still stored: %v", err)
		}
	})
}

// The expected MACs were computed with Python's hmac module exactly as
// Synapse's register_new_matrix_user does.
func TestSharedSecretMAC(t *testing.T) {
	for _, c := range []struct {
		admin    bool
		userType string
		want     string
	}{
		{true, "", "5b912687f7ea54eae7799762acc5626bcebd72f2"},
		{false, "", "36baba7b66ac06931ff913ba18d8c5d3c4ebe0aa"},
		{false, "bot", "21c07fe26263787499807f8ee625a11410e61f9e"},
	} {
		if got := SharedSecretMAC("test-secret", "abcdef", "Alice", "s3cret", c.admin, c.userType); got != c.want {
			t.Errorf("admin=%v type=%q: %s, want %s", c.admin, c.userType, got, c.want)
		}
	}
}

func TestRegistrationTokenAdmin(t *testing.T) {
	ctx := context.Background()
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		s := newTestService(t, db, testAuth(), nil)
		clk := useClock(s)
		rt, err := s.CreateRegistrationToken(ctx, TokenSpec{})
		if err != nil {
			t.Fatal(err)
		}
		if len(rt.Token) != 16 || strings.Trim(rt.Token, RegistrationTokenChars) != "" || rt.UsesAllowed != nil || rt.ExpiryTS != 0 {
			t.Errorf("default token %+v", rt)
		}
		if rt, _ := s.CreateRegistrationToken(ctx, TokenSpec{Length: 64}); len(rt.Token) != 64 {
			t.Errorf("length 64 gave %q", rt.Token)
		}
		for _, spec := range []TokenSpec{
			{Token: "bad token"}, {Token: strings.Repeat("a", 65)}, {Token: "é"},
			{Length: 65}, {Length: -1},
			{UsesAllowed: new(int64(-1))},
			{ExpiryTS: clk.now().Add(-time.Second).UnixMilli()},
		} {
			_, err := s.CreateRegistrationToken(ctx, spec)
			wantErr(t, err, 400, "M_INVALID_PARAM")
		}
		zero := int64(0)
		if _, err := s.CreateRegistrationToken(ctx, TokenSpec{Token: "zero", UsesAllowed: &zero}); err != nil {
			t.Fatal(err)
		}
		_, err = s.CreateRegistrationToken(ctx, TokenSpec{Token: "zero"})
		wantErr(t, err, 400, "M_INVALID_PARAM")
		// Synapse: zero uses allowed is a real limit, not "unlimited".
		if ok, _ := s.RegistrationTokenUsable(ctx, "zero"); ok {
			t.Error("a token with zero uses allowed is usable")
		}
		valid, invalid := true, false
		if l, _ := s.RegistrationTokens(ctx, &invalid); len(l) != 1 || l[0].Token != "zero" {
			t.Errorf("invalid tokens: %+v", l)
		}
		if l, _ := s.RegistrationTokens(ctx, &valid); len(l) != 2 {
			t.Errorf("valid tokens: %+v", l)
		}
		if l, _ := s.RegistrationTokens(ctx, nil); len(l) != 3 {
			t.Errorf("all tokens: %+v", l)
		}

		five := int64(5)
		exp := clk.now().Add(time.Hour).UnixMilli()
		got, err := s.UpdateRegistrationToken(ctx, "zero", TokenUpdate{SetUsesAllowed: true, UsesAllowed: &five})
		if err != nil || got.UsesAllowed == nil || *got.UsesAllowed != 5 || got.ExpiryTS != 0 {
			t.Fatalf("update uses: %+v %v", got, err)
		}
		got, err = s.UpdateRegistrationToken(ctx, "zero", TokenUpdate{SetExpiry: true, ExpiryTS: exp})
		if err != nil || *got.UsesAllowed != 5 || got.ExpiryTS != exp {
			t.Fatalf("update expiry kept uses? %+v %v", got, err)
		}
		got, err = s.UpdateRegistrationToken(ctx, "zero", TokenUpdate{SetUsesAllowed: true, SetExpiry: true})
		if err != nil || got.UsesAllowed != nil || got.ExpiryTS != 0 {
			t.Fatalf("update to unlimited: %+v %v", got, err)
		}
		if stored, _ := s.RegistrationToken(ctx, "zero"); stored.UsesAllowed != nil || stored.ExpiryTS != 0 {
			t.Errorf("stored after update: %+v", stored)
		}
		_, err = s.UpdateRegistrationToken(ctx, "zero", TokenUpdate{SetExpiry: true, ExpiryTS: clk.now().Add(-time.Hour).UnixMilli()})
		wantErr(t, err, 400, "M_INVALID_PARAM")
		_, err = s.UpdateRegistrationToken(ctx, "nope", TokenUpdate{})
		wantErr(t, err, 404, "M_NOT_FOUND")

		if err := s.DeleteRegistrationToken(ctx, "zero"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, s.DeleteRegistrationToken(ctx, "zero"), 404, "M_NOT_FOUND")
		_, err = s.RegistrationToken(ctx, "zero")
		wantErr(t, err, 404, "M_NOT_FOUND")
	})
}

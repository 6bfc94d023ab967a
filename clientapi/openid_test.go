package clientapi_test

import (
	"context"
	"net/url"
	"testing"
	"time"
)

// TestOpenIDRequestToken covers POST /user/{userId}/openid/request_token
// (openid.yaml): a token for the caller only, an hour long, stored so
// that the federation API's userinfo can resolve it; not for guests, as
// in Synapse.
func TestOpenIDRequestToken(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		guest := s.newGuest(t, "guest")
		path := "/user/" + url.PathEscape(alice.UserID) + "/openid/request_token"
		var tok struct {
			AccessToken      string `json:"access_token"`
			TokenType        string `json:"token_type"`
			MatrixServerName string `json:"matrix_server_name"`
			ExpiresIn        int64  `json:"expires_in"`
		}
		s.call(t, "POST", path, alice.Token, map[string]any{}).expect(t, 200).JSON(t, &tok)
		if tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.MatrixServerName != testServerName || tok.ExpiresIn != 3600 {
			t.Fatalf("token %+v", tok)
		}
		ctx := context.Background()
		if who, err := s.DB.OpenIDTokenUser(ctx, tok.AccessToken, time.Now().UnixMilli()); err != nil || who != alice.UserID {
			t.Fatalf("stored token resolves to %q %v", who, err)
		}
		if _, err := s.DB.OpenIDTokenUser(ctx, tok.AccessToken, time.Now().Add(time.Hour+time.Minute).UnixMilli()); err == nil {
			t.Error("the token outlives its hour")
		}
		// It is not an access token.
		s.call(t, "GET", "/account/whoami", tok.AccessToken, nil).expectError(t, 401, "M_UNKNOWN_TOKEN")

		s.call(t, "POST", path, "", map[string]any{}).expectError(t, 401, "M_MISSING_TOKEN")
		s.call(t, "POST", "/user/"+url.PathEscape("@bob:"+testServerName)+"/openid/request_token", alice.Token, map[string]any{}).expectError(t, 403, "M_FORBIDDEN")
		s.call(t, "POST", "/user/"+url.PathEscape(guest.UserID)+"/openid/request_token", guest.Token, map[string]any{}).expectError(t, 403, "M_GUEST_ACCESS_FORBIDDEN")
		s.call(t, "POST", path, alice.Token, "not json").expectError(t, 400, "M_NOT_JSON")
		s.call(t, "POST", path, alice.Token, "[]").expectError(t, 400, "M_BAD_JSON")
	})
}

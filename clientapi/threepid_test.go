package clientapi_test

import "testing"

func TestThreepids(t *testing.T) {
	forEachEngine(t, func(t *testing.T, s *testServer) {
		alice := s.newUser(t, "alice")
		guest := s.newGuest(t, "guest1")
		r := s.call(t, "GET", "/account/3pid", alice.Token, nil).expect(t, 200)
		if string(r.Body) != `{"threepids":[]}` {
			t.Fatalf("threepids %s", r.Body)
		}
		addBody := `{"client_secret":"d0nt-T3ll","sid":"abc123987","auth":{"type":"m.login.dummy"}}`
		bindBody := `{"client_secret":"d0nt-T3ll","id_server":"example.org","id_access_token":"tok","sid":"abc"}`
		removeBody := `{"medium":"email","address":"alice@example.org"}`
		emailToken := `{"client_secret":"monkeys_are_GREAT","email":"alice@example.org","send_attempt":1}`
		phoneToken := `{"client_secret":"monkeys_are_GREAT","country":"GB","phone_number":"07700900001","send_attempt":1}`
		for _, c := range []struct {
			name, method, path, token string
			body                      any
			status                    int
			code                      string
		}{
			{"list without token", "GET", "/account/3pid", "", nil, 401, "M_MISSING_TOKEN"},
			{"list as guest", "GET", "/account/3pid", guest.Token, nil, 403, "M_GUEST_ACCESS_FORBIDDEN"},
			{"add without token", "POST", "/account/3pid/add", "", addBody, 401, "M_MISSING_TOKEN"},
			{"add", "POST", "/account/3pid/add", alice.Token, addBody, 403, "M_THREEPID_DENIED"},
			{"bind", "POST", "/account/3pid/bind", alice.Token, bindBody, 403, "M_THREEPID_DENIED"},
			{"deprecated add", "POST", "/account/3pid", alice.Token, `{"three_pid_creds":{}}`, 403, "M_THREEPID_DENIED"},
			{"delete without token", "POST", "/account/3pid/delete", "", removeBody, 401, "M_MISSING_TOKEN"},
			{"delete", "POST", "/account/3pid/delete", alice.Token, removeBody, 400, "M_THREEPID_NOT_FOUND"},
			{"unbind", "POST", "/account/3pid/unbind", alice.Token, `{"medium":"msisdn","address":"447700900001","id_server":"example.org"}`, 400, "M_THREEPID_NOT_FOUND"},
			{"delete without medium", "POST", "/account/3pid/delete", alice.Token, `{"address":"a@b.c"}`, 400, "M_MISSING_PARAM"},
			{"delete without address", "POST", "/account/3pid/delete", alice.Token, `{"medium":"email"}`, 400, "M_MISSING_PARAM"},
			{"delete unknown medium", "POST", "/account/3pid/delete", alice.Token, `{"medium":"fax","address":"1"}`, 400, "M_INVALID_PARAM"},
			{"delete medium not a string", "POST", "/account/3pid/delete", alice.Token, `{"medium":1,"address":"1"}`, 400, "M_BAD_JSON"},
			{"unbind not json", "POST", "/account/3pid/unbind", alice.Token, `{`, 400, "M_NOT_JSON"},
			// administrative_contact.yaml: the homeserver does not support adding the medium.
			{"add email token", "POST", "/account/3pid/email/requestToken", "", emailToken, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
			{"add phone token", "POST", "/account/3pid/msisdn/requestToken", "", phoneToken, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
			// registration.yaml, password_management.yaml: not allowed.
			{"register email token", "POST", "/register/email/requestToken", "", emailToken, 403, "M_THREEPID_DENIED"},
			{"register phone token", "POST", "/register/msisdn/requestToken", "", phoneToken, 403, "M_THREEPID_DENIED"},
			{"password email token", "POST", "/account/password/email/requestToken", "", emailToken, 403, "M_THREEPID_DENIED"},
			{"password phone token", "POST", "/account/password/msisdn/requestToken", "", phoneToken, 403, "M_THREEPID_DENIED"},
			{"r0 prefix", "POST", "/_matrix/client/r0/register/email/requestToken", "", emailToken, 403, "M_THREEPID_DENIED"},
			{"wrong method", "GET", "/account/3pid/add", alice.Token, nil, 405, "M_UNRECOGNIZED"},
		} {
			t.Run(c.name, func(t *testing.T) {
				s.call(t, c.method, c.path, c.token, c.body).expectError(t, c.status, c.code)
			})
		}
	})
}

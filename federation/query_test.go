package federation

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"reflect"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func TestQueryEndpoints(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		for _, lp := range []string{"alice", "bob"} {
			if err := db.CreateAccount(ctx, sql.Account{Localpart: lp}); err != nil {
				t.Fatal(err)
			}
		}
		db.SetProfileField(ctx, "alice", "displayname", json.RawMessage(`"Alice"`))
		db.SetProfileField(ctx, "alice", "avatar_url", json.RawMessage(`"mxc://ours.example/a"`))
		db.SetProfileField(ctx, "alice", "org.example.job", json.RawMessage(`{"title":"pilot"}`))
		if err := db.CreateAlias(ctx, "#room:ours.example", "!r:ours.example", "@alice:ours.example"); err != nil {
			t.Fatal(err)
		}
		r := mxhttp.NewRouter()
		(&Query{DB: db, ServerName: ours}).Routes(r)
		get := func(path string, q url.Values) (int, map[string]any) {
			w := httptest.NewRecorder()
			r.ServeHTTP(w, httptest.NewRequest("GET", "/_matrix/federation/v1/query/"+path+"?"+q.Encode(), nil))
			var body map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("%s: body %q is not a JSON object", path, w.Body)
			}
			return w.Code, body
		}
		profile := func(user, field string) (int, map[string]any) {
			q := url.Values{"user_id": {user}}
			if field != "" {
				q.Set("field", field)
			}
			return get("profile", q)
		}

		for _, c := range []struct {
			user, field string
			code        int
			want        map[string]any
		}{
			{"@alice:ours.example", "", 200, map[string]any{"displayname": "Alice", "avatar_url": "mxc://ours.example/a", "org.example.job": map[string]any{"title": "pilot"}}},
			{"@alice:ours.example", "displayname", 200, map[string]any{"displayname": "Alice"}},
			{"@alice:ours.example", "avatar_url", 200, map[string]any{"avatar_url": "mxc://ours.example/a"}},
			{"@alice:ours.example", "org.example.job", 200, map[string]any{"org.example.job": map[string]any{"title": "pilot"}}},
			// Set nothing: the field is left out (profile query spec).
			{"@bob:ours.example", "displayname", 200, map[string]any{}},
			{"@bob:ours.example", "", 200, map[string]any{}},
		} {
			code, body := profile(c.user, c.field)
			if code != c.code || !reflect.DeepEqual(body, c.want) {
				t.Errorf("profile %s %q: %d %v, want %d %v", c.user, c.field, code, body, c.code, c.want)
			}
		}
		for _, c := range []struct {
			user, field string
			code        int
			errcode     string
		}{
			{"@nobody:ours.example", "", 404, "M_NOT_FOUND"},
			{"@nobody:ours.example", "displayname", 404, "M_NOT_FOUND"},
			{"@bob:ours.example", "org.example.unset", 404, "M_NOT_FOUND"},
			{"@alice:elsewhere.example", "", 400, "M_INVALID_PARAM"},
			{"alice", "", 400, "M_INVALID_PARAM"},
			{"", "", 400, "M_MISSING_PARAM"},
		} {
			code, body := profile(c.user, c.field)
			if code != c.code || body["errcode"] != c.errcode {
				t.Errorf("profile %q %q: %d %v, want %d %s", c.user, c.field, code, body, c.code, c.errcode)
			}
		}

		code, body := get("directory", url.Values{"room_alias": {"#room:ours.example"}})
		if code != 200 || body["room_id"] != "!r:ours.example" || !reflect.DeepEqual(body["servers"], []any{"ours.example"}) {
			t.Errorf("directory: %d %v", code, body)
		}
		for _, c := range []struct {
			alias   string
			code    int
			errcode string
		}{
			{"#nope:ours.example", 404, "M_NOT_FOUND"},
			{"#room:elsewhere.example", 400, "M_INVALID_PARAM"},
			{"room", 400, "M_INVALID_PARAM"},
			{"", 400, "M_MISSING_PARAM"},
		} {
			code, body := get("directory", url.Values{"room_alias": {c.alias}})
			if code != c.code || body["errcode"] != c.errcode {
				t.Errorf("directory %q: %d %v, want %d %s", c.alias, code, body, c.code, c.errcode)
			}
		}
	})
}

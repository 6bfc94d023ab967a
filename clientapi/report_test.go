package clientapi_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

func exReportEvent(t *testing.T, h *roomsHS, cli *mautrix.Client, roomID, eventID string, body any) response {
	t.Helper()
	return h.do(t, cli, "POST", "/rooms/"+pathEsc(roomID)+"/report/"+pathEsc(eventID), body)
}

// exReports lists the stored reports of a kind, oldest first.
func exReports(t *testing.T, h *roomsHS, kind string) []sql.Report {
	t.Helper()
	rs, _, err := h.db.Reports(context.Background(), sql.ReportQuery{Kind: kind, Limit: 100, OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// exAdmin makes cli's user a server admin and returns a new session of
// theirs (tokens made before carry the old rights in caches).
func exAdmin(t *testing.T, h *roomsHS, cli *mautrix.Client) *mautrix.Client {
	t.Helper()
	localpart, _, _ := cli.UserID.Parse()
	if err := h.db.SetAdmin(context.Background(), localpart, true); err != nil {
		t.Fatal(err)
	}
	return h.device(t, cli)
}

// TestReportEvent: POST /rooms/{roomId}/report/{eventId} stores a report
// for a joined member who can see the event, and is 404 alike for unknown
// events, events of other rooms, events hidden by history visibility and
// rooms the reporter is not joined to (report_content.yaml).
func TestReportEvent(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob, carol := h.user(t, "alice"), h.user(t, "bob"), h.user(t, "carol")
		room := h.createRoom(t, alice, map[string]any{"preset": "public_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "joined"}}}})
		before := h.send(t, alice, room, "before bob joined")
		h.join(t, bob, room)
		msg := h.send(t, alice, room, "offensive")
		other := h.createRoom(t, alice, map[string]any{"preset": "public_chat"})
		otherMsg := h.send(t, alice, other, "elsewhere")

		exReportEvent(t, h, bob, room, msg, map[string]any{"reason": "rude", "score": -100}).expect(t, 200)
		exReportEvent(t, h, bob, room, msg, map[string]any{}).expect(t, 200) // reason and score are optional
		rs := exReports(t, h, sql.ReportEvent)
		if len(rs) != 2 {
			t.Fatalf("stored %d event reports, want 2", len(rs))
		}
		r := rs[0]
		if r.Reporter != bob.UserID.String() || r.RoomID != room || r.EventID != msg || r.TargetUserID != alice.UserID.String() ||
			r.Reason == nil || *r.Reason != "rude" || r.Score == nil || *r.Score != -100 {
			t.Fatalf("stored report = %+v", r)
		}
		if rs[1].Reason != nil || rs[1].Score != nil {
			t.Fatalf("report without reason = %+v", rs[1])
		}

		body := map[string]any{"reason": "x"}
		exReportEvent(t, h, bob, room, before, body).expectError(t, 404, "M_NOT_FOUND") // hidden by history visibility
		exReportEvent(t, h, bob, room, "$unknown", body).expectError(t, 404, "M_NOT_FOUND")
		exReportEvent(t, h, bob, room, otherMsg, body).expectError(t, 404, "M_NOT_FOUND") // another room's event
		exReportEvent(t, h, carol, room, msg, body).expectError(t, 404, "M_NOT_FOUND")    // not joined
		exReportEvent(t, h, bob, "!unknown:"+h.srv.Config.ServerName, msg, body).expectError(t, 404, "M_NOT_FOUND")
		h.do(t, bob, "POST", "/rooms/"+pathEsc(room)+"/leave", map[string]any{}).expect(t, 200)
		exReportEvent(t, h, bob, room, msg, body).expectError(t, 404, "M_NOT_FOUND") // left since
		exReportEvent(t, h, alice, room, msg, map[string]any{"reason": 5}).expectError(t, 400, "M_BAD_JSON")
		exReportEvent(t, h, alice, room, msg, map[string]any{"score": "high"}).expectError(t, 400, "M_BAD_JSON")
		exReportEvent(t, h, alice, room, msg, map[string]any{"score": 1.5}).expectError(t, 400, "M_BAD_JSON")
		exReportEvent(t, h, alice, room, msg, "[]").expectError(t, 400, "M_BAD_JSON")
		exReportEvent(t, h, alice, room, msg, "nope").expectError(t, 400, "M_NOT_JSON")
		exReportEvent(t, h, alice, "nonsense", msg, body).expectError(t, 400, "M_INVALID_PARAM")
		exReportEvent(t, h, nil, room, msg, body).expectError(t, 401, "M_MISSING_TOKEN")
		if n := len(exReports(t, h, sql.ReportEvent)); n != 2 {
			t.Fatalf("refused reports were stored: %d reports", n)
		}
	})
}

// TestReportRoomAndUser: room reports (v1.13) need no membership; user
// reports (v1.14) are stored for local users and answered alike, without
// being stored, for users this server does not have.
func TestReportRoomAndUser(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, carol := h.user(t, "alice"), h.user(t, "carol")
		room := h.createRoom(t, alice, nil) // private: carol is not in it
		roomPath := "/rooms/" + pathEsc(room) + "/report"
		h.do(t, carol, "POST", roomPath, map[string]any{"reason": "spam room"}).expect(t, 200)
		h.do(t, carol, "POST", roomPath, map[string]any{"reason": ""}).expect(t, 200) // may be blank
		if rs := exReports(t, h, sql.ReportRoom); len(rs) != 2 || rs[0].Reporter != carol.UserID.String() || rs[0].RoomID != room ||
			*rs[0].Reason != "spam room" || rs[0].EventID != "" {
			t.Fatalf("room reports = %+v", rs)
		}
		h.do(t, carol, "POST", "/rooms/"+pathEsc("!unknown:"+h.srv.Config.ServerName)+"/report", map[string]any{"reason": "x"}).
			expectError(t, 404, "M_NOT_FOUND")
		h.do(t, carol, "POST", roomPath, map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
		h.do(t, carol, "POST", roomPath, map[string]any{"reason": []string{"x"}}).expectError(t, 400, "M_BAD_JSON")
		h.do(t, carol, "POST", "/rooms/nonsense/report", map[string]any{"reason": "x"}).expectError(t, 400, "M_INVALID_PARAM")
		h.do(t, nil, "POST", roomPath, map[string]any{"reason": "x"}).expectError(t, 401, "M_MISSING_TOKEN")

		userPath := func(u string) string { return "/users/" + pathEsc(u) + "/report" }
		h.do(t, carol, "POST", userPath(alice.UserID.String()), map[string]any{"reason": "harassment"}).expect(t, 200)
		h.do(t, carol, "POST", userPath(h.userID("nobody")), map[string]any{"reason": "x"}).expect(t, 200)
		h.do(t, carol, "POST", userPath("@someone:elsewhere.example"), map[string]any{"reason": "x"}).expect(t, 200)
		if rs := exReports(t, h, sql.ReportUser); len(rs) != 1 || rs[0].TargetUserID != alice.UserID.String() ||
			rs[0].Reporter != carol.UserID.String() || *rs[0].Reason != "harassment" {
			t.Fatalf("user reports = %+v: want only the report of the local user who exists", rs)
		}
		h.do(t, carol, "POST", userPath("alice"), map[string]any{"reason": "x"}).expectError(t, 400, "M_INVALID_PARAM")
		h.do(t, carol, "POST", userPath(alice.UserID.String()), map[string]any{}).expectError(t, 400, "M_MISSING_PARAM")
		h.do(t, carol, "POST", userPath(alice.UserID.String()), map[string]any{"reason": strings.Repeat("é", 1001)}).
			expectError(t, 400, "M_BAD_JSON")
		h.do(t, carol, "POST", userPath(alice.UserID.String()), map[string]any{"reason": strings.Repeat("é", 1000)}).expect(t, 200)
	})
}

// TestReportRateLimit: reports count against the message rate limit.
func TestReportRateLimit(t *testing.T) {
	for _, e := range sqltest.Engines() {
		t.Run(string(e), func(t *testing.T) {
			cfg := hstest.Config(t, e)
			cfg.RateLimits.Enabled = true
			cfg.RateLimits.Registration.Rate, cfg.RateLimits.Registration.Burst = 100, 100
			cfg.RateLimits.Login.Rate, cfg.RateLimits.Login.Burst = 100, 100
			cfg.RateLimits.Message.Rate, cfg.RateLimits.Message.Burst = 0.001, 3
			h := startRoomsHS(t, cfg)
			alice, bob := h.user(t, "alice"), h.user(t, "bob")
			room := h.createRoom(t, alice, nil) // one token
			path := "/rooms/" + pathEsc(room) + "/report"
			h.do(t, alice, "POST", path, map[string]any{"reason": "1"}).expect(t, 200)
			h.do(t, alice, "POST", "/users/"+pathEsc(bob.UserID.String())+"/report", map[string]any{"reason": "2"}).expect(t, 200)
			h.do(t, alice, "POST", path, map[string]any{"reason": "3"}).expectError(t, 429, "M_LIMIT_EXCEEDED")
			h.do(t, bob, "POST", path, map[string]any{"reason": "bob has his own bucket"}).expect(t, 200)
		})
	}
}

// TestEventReportsAdminAPI: Synapse's admin API for event reports: list
// with paging and filters, details with the event, delete; admins only.
func TestEventReportsAdminAPI(t *testing.T) {
	forEachHS(t, func(t *testing.T, h *roomsHS) {
		alice, bob := h.user(t, "alice"), h.user(t, "bob")
		room := h.createRoom(t, alice, map[string]any{"preset": "public_chat", "name": "Reported", "room_alias_name": "reported"})
		h.join(t, bob, room)
		var msgs []string
		for i := range 3 {
			msgs = append(msgs, h.send(t, alice, room, "msg"))
			exReportEvent(t, h, bob, room, msgs[i], map[string]any{"reason": "r", "score": -i}).expect(t, 200)
		}
		exReportEvent(t, h, alice, room, msgs[0], map[string]any{"reason": "self"}).expect(t, 200)
		base := "/_synapse/admin/v1/event_reports"
		h.do(t, bob, "GET", base, nil).expectError(t, 403, "M_FORBIDDEN")
		admin := exAdmin(t, h, alice)

		type report struct {
			ID             int64          `json:"id"`
			ReceivedTS     int64          `json:"received_ts"`
			RoomID         string         `json:"room_id"`
			Name           string         `json:"name"`
			EventID        string         `json:"event_id"`
			UserID         string         `json:"user_id"`
			Reason         string         `json:"reason"`
			Score          *int64         `json:"score"`
			Sender         string         `json:"sender"`
			CanonicalAlias string         `json:"canonical_alias"`
			EventJSON      map[string]any `json:"event_json"`
		}
		type reportList struct {
			EventReports []report `json:"event_reports"`
			NextToken    *int     `json:"next_token"`
			Total        int      `json:"total"`
		}
		var list reportList
		h.do(t, admin, "GET", base, nil).expect(t, 200).JSON(t, &list)
		if list.Total != 4 || len(list.EventReports) != 4 || list.NextToken != nil {
			t.Fatalf("list = %+v", list)
		}
		newest := list.EventReports[0]
		if newest.UserID != alice.UserID.String() || newest.EventID != msgs[0] || newest.Sender != alice.UserID.String() ||
			newest.RoomID != room || newest.Name != "Reported" || newest.CanonicalAlias != "#reported:"+h.srv.Config.ServerName ||
			newest.Reason != "self" || newest.Score != nil || newest.ReceivedTS == 0 {
			t.Fatalf("newest report = %+v", newest)
		}
		q := url.Values{"user_id": {"bob"}, "dir": {"f"}, "limit": {"2"}}
		list = reportList{}
		h.do(t, admin, "GET", base+"?"+q.Encode(), nil).expect(t, 200).JSON(t, &list)
		if list.Total != 3 || len(list.EventReports) != 2 || list.EventReports[0].EventID != msgs[0] || list.NextToken == nil || *list.NextToken != 2 {
			t.Fatalf("bob's reports, oldest first, page 1 = %+v", list)
		}
		q.Set("from", "2")
		list = reportList{}
		h.do(t, admin, "GET", base+"?"+q.Encode(), nil).expect(t, 200).JSON(t, &list)
		if len(list.EventReports) != 1 || list.EventReports[0].EventID != msgs[2] || *list.EventReports[0].Score != -2 || list.NextToken != nil {
			t.Fatalf("page 2 = %+v", list)
		}

		var one report
		id := list.EventReports[0].ID
		path := base + "/" + strconv.FormatInt(id, 10)
		h.do(t, admin, "GET", path, nil).expect(t, 200).JSON(t, &one)
		if one.ID != id || one.EventID != msgs[2] || one.EventJSON["type"] != "m.room.message" || one.EventJSON["room_id"] != room {
			t.Fatalf("report details = %+v", one)
		}
		h.do(t, admin, "DELETE", path, nil).expect(t, 200)
		h.do(t, admin, "GET", path, nil).expectError(t, 404, "M_NOT_FOUND")
		h.do(t, admin, "DELETE", path, nil).expectError(t, 404, "M_NOT_FOUND")
		for _, bad := range []string{base + "/0", base + "/x", base + "?limit=-1", base + "?from=x", base + "?dir=up"} {
			h.do(t, admin, "GET", bad, nil).expectError(t, 400, "M_INVALID_PARAM")
		}
		h.do(t, bob, "DELETE", base+"/1", nil).expectError(t, 403, "M_FORBIDDEN")
	})
}

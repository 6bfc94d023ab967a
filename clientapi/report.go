package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Reporting content (spec: "Reporting content", report_content.yaml):
// reports are stored for this server's admins, who read event reports
// through Synapse's admin API. Every report counts against the message
// rate limit.

// maxUserReportReason bounds the reason of a user report, in characters,
// as Synapse does.
const maxUserReportReason = 1000

// reportEvent is POST /rooms/{roomId}/report/{eventId} {reason?, score?}.
// Since spec v1.8 the reporter must be joined to the room; an event that
// is unknown, in another room, or hidden from the reporter by history
// visibility is 404 M_NOT_FOUND alike, as is a room the reporter is not
// joined to, so that a report tells nothing the reporter could not see.
// score was removed in v1.18; it is still stored when sent, as Synapse
// does, for older clients.
func (a *API) reportEvent(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	eventID, err := pathVar(r, "eventId")
	if err != nil {
		return nil, err
	}
	if err := limit(a.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	var body struct {
		Reason json.RawMessage `json:"reason"`
		Score  json.RawMessage `json:"score"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	rep := sql.Report{Kind: sql.ReportEvent, Reporter: dev.UserID, RoomID: roomID, EventID: eventID}
	if jsonPresent(body.Reason) {
		var reason string
		if json.Unmarshal(body.Reason, &reason) != nil {
			return nil, mxhttp.BadJSON("Param 'reason' must be a string")
		}
		rep.Reason = &reason
	}
	if jsonPresent(body.Score) {
		var score int64
		if json.Unmarshal(body.Score, &score) != nil {
			return nil, mxhttp.BadJSON("Param 'score' must be an integer")
		}
		rep.Score = &score
	}
	notFound := mxhttp.NotFound("Unable to report event: it does not exist or you aren't able to see it.")
	membership, err := a.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	if membership != spec.Join {
		return nil, notFound
	}
	ev, _, err := a.rooms.Event(ctx, eventID)
	if isNotFound(err) {
		return nil, notFound
	}
	if err != nil {
		return nil, err
	}
	if ev.RoomID != roomID || ev.Outlier || ev.Rejected {
		return nil, notFound
	}
	visible, err := a.rooms.VisibleTo(ctx, dev.UserID, membership, ev)
	if err != nil {
		return nil, err
	}
	if !visible {
		return nil, notFound
	}
	rep.TargetUserID = ev.Sender
	if _, err := a.db.AddReport(ctx, rep); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// jsonPresent reports whether an optional JSON field was given (null counts as
// absent).
func jsonPresent(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// readReason reads the {reason} body of room and user reports, where it is
// required (400 M_MISSING_PARAM without it, M_BAD_JSON when not a string).
func readReason(r *http.Request) (string, error) {
	var body struct {
		Reason json.RawMessage `json:"reason"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return "", err
	}
	if !jsonPresent(body.Reason) {
		return "", mxhttp.MissingParam("Param 'reason' is required")
	}
	var reason string
	if json.Unmarshal(body.Reason, &reason) != nil {
		return "", mxhttp.BadJSON("Param 'reason' must be a string")
	}
	return reason, nil
}

// reportRoom is POST /rooms/{roomId}/report {reason} (spec v1.13). The
// reporter need not be in the room (the spec forbids requiring it); a room
// this server does not know is 404 M_NOT_FOUND, as in Synapse.
func (a *API) reportRoom(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := roomIDPath(r)
	if err != nil {
		return nil, err
	}
	if err := limit(a.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	reason, err := readReason(r)
	if err != nil {
		return nil, err
	}
	if _, err := a.rooms.RoomVersion(ctx, roomID); err != nil {
		if isNotFound(err) {
			return nil, mxhttp.NotFound("The room was not found.")
		}
		return nil, err
	}
	if _, err := a.db.AddReport(ctx, sql.Report{Kind: sql.ReportRoom, Reporter: dev.UserID, RoomID: roomID, Reason: &reason}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// reportUser is POST /users/{userId}/report {reason} (spec v1.14). Like
// Synapse, a report of a user this server does not host, or of a local
// user that does not exist, answers 200 without being stored: the spec
// lets servers hide whether a user exists, and admins here can act on
// local users only.
func (a *API) reportUser(r *http.Request, dev *userapi.Device) (any, error) {
	ctx := r.Context()
	target, err := pathVar(r, "userId")
	if err != nil {
		return nil, err
	}
	if _, err := spec.NewUserID(target, true); err != nil {
		return nil, mxhttp.InvalidParam("Invalid user id %q", target)
	}
	if err := limit(a.messageLimit, dev.UserID); err != nil {
		return nil, err
	}
	reason, err := readReason(r)
	if err != nil {
		return nil, err
	}
	if utf8.RuneCountInString(reason) > maxUserReportReason {
		return nil, mxhttp.BadJSON("Reason must be less than %d characters", maxUserReportReason)
	}
	localpart, err := a.users.LocalpartOf(target)
	if err != nil {
		return struct{}{}, nil
	}
	exists, err := a.db.AccountExists(ctx, localpart)
	if err != nil {
		return nil, err
	}
	if !exists {
		return struct{}{}, nil
	}
	if _, err := a.db.AddReport(ctx, sql.Report{Kind: sql.ReportUser, Reporter: dev.UserID, TargetUserID: target, Reason: &reason}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// Admin API for event reports, compatible with Synapse's
// (/_synapse/admin/v1/event_reports).

// eventReportJSON is an event report as Synapse's admin API shows it.
type eventReportJSON struct {
	ID             int64           `json:"id"`
	ReceivedTS     int64           `json:"received_ts"`
	RoomID         string          `json:"room_id"`
	Name           *string         `json:"name"`
	EventID        string          `json:"event_id"`
	UserID         string          `json:"user_id"`
	Reason         *string         `json:"reason"`
	Score          *int64          `json:"score"`
	Sender         string          `json:"sender"`
	CanonicalAlias *string         `json:"canonical_alias"`
	EventJSON      json.RawMessage `json:"event_json,omitempty"`
}

// eventReport fills in what the admin API shows of a report: the room's
// current name and canonical alias (null when unset).
func (a *API) eventReport(r *http.Request, rep sql.Report) (eventReportJSON, error) {
	out := eventReportJSON{ID: rep.ID, ReceivedTS: rep.ReceivedTS, RoomID: rep.RoomID, EventID: rep.EventID, UserID: rep.Reporter,
		Reason: rep.Reason, Score: rep.Score, Sender: rep.TargetUserID}
	for _, f := range []struct {
		typ, key string
		dst      **string
	}{{spec.MRoomName, "name", &out.Name}, {spec.MRoomCanonicalAlias, "alias", &out.CanonicalAlias}} {
		ev, err := a.rooms.CurrentStateEvent(r.Context(), rep.RoomID, f.typ, "")
		if err != nil {
			return out, err
		}
		if ev == nil {
			continue
		}
		var c map[string]any
		_ = json.Unmarshal(ev.Content(), &c)
		if s, ok := c[f.key].(string); ok {
			*f.dst = &s
		}
	}
	return out, nil
}

type eventReportList struct {
	EventReports []eventReportJSON `json:"event_reports"`
	NextToken    *int              `json:"next_token,omitempty"`
	Total        int64             `json:"total"`
}

// listEventReports is GET /_synapse/admin/v1/event_reports with Synapse's
// parameters: from (an offset), limit (default 100), dir (b, newest first,
// by default; or f), and the substring filters user_id (the reporter),
// room_id and event_sender_user_id.
func (a *API) listEventReports(r *http.Request, _ *userapi.Device) (any, error) {
	v := r.URL.Query()
	nonNegative := func(name string, def int) (int, error) {
		s := v.Get(name)
		if s == "" {
			return def, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, mxhttp.InvalidParam("The %s parameter must be a non-negative integer", name)
		}
		return n, nil
	}
	from, err := nonNegative("from", 0)
	if err != nil {
		return nil, err
	}
	lim, err := nonNegative("limit", 100)
	if err != nil {
		return nil, err
	}
	q := sql.ReportQuery{Kind: sql.ReportEvent, Reporter: v.Get("user_id"), RoomID: v.Get("room_id"),
		TargetUser: v.Get("event_sender_user_id"), Offset: from, Limit: lim}
	switch v.Get("dir") {
	case "", "b":
	case "f":
		q.OldestFirst = true
	default:
		return nil, mxhttp.InvalidParam("Unknown direction: %s", v.Get("dir"))
	}
	reports, total, err := a.db.Reports(r.Context(), q)
	if err != nil {
		return nil, err
	}
	out := eventReportList{EventReports: []eventReportJSON{}, Total: total}
	for _, rep := range reports {
		j, err := a.eventReport(r, rep)
		if err != nil {
			return nil, err
		}
		out.EventReports = append(out.EventReports, j)
	}
	if next := from + len(reports); int64(next) < total && len(reports) > 0 {
		out.NextToken = &next
	}
	return out, nil
}

// eventReportByID reads the {reportId} path variable and the report: 400
// M_INVALID_PARAM unless a positive integer, 404 M_NOT_FOUND if unknown.
func (a *API) eventReportByID(r *http.Request) (sql.Report, error) {
	s, err := pathVar(r, "reportId")
	if err != nil {
		return sql.Report{}, err
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return sql.Report{}, mxhttp.InvalidParam("The report_id parameter must be a string representing a positive integer.")
	}
	rep, err := a.db.ReportByID(r.Context(), sql.ReportEvent, id)
	if errors.Is(err, sql.ErrNotFound) {
		return rep, mxhttp.NotFound("Event report not found")
	}
	return rep, err
}

// getEventReport is GET /_synapse/admin/v1/event_reports/{reportId}: the
// report with the reported event as stored (event_json).
func (a *API) getEventReport(r *http.Request, _ *userapi.Device) (any, error) {
	rep, err := a.eventReportByID(r)
	if err != nil {
		return nil, err
	}
	out, err := a.eventReport(r, rep)
	if err != nil {
		return nil, err
	}
	ev, _, err := a.rooms.Event(r.Context(), rep.EventID)
	switch {
	case err == nil:
		out.EventJSON = ev.JSON
	case !isNotFound(err):
		return nil, err
	}
	return out, nil
}

// deleteEventReport is DELETE /_synapse/admin/v1/event_reports/{reportId}.
func (a *API) deleteEventReport(r *http.Request, _ *userapi.Device) (any, error) {
	rep, err := a.eventReportByID(r)
	if err != nil {
		return nil, err
	}
	if err := a.db.DeleteReport(r.Context(), sql.ReportEvent, rep.ID); err != nil && !errors.Is(err, sql.ErrNotFound) {
		return nil, err
	}
	return struct{}{}, nil
}

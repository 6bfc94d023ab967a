package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/roomserver"
)

// supportedVersions are the room versions this server joins rooms of,
// offered in make_join's ver parameters.
var supportedVersions = func() url.Values {
	q := url.Values{}
	for v := 1; v <= 12; v++ {
		q.Add("ver", strconv.Itoa(v))
	}
	return q
}()

// Joiner joins this server's users to rooms it is not in through servers
// that are (spec: "Joining Rooms"): make_join, the join built from the
// template and signed here, send_join (v2), and the answer checked before
// the roomserver stores it. It implements roomserver.Joiner. It also
// leaves such rooms (Leave) and knocks on them (Knock).
type Joiner struct {
	req  requester
	keys gomatrixserverlib.JSONVerifier
	log  *slog.Logger
	now  func() time.Time
}

// NewJoiner makes the joiner: requests and events are signed with key as
// c's origin, other servers' signatures verified with keys (a *KeyRing).
func NewJoiner(c *Client, key serverkey.Key, keys gomatrixserverlib.JSONVerifier, log *slog.Logger) (*Joiner, error) {
	req, err := newRequester(c, key)
	if err != nil {
		return nil, err
	}
	log = logOr(log)
	return &Joiner{req: req, keys: keys, log: log, now: time.Now}, nil
}

// Join implements roomserver.Joiner. Servers are tried in order, as
// Synapse does: the next one after a failure to reach a server or an
// unusable answer, a 5xx, a 404 (that server is not in the room) or a 400
// M_UNABLE_TO_AUTHORISE_JOIN / M_UNABLE_TO_GRANT_JOIN (spec: "try a
// different server"); any other refusal (403 M_FORBIDDEN, 400
// M_INCOMPATIBLE_ROOM_VERSION…) is the answer, passed on to the client
// as the spec asks, except that a server's M_INVALID_PARAM or
// M_MISSING_PARAM is a failure of ours (502). When no server joins the
// user: the last refusal, or 502 M_UNKNOWN; 404 M_NOT_FOUND when there is
// no server to ask.
func (j *Joiner) Join(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (*roomserver.JoinResult, error) {
	var res *roomserver.JoinResult
	err := j.tryServers(ctx, servers, "join", roomID, userID, func(s spec.ServerName) (err error) {
		res, err = j.joinVia(ctx, s, roomID, userID, content)
		return err
	})
	return res, err
}

// Leave rejects a user's invite to, or retracts their knock on, a room
// this server is not in, through servers that are (spec: "Leaving Rooms
// (Rejecting Invites)"): make_leave, the leave built from the template
// and signed here with content's fields (a reason), then send_leave (v2).
// Servers are tried as Join tries them. It returns the leave as sent.
func (j *Joiner) Leave(ctx context.Context, servers []spec.ServerName, roomID, userID string, content json.RawMessage) (gomatrixserverlib.PDU, error) {
	var leave gomatrixserverlib.PDU
	err := j.tryServers(ctx, servers, "leave", roomID, userID, func(s spec.ServerName) error {
		made, err := j.make(ctx, s, "leave", roomID, userID, "")
		if err != nil {
			return err
		}
		_, ev, err := j.buildFromTemplate(made, roomID, userID, spec.Leave, content)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		path := "/_matrix/federation/v2/send_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID())
		if err := j.req.do(ctx, http.MethodPut, s, path, json.RawMessage(ev.JSON()), &struct{}{}); err != nil {
			return err
		}
		leave = ev
		return nil
	})
	return leave, err
}

// tryServers runs a handshake with each server in turn (not ours) until
// one succeeds or fails for good (see Join).
func (j *Joiner) tryServers(ctx context.Context, servers []spec.ServerName, what, roomID, userID string, try func(spec.ServerName) error) error {
	var last error
	for _, s := range servers {
		if s == j.req.origin {
			continue
		}
		err := try(s)
		if err == nil {
			return nil
		}
		j.log.InfoContext(ctx, "federated "+what+" failed", "room_id", roomID, "user_id", userID, "server", s, "err", err)
		last = err
		if !failover(err) {
			break
		}
	}
	if last == nil {
		return mxhttp.NotFound("No server to %s room %s through", what, roomID)
	}
	return clientError(last, what+" "+roomID)
}

// make asks server for a make_join, make_leave or make_knock template
// (kind).
func (j *Joiner) make(ctx context.Context, server spec.ServerName, kind, roomID, userID, query string) (makeResponse, error) {
	path := "/_matrix/federation/v1/make_" + kind + "/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID)
	if query != "" {
		path += "?" + query
	}
	var made makeResponse
	err := j.req.do(ctx, http.MethodGet, server, path, nil, &made)
	return made, err
}

// failover reports whether a failed handshake should be tried with the
// next server.
func failover(err error) bool {
	var re *remoteError
	if !errors.As(err, &re) {
		return true
	}
	switch {
	case re.status >= 500, re.status == http.StatusNotFound, re.status == http.StatusTooManyRequests:
		return true
	case re.status == http.StatusBadRequest:
		return re.code == "M_UNABLE_TO_AUTHORISE_JOIN" || re.code == "M_UNABLE_TO_GRANT_JOIN"
	}
	return false
}

// clientError turns the last failure of a handshake into the client's
// answer (see Join).
func clientError(err error, what string) error {
	var re *remoteError
	if errors.As(err, &re) && re.status/100 == 4 && re.code != "" && re.code != "M_INVALID_PARAM" && re.code != "M_MISSING_PARAM" {
		return &mxhttp.Error{Status: re.status, Code: re.code, Message: fmt.Sprintf("%s: %s", re.server, re.message), Cause: err}
	}
	return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN",
		Message: fmt.Sprintf("Could not %s through any server: %v", what, err), Cause: err}
}

// makeResponse is the answer of make_join and make_leave.
type makeResponse struct {
	RoomVersion string          `json:"room_version"`
	Event       json.RawMessage `json:"event"`
}

// sendJoinAnswer is the answer of send_join v2.
type sendJoinAnswer struct {
	State     []json.RawMessage `json:"state"`
	AuthChain []json.RawMessage `json:"auth_chain"`
	Event     json.RawMessage   `json:"event"`
}

// joinVia runs the handshake with one server.
func (j *Joiner) joinVia(ctx context.Context, server spec.ServerName, roomID, userID string, content json.RawMessage) (*roomserver.JoinResult, error) {
	made, err := j.make(ctx, server, "join", roomID, userID, supportedVersions.Encode())
	if err != nil {
		return nil, err
	}
	verImpl, ours, err := j.buildFromTemplate(made, roomID, userID, spec.Join, content)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", server, err)
	}
	var sent sendJoinAnswer
	path := "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(ours.EventID()) + "?omit_members=false"
	if err := j.req.do(ctx, http.MethodPut, server, path, json.RawMessage(ours.JSON()), &sent); err != nil {
		return nil, err
	}
	join, err := j.countersigned(ctx, verImpl, ours, sent.Event)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", server, err)
	}
	state, chain, err := checkJoinState(ctx, j.keys, verImpl, roomID, join, sent.State, sent.AuthChain)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", server, err)
	}
	return &roomserver.JoinResult{RoomVersion: verImpl, Server: server, Event: join, State: state, AuthChain: chain}, nil
}

// buildFromTemplate checks a make_ answer as the spec asks (room id,
// sender and state key, type and membership are what we asked for; the
// room version is one we support; a missing one means "1") and builds
// our event from it, signed: the template's content with ours on top.
func (j *Joiner) buildFromTemplate(made makeResponse, roomID, userID, membership string, content json.RawMessage) (gomatrixserverlib.IRoomVersion, gomatrixserverlib.PDU, error) {
	version := made.RoomVersion
	if version == "" {
		version = "1"
	}
	if !slices.Contains(supportedVersions["ver"], version) {
		return nil, nil, fmt.Errorf("the room's version %q is not one this server supports", version)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, nil, err
	}
	var proto gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(made.Event, &proto); err != nil {
		return nil, nil, fmt.Errorf("malformed template: %w", err)
	}
	// The builder trusts the shape of these (and panics on some shapes).
	var refs struct {
		Prev []json.RawMessage `json:"prev_events"`
		Auth []json.RawMessage `json:"auth_events"`
	}
	_ = json.Unmarshal(made.Event, &refs)
	if proto.PrevEvents, err = refIDs(refs.Prev); err != nil {
		return nil, nil, fmt.Errorf("the template's prev_events: %w", err)
	}
	if proto.AuthEvents, err = refIDs(refs.Auth); err != nil {
		return nil, nil, fmt.Errorf("the template's auth_events: %w", err)
	}
	var fields map[string]any
	if err := json.Unmarshal(proto.Content, &fields); err != nil || fields == nil {
		return nil, nil, errors.New("the template's content is not an object")
	}
	switch {
	case proto.RoomID != roomID:
		return nil, nil, fmt.Errorf("the template is for room %q", proto.RoomID)
	case proto.SenderID != userID || proto.StateKey == nil || *proto.StateKey != userID:
		return nil, nil, fmt.Errorf("the template is for sender %q", proto.SenderID)
	case proto.Type != spec.MRoomMember:
		return nil, nil, fmt.Errorf("the template is of type %q", proto.Type)
	case fields["membership"] != membership:
		return nil, nil, fmt.Errorf("the template's membership is %v, not %s", fields["membership"], membership)
	}
	var ourFields map[string]any
	if len(content) > 0 {
		if err := json.Unmarshal(content, &ourFields); err != nil {
			return nil, nil, fmt.Errorf("member content: %w", err)
		}
	}
	for k, v := range ourFields {
		// The resident server's fields are its to choose.
		if _, set := fields[k]; !set {
			fields[k] = v
		}
	}
	if proto.Content, err = json.Marshal(fields); err != nil {
		return nil, nil, err
	}
	proto.Redacts, proto.Signature, proto.Unsigned, proto.Version = "", nil, nil, verImpl
	ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(j.now(), j.req.origin, j.req.key.ID, j.req.key.Private)
	if err != nil {
		return nil, nil, fmt.Errorf("build from the template: %w", err)
	}
	return verImpl, ev, nil
}

// refIDs reads event references in either format, event ids (room
// version 3 and later) or [event id, hashes] pairs (versions 1 and 2),
// into event ids; an entry of neither form is an error.
func refIDs(refs []json.RawMessage) ([]string, error) {
	ids := make([]string, 0, len(refs))
	for _, raw := range refs {
		var id string
		if json.Unmarshal(raw, &id) != nil {
			var pair []json.RawMessage
			if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 || json.Unmarshal(pair[0], &id) != nil {
				return nil, fmt.Errorf("%s is not an event reference", raw)
			}
		}
		if !strings.HasPrefix(id, "$") || len(id) < 2 {
			return nil, fmt.Errorf("%q is not an event id", id)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// countersigned is our join as the resident server sent it back (spec:
// it adds its signature, which restricted joins need): the same event,
// byte for byte apart from signatures, with every signature it needs
// verified. Without an event in the answer it is ours as we sent it.
func (j *Joiner) countersigned(ctx context.Context, verImpl gomatrixserverlib.IRoomVersion, ours gomatrixserverlib.PDU, returned json.RawMessage) (gomatrixserverlib.PDU, error) {
	join := ours
	if len(returned) > 0 && string(returned) != "null" {
		ev, err := parseInRoom(verImpl, ours.RoomID().String(), returned)
		if err != nil {
			return nil, fmt.Errorf("the join sent back does not parse: %w", err)
		}
		same, err := sameUnsigned(ours.JSON(), ev.JSON())
		if err != nil {
			return nil, err
		}
		if ev.EventID() != ours.EventID() || !same {
			return nil, fmt.Errorf("the join sent back (%s) is not the one we sent (%s)", ev.EventID(), ours.EventID())
		}
		join = ev
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, join, j.keys, userIDForSender); err != nil {
		return nil, fmt.Errorf("the join's signatures: %w", err)
	}
	return join, nil
}

// sameUnsigned reports whether two events are the same apart from their
// signatures and unsigned data.
func sameUnsigned(a, b []byte) (bool, error) {
	strip := func(js []byte) ([]byte, error) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(js, &m); err != nil {
			return nil, err
		}
		delete(m, "signatures")
		delete(m, "unsigned")
		raw, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		return gomatrixserverlib.CanonicalJSON(raw)
	}
	x, err := strip(a)
	if err != nil {
		return false, err
	}
	y, err := strip(b)
	if err != nil {
		return false, err
	}
	return string(x) == string(y), nil
}

// checkJoinState checks the state and auth chain of a send_join answer
// (spec: "Joining Rooms"; what gomatrixserverlib.CheckSendJoinResponse
// checks, and more): every event parses in the room version (a bad
// content hash leaves it redacted), belongs to the room, carries the
// signatures it needs and passes the auth rules against its own auth
// events, which must be the right selection (auth rules 2 and 3) and
// accepted themselves; the state has one event per key, among them the
// room's create event (whose hash is the room id in version 12), and the
// join passes the auth rules against both its auth events and the state.
// Events that fail are dropped, as Synapse drops them; two state events
// for one key, or a failure of the create event or of the join, fail the
// whole answer.
func checkJoinState(ctx context.Context, keys gomatrixserverlib.JSONVerifier, verImpl gomatrixserverlib.IRoomVersion, roomID string,
	join gomatrixserverlib.PDU, rawState, rawChain []json.RawMessage) (state, chain []gomatrixserverlib.PDU, err error) {
	// Each distinct event is parsed once, with its signed form (see
	// signedForms), which gives its id, on every core; an event without
	// a form fails its signatures below. The auth chain repeats much of
	// the state (the members' joins, the create event, the power
	// levels): the same bytes are parsed once.
	type parsed struct {
		pdu  gomatrixserverlib.PDU
		form *signedForm
		err  error
	}
	first := make(map[string]int, len(rawState)+len(rawChain))
	var distinct []json.RawMessage
	refs := func(raws []json.RawMessage) []int {
		out := make([]int, len(raws))
		for i, raw := range raws {
			j, seen := first[string(raw)]
			if !seen {
				j = len(distinct)
				first[string(raw)] = j
				distinct = append(distinct, raw)
			}
			out[i] = j
		}
		return out
	}
	chainRefs, stateRefs := refs(rawChain), refs(rawState)
	ps := make([]parsed, len(distinct))
	inParallel(len(distinct), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			pdu, err := parseInRoom(verImpl, roomID, distinct[i])
			if err != nil {
				continue
			}
			ps[i].pdu = pdu
			if ev, form, err := withSignedForm(pdu); err != nil {
				ps[i].err = fmt.Errorf("event %s: %w", pdu.EventID(), err)
			} else {
				ps[i].pdu, ps[i].form = ev, form
			}
		}
	})
	pick := func(refs []int) []gomatrixserverlib.PDU {
		out := make([]gomatrixserverlib.PDU, 0, len(refs))
		for _, j := range refs {
			if ps[j].pdu != nil {
				out = append(out, ps[j].pdu)
			}
		}
		return out
	}
	state, chain = pick(stateRefs), pick(chainRefs)
	keysSeen := make(map[gomatrixserverlib.StateKeyTuple]bool, len(state))
	for _, ev := range state {
		if ev.StateKey() == nil {
			return nil, nil, fmt.Errorf("state event %s has no state key", ev.EventID())
		}
		k := gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}
		if keysSeen[k] {
			return nil, nil, fmt.Errorf("the state has two events for (%s, %q)", k.EventType, k.StateKey)
		}
		keysSeen[k] = true
	}
	byID := make(map[string]gomatrixserverlib.PDU, len(state)+len(chain))
	var all []gomatrixserverlib.PDU
	var forms []*signedForm
	var errs []error
	for _, p := range ps {
		if p.pdu == nil || byID[p.pdu.EventID()] != nil {
			continue
		}
		byID[p.pdu.EventID()] = p.pdu
		all, forms, errs = append(all, p.pdu), append(forms, p.form), append(errs, p.err)
	}
	if err := verifySignedForms(ctx, keys, all, forms, errs); err != nil {
		return nil, nil, err
	}
	for i, err := range errs {
		if err != nil {
			delete(byID, all[i].EventID())
		}
	}
	accepted := authCheck(byID)
	keep := func(evs []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
		out := evs[:0]
		for _, ev := range evs {
			if accepted[ev.EventID()] {
				out = append(out, ev)
			}
		}
		return out
	}
	state, chain = keep(state), keep(chain)

	var create gomatrixserverlib.PDU
	for _, ev := range state {
		if ev.Type() == spec.MRoomCreate && *ev.StateKey() == "" {
			create = ev
		}
	}
	if create == nil {
		return nil, nil, errors.New("the state has no valid create event for the room")
	}
	var createContent struct {
		RoomVersion *string `json:"room_version"`
	}
	_ = json.Unmarshal(create.Content(), &createContent)
	if createVersion := createContent.RoomVersion; (createVersion == nil && verImpl.Version() != "1") ||
		(createVersion != nil && *createVersion != string(verImpl.Version())) {
		return nil, nil, errors.New("the room's create event names another room version than make_join")
	}
	if err := checkAuthSelection(join, byID, accepted); err != nil {
		return nil, nil, fmt.Errorf("the join is not allowed by its auth events: %w", err)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		return nil, nil, err
	}
	if err := gomatrixserverlib.Allowed(join, provider, userIDForSender); err != nil {
		return nil, nil, fmt.Errorf("the join is not allowed by the room's state: %w", err)
	}
	return state, chain, nil
}

// parallelMin is the least work worth a goroutine of its own, in events.
const parallelMin = 256

// inParallel runs f on contiguous shares of [0, n), one goroutine per
// core, and waits for them.
func inParallel(n int, f func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), (n+parallelMin-1)/parallelMin)
	if workers <= 1 {
		f(0, n)
		return
	}
	size := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += size {
		wg.Go(func() { f(lo, min(lo+size, n)) })
	}
	wg.Wait()
}

// authCheck returns the events of byID that pass the auth rules against
// their own auth events (see checkAuthSelection), each auth event
// checked first; an event whose auth events are missing, rejected or
// form a cycle is rejected. The events are checked a level at a time,
// each level's on every core: those whose auth events are all of lower
// levels (in a room's state, most events stand on the same few: the
// create event, the power levels, their sender's membership).
func authCheck(byID map[string]gomatrixserverlib.PDU) map[string]bool {
	const (
		checking = -1
		unusable = -2 // an auth event missing, or a cycle
	)
	level := make(map[string]int, len(byID))
	var levelOf func(ev gomatrixserverlib.PDU) int
	levelOf = func(ev gomatrixserverlib.PDU) int {
		if l, seen := level[ev.EventID()]; seen {
			if l == checking {
				return unusable
			}
			return l
		}
		level[ev.EventID()] = checking
		l := 0
		for _, id := range ev.AuthEventIDs() {
			a, found := byID[id]
			al := unusable
			if found {
				al = levelOf(a)
			}
			if al == unusable {
				l = unusable
				break
			}
			l = max(l, al+1)
		}
		level[ev.EventID()] = l
		return l
	}
	var levels [][]gomatrixserverlib.PDU
	for _, ev := range byID {
		if l := levelOf(ev); l >= 0 {
			for len(levels) <= l {
				levels = append(levels, nil)
			}
			levels[l] = append(levels[l], ev)
		}
	}
	accepted := make(map[string]bool, len(byID))
	for _, evs := range levels {
		ok := make([]bool, len(evs))
		// The checks of a level only read accepted, written between
		// levels.
		inParallel(len(evs), func(lo, hi int) {
			for i := lo; i < hi; i++ {
				ok[i] = checkAuthSelection(evs[i], byID, accepted) == nil
			}
		})
		for i, ev := range evs {
			if ok[i] {
				accepted[ev.EventID()] = true
			}
		}
	}
	return accepted
}

// checkAuthSelection applies auth rules 2 and 3 and the rest of the
// rules to ev against its auth events: they are accepted, one per
// (type, state key), only of the kinds the rules select, and allow ev.
// gomatrixserverlib.Allowed checks the last only.
func checkAuthSelection(ev gomatrixserverlib.PDU, byID map[string]gomatrixserverlib.PDU, accepted map[string]bool) error {
	want := make(map[gomatrixserverlib.StateKeyTuple]bool)
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
		want[t] = true
	}
	seen := make(map[gomatrixserverlib.StateKeyTuple]bool)
	var auth []gomatrixserverlib.PDU
	for _, id := range ev.AuthEventIDs() {
		a, found := byID[id]
		if !found || !accepted[id] {
			return fmt.Errorf("auth event %s is missing or rejected", id)
		}
		if a.StateKey() == nil {
			return fmt.Errorf("auth event %s is not a state event", id)
		}
		k := gomatrixserverlib.StateKeyTuple{EventType: a.Type(), StateKey: *a.StateKey()}
		if seen[k] {
			return fmt.Errorf("two auth events for (%s, %q)", k.EventType, k.StateKey)
		}
		seen[k] = true
		if !want[k] {
			return fmt.Errorf("auth event %s is not one the auth rules select", id)
		}
		auth = append(auth, a)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(auth)
	if err != nil {
		return err
	}
	return gomatrixserverlib.Allowed(ev, provider, userIDForSender)
}

// RemoteAliases resolves room aliases of other servers (spec: GET
// /_matrix/federation/v1/query/directory).
type RemoteAliases struct {
	req requester
}

// NewRemoteAliases makes the resolver; requests are signed with key as
// c's origin.
func NewRemoteAliases(c *Client, key serverkey.Key) (*RemoteAliases, error) {
	req, err := newRequester(c, key)
	if err != nil {
		return nil, err
	}
	return &RemoteAliases{req: req}, nil
}

// ResolveAlias asks the alias's server for the room and the servers to
// join it through: 404 M_NOT_FOUND when that server does not know the
// alias, 502 M_UNKNOWN when it cannot be asked or answers nonsense.
func (a *RemoteAliases) ResolveAlias(ctx context.Context, alias string) (roomID string, servers []string, err error) {
	_, server, ok := strings.Cut(alias, ":")
	if !strings.HasPrefix(alias, "#") || !ok {
		return "", nil, mxhttp.InvalidParam("%q is not a room alias", alias)
	}
	var out struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	err = a.req.do(ctx, http.MethodGet, spec.ServerName(server), "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape(alias), nil, &out)
	var re *remoteError
	switch {
	case errors.As(err, &re) && re.status == http.StatusNotFound:
		return "", nil, mxhttp.NotFound("Room alias %s not found", alias)
	case err != nil:
		return "", nil, &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("Could not resolve %s: %v", alias, err), Cause: err}
	}
	if _, err := spec.NewRoomID(out.RoomID); err != nil {
		return "", nil, mxhttp.Errorf(http.StatusBadGateway, "M_UNKNOWN", "%s answered an invalid room id for %s", server, alias)
	}
	return out.RoomID, out.Servers, nil
}

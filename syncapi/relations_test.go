package syncapi_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

var reactionType = event.Type{Type: "m.reaction", Class: event.MessageEventType}

func relatesTo(relType, parent string) map[string]any {
	return map[string]any{"m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}}
}

func edit(parent, body string) map[string]any {
	c := relatesTo("m.replace", parent)
	c["m.new_content"] = map[string]any{"msgtype": "m.text", "body": body}
	return c
}

// relationsResponse is the body of /relations.
type relationsResponse struct {
	Chunk          []clientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch"`
	PrevBatch      string        `json:"prev_batch"`
	RecursionDepth *int          `json:"recursion_depth"`
}

// threadSummary is the m.thread aggregation.
type threadSummary struct {
	LatestEvent             clientEvent `json:"latest_event"`
	Count                   int         `json:"count"`
	CurrentUserParticipated bool        `json:"current_user_participated"`
}

func (e clientEvent) thread(t *testing.T) *threadSummary {
	t.Helper()
	raw, ok := e.Unsigned.Relations["m.thread"]
	if !ok {
		return nil
	}
	var s threadSummary
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func (e clientEvent) replacement(t *testing.T) *clientEvent {
	t.Helper()
	raw, ok := e.Unsigned.Relations["m.replace"]
	if !ok {
		return nil
	}
	var r clientEvent
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// relationsRoom is a room with a thread, edits, a reaction and a
// reference around one root event.
type relationsRoom struct {
	roomID                                  string
	alice, bob, carol, mallory              *mautrix.Client
	root, t1, t2, r1, e1, e2, ebad, ref, te string
}

func newRelationsRoom(t *testing.T, h hs) *relationsRoom {
	r := &relationsRoom{alice: h.user(t, "alice"), bob: h.user(t, "bob"), carol: h.user(t, "carol"), mallory: h.user(t, "mallory")}
	r.roomID = roomWithVisibility(t, r.alice, "shared")
	join(t, r.bob, r.roomID)
	join(t, r.carol, r.roomID)
	r.root = send(t, r.alice, r.roomID, "root", nil)
	r.t1 = send(t, r.bob, r.roomID, "t1", relatesTo("m.thread", r.root))
	r.t2 = send(t, r.alice, r.roomID, "t2", relatesTo("m.thread", r.root))
	reaction := relatesTo("m.annotation", r.t1)
	reaction["m.relates_to"].(map[string]any)["key"] = "👍"
	r.r1 = sendType(t, r.carol, r.roomID, reactionType, "", reaction)
	r.e1 = send(t, r.alice, r.roomID, "* root v1", edit(r.root, "root v1"))
	r.e2 = send(t, r.alice, r.roomID, "* root v2", edit(r.root, "root v2"))
	r.ebad = send(t, r.bob, r.roomID, "* not yours", edit(r.root, "hijacked")) // another sender: not a valid edit
	r.ref = send(t, r.carol, r.roomID, "see above", relatesTo("m.reference", r.root))
	r.te = send(t, r.alice, r.roomID, "* t2 edited", edit(r.t2, "t2 edited"))
	return r
}

func (r *relationsRoom) path(parent string, rest ...string) string {
	p := "/_matrix/client/v1/rooms/" + esc(r.roomID) + "/relations/" + esc(parent)
	for _, s := range rest {
		p += "/" + esc(s)
	}
	return p
}

// TestRelations: children newest first, filtered by relation and event
// type, paginated in both directions, and followed recursively (spec:
// Relationships API, relations.yaml).
func TestRelations(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		r := newRelationsRoom(t, h)
		get := func(path string, q url.Values) relationsResponse {
			t.Helper()
			var resp relationsResponse
			h.getJSON(t, r.bob, path, q, &resp)
			return resp
		}
		for _, c := range []struct {
			name  string
			path  string
			q     url.Values
			want  []string
			depth int // 0: recursion_depth absent
		}{
			{"all children", r.path(r.root), nil, []string{r.ref, r.ebad, r.e2, r.e1, r.t2, r.t1}, 0},
			{"forwards", r.path(r.root), url.Values{"dir": {"f"}}, []string{r.t1, r.t2, r.e1, r.e2, r.ebad, r.ref}, 0},
			{"rel type", r.path(r.root, "m.thread"), nil, []string{r.t2, r.t1}, 0},
			{"rel and event type", r.path(r.root, "m.thread", "m.room.message"), nil, []string{r.t2, r.t1}, 0},
			{"other event type", r.path(r.root, "m.thread", "m.reaction"), nil, nil, 0},
			{"annotations of t1", r.path(r.t1, "m.annotation", "m.reaction"), nil, []string{r.r1}, 0},
			{"recurse", r.path(r.root), url.Values{"recurse": {"true"}}, []string{r.te, r.ref, r.ebad, r.e2, r.e1, r.r1, r.t2, r.t1}, 3},
			{"recurse false", r.path(r.root), url.Values{"recurse": {"false"}}, []string{r.ref, r.ebad, r.e2, r.e1, r.t2, r.t1}, 1},
			// Filters apply at every level: the reaction hangs off a thread
			// event, so it is not an annotation reachable from the root.
			{"recurse with rel type", r.path(r.root, "m.annotation"), url.Values{"recurse": {"true"}}, nil, 3},
			{"recurse with event type", r.path(r.root, "m.thread", "m.room.message"), url.Values{"recurse": {"true"}}, []string{r.t2, r.t1}, 3},
		} {
			c.q = withLimit(c.q, 100)
			resp := get(c.path, c.q)
			if got := eventIDs(resp.Chunk); !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
				t.Errorf("%s: %v, want %v", c.name, got, c.want)
			}
			if resp.NextBatch != "" || resp.PrevBatch != "" {
				t.Errorf("%s: tokens %q %q on a single page", c.name, resp.NextBatch, resp.PrevBatch)
			}
			switch {
			case c.depth == 0 && resp.RecursionDepth != nil:
				t.Errorf("%s: recursion_depth %d without recurse", c.name, *resp.RecursionDepth)
			case c.depth != 0 && (resp.RecursionDepth == nil || *resp.RecursionDepth != c.depth):
				t.Errorf("%s: recursion_depth %v, want %d", c.name, resp.RecursionDepth, c.depth)
			}
		}

		// Pages of every size, both ways: each child once, in order.
		want := []string{r.ref, r.ebad, r.e2, r.e1, r.t2, r.t1}
		for limit := 1; limit <= len(want); limit++ {
			for _, dir := range []string{"b", "f"} {
				var got []string
				from := ""
				for pages := 0; pages <= len(want); pages++ {
					q := url.Values{"limit": {strconv.Itoa(limit)}, "dir": {dir}}
					if from != "" {
						q.Set("from", from)
					}
					resp := get(r.path(r.root), q)
					if resp.PrevBatch != from {
						t.Fatalf("prev_batch %q, want the from token %q", resp.PrevBatch, from)
					}
					got = append(got, eventIDs(resp.Chunk)...)
					if resp.NextBatch == "" {
						break
					}
					from = resp.NextBatch
				}
				w := slices.Clone(want)
				if dir == "f" {
					slices.Reverse(w)
				}
				if !slices.Equal(got, w) {
					t.Fatalf("limit %d dir %s: %v, want %v", limit, dir, got, w)
				}
			}
		}
		// from page 1 and to page 2 bound the same range (relations.yaml).
		p1 := get(r.path(r.root), url.Values{"limit": {"2"}})
		p2 := get(r.path(r.root), url.Values{"limit": {"2"}, "from": {p1.NextBatch}})
		both := get(r.path(r.root), url.Values{"limit": {"10"}, "to": {p2.NextBatch}})
		if got := eventIDs(both.Chunk); !slices.Equal(got, want[:4]) {
			t.Fatalf("up to page 2's token: %v, want %v", got, want[:4])
		}
		// A /messages token works as from.
		msgs := h.messages(t, r.bob, r.roomID, url.Values{"dir": {"b"}, "limit": {"3"}}) // te, ref, ebad
		rest := get(r.path(r.root), url.Values{"limit": {"10"}, "from": {msgs.End}})
		if got := eventIDs(rest.Chunk); !slices.Equal(got, want[2:]) {
			t.Fatalf("from a /messages token: %v, want %v", got, want[2:])
		}
	})
}

func withLimit(q url.Values, limit int) url.Values {
	if q == nil {
		q = url.Values{}
	}
	q.Set("limit", strconv.Itoa(limit))
	return q
}

// TestRelationsErrors: 404 for parents that are unknown, elsewhere or
// hidden; 403 outside the room; 400 for bad parameters.
func TestRelationsErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		r := newRelationsRoom(t, h)
		other := roomWithVisibility(t, r.alice, "shared")
		elsewhere := send(t, r.alice, other, "elsewhere", nil)
		wantError(t, "unknown parent", h.get(t, r.bob, r.path("$nope"), nil), http.StatusNotFound, "M_NOT_FOUND")
		wantError(t, "parent in another room", h.get(t, r.bob, r.path(elsewhere), nil), http.StatusNotFound, "M_NOT_FOUND")
		wantError(t, "not a member", h.get(t, r.mallory, r.path(r.root), nil), http.StatusForbidden, "M_FORBIDDEN")
		for _, q := range []url.Values{{"dir": {"x"}}, {"recurse": {"yes"}}, {"from": {"t1"}}, {"to": {"bad"}}, {"limit": {"-3"}}} {
			wantError(t, "bad "+q.Encode(), h.get(t, r.bob, r.path(r.root), q), http.StatusBadRequest, "M_INVALID_PARAM")
		}
		// History visibility: in a "joined" room, a late joiner cannot see
		// an earlier parent, so it is not found.
		hidden := roomWithVisibility(t, r.alice, "joined")
		early := send(t, r.alice, hidden, "before you came", nil)
		send(t, r.alice, hidden, "reply", relatesTo("m.thread", early))
		join(t, r.bob, hidden)
		wantError(t, "hidden parent", h.get(t, r.bob, "/_matrix/client/v1/rooms/"+esc(hidden)+"/relations/"+esc(early), nil),
			http.StatusNotFound, "M_NOT_FOUND")
		// Children hidden by history visibility are left out: bob sees
		// his own reply only, not alice's earlier one.
		visibleRoot := send(t, r.bob, hidden, "bob's root", nil)
		var resp relationsResponse
		h.getJSON(t, r.alice, "/_matrix/client/v1/rooms/"+esc(hidden)+"/relations/"+esc(visibleRoot), nil, &resp)
		if len(resp.Chunk) != 0 {
			t.Fatalf("relations of a childless event: %v", eventIDs(resp.Chunk))
		}
		// The endpoint is v1 only.
		wantError(t, "v3 path", h.get(t, r.bob, roomPath("v3", r.roomID, "/relations/"+esc(r.root)), nil), http.StatusNotFound, "M_UNRECOGNIZED")
	})
}

// TestBundledAggregations: /messages, /context and /relations carry the
// thread summary, the latest edit and the references of an event (spec:
// Aggregations of child events; Threading; Event replacements).
func TestBundledAggregations(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		r := newRelationsRoom(t, h)
		rootAs := func(cli *mautrix.Client) clientEvent {
			t.Helper()
			for _, e := range h.allEvents(t, cli, r.roomID) {
				if e.EventID == r.root {
					return e
				}
			}
			t.Fatal("root not served")
			return clientEvent{}
		}
		root := rootAs(r.bob)
		th := root.thread(t)
		if th == nil || th.Count != 2 || th.LatestEvent.EventID != r.t2 || !th.CurrentUserParticipated {
			t.Fatalf("thread summary for bob: %+v", th)
		}
		if th.LatestEvent.body() != "t2" || th.LatestEvent.RoomID != r.roomID {
			t.Fatalf("latest event is not served in full: %+v", th.LatestEvent)
		}
		// The latest event carries its own aggregations: its edit.
		if ed := th.LatestEvent.replacement(t); ed == nil || ed.EventID != r.te {
			t.Fatalf("latest thread event's edit: %+v", ed)
		}
		// The latest valid edit, not bob's, and the content left as sent.
		if ed := root.replacement(t); ed == nil || ed.EventID != r.e2 || ed.Sender != r.alice.UserID.String() {
			t.Fatalf("m.replace: %+v", ed)
		}
		if root.body() != "root" {
			t.Fatalf("edit applied to the content: %q", root.body())
		}
		var refs struct {
			Chunk []struct {
				EventID string `json:"event_id"`
			} `json:"chunk"`
		}
		if err := json.Unmarshal(root.Unsigned.Relations["m.reference"], &refs); err != nil || len(refs.Chunk) != 1 || refs.Chunk[0].EventID != r.ref {
			t.Fatalf("m.reference: %s %v", root.Unsigned.Relations["m.reference"], err)
		}
		// Annotations are not aggregated.
		for _, e := range h.allEvents(t, r.bob, r.roomID) {
			if _, ok := e.Unsigned.Relations["m.annotation"]; ok {
				t.Fatalf("%s has an m.annotation aggregation", e.EventID)
			}
		}
		// current_user_participated: the root's sender (alice) and a
		// replier (bob) did; carol only reacted.
		if th := rootAs(r.alice).thread(t); !th.CurrentUserParticipated {
			t.Fatal("alice sent the root but did not participate")
		}
		if th := rootAs(r.carol).thread(t); th.CurrentUserParticipated {
			t.Fatal("carol participated by reacting")
		}
		// Same bundles from /context and /relations.
		var c contextResponse
		h.getJSON(t, r.bob, roomPath("v3", r.roomID, "/context/"+esc(r.root)), nil, &c)
		if th := c.Event.thread(t); th == nil || th.Count != 2 {
			t.Fatalf("/context thread summary %+v", th)
		}
		var rel relationsResponse
		h.getJSON(t, r.bob, r.path(r.root, "m.thread"), nil, &rel)
		if ed := rel.Chunk[0].replacement(t); rel.Chunk[0].EventID != r.t2 || ed == nil || ed.EventID != r.te {
			t.Fatalf("/relations child bundle: %v", rel.Chunk[0].Unsigned.Relations)
		}

		// Ignoring bob: his reply no longer counts for carol.
		if err := r.carol.SetAccountData(t.Context(), "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{r.bob.UserID.String(): map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		if th := rootAs(r.carol).thread(t); th.Count != 1 || th.LatestEvent.EventID != r.t2 {
			t.Fatalf("thread summary ignoring bob: %+v", th)
		}
		// A new reply by bob is the latest for others, not for carol.
		t3 := send(t, r.bob, r.roomID, "t3", relatesTo("m.thread", r.root))
		if th := rootAs(r.alice).thread(t); th.Count != 3 || th.LatestEvent.EventID != t3 {
			t.Fatalf("thread summary after t3: %+v", th)
		}
		if th := rootAs(r.carol).thread(t); th.Count != 1 || th.LatestEvent.EventID != r.t2 {
			t.Fatalf("carol's thread summary after t3: %+v", th)
		}

		// Redacting the latest edit falls back to the one before; a
		// redacted reply leaves the thread.
		if _, err := r.alice.RedactEvent(t.Context(), id.RoomID(r.roomID), id.EventID(r.e2)); err != nil {
			t.Fatal(err)
		}
		if ed := rootAs(r.bob).replacement(t); ed == nil || ed.EventID != r.e1 {
			t.Fatalf("m.replace after redacting the latest edit: %+v", ed)
		}
		if _, err := r.bob.RedactEvent(t.Context(), id.RoomID(r.roomID), id.EventID(t3)); err != nil {
			t.Fatal(err)
		}
		if th := rootAs(r.alice).thread(t); th.Count != 2 || th.LatestEvent.EventID != r.t2 {
			t.Fatalf("thread summary after redacting t3: %+v", th)
		}
		// A redacted original gets no m.replace at all.
		if _, err := r.alice.RedactEvent(t.Context(), id.RoomID(r.roomID), id.EventID(r.root)); err != nil {
			t.Fatal(err)
		}
		if ed := rootAs(r.bob).replacement(t); ed != nil {
			t.Fatalf("m.replace on a redacted original: %+v", ed)
		}
	})
}

// TestBundledAggregationsInSync: /sync's timelines carry the bundles, in
// the initial sync (several rooms read at once) and an incremental one,
// and the events without children carry none.
func TestBundledAggregationsInSync(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		r := newRelationsRoom(t, h)
		createRoom(t, r.bob, &mautrix.ReqCreateRoom{}) // a second room: the initial sync reads them together
		q := url.Values{"filter": {filterJSON(map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 50}}})}}
		timeline := func(resp syncResp) map[string]clientEvent {
			t.Helper()
			j, ok := resp.joined(r.roomID)
			if !ok {
				t.Fatal("room not in the sync")
			}
			out := make(map[string]clientEvent)
			for _, e := range j.Timeline.Events {
				out[e.EventID] = e
			}
			return out
		}
		initial := h.sync(t, r.bob, q)
		evs := timeline(initial)
		root := evs[r.root]
		if th := root.thread(t); th == nil || th.Count != 2 || th.LatestEvent.EventID != r.t2 {
			t.Fatalf("thread summary in /sync: %+v", th)
		} else if ed := th.LatestEvent.replacement(t); ed == nil || ed.EventID != r.te {
			t.Fatalf("latest thread event's edit in /sync: %+v", ed)
		}
		if ed := root.replacement(t); ed == nil || ed.EventID != r.e2 {
			t.Fatalf("m.replace in /sync: %+v", ed)
		}
		if _, ok := root.Unsigned.Relations["m.reference"]; !ok {
			t.Fatalf("no m.reference in /sync: %v", root.Unsigned.Relations)
		}
		for _, id := range []string{r.ref, r.e1, r.r1} {
			if rel := evs[id].Unsigned.Relations; rel != nil {
				t.Fatalf("%s has no children but m.relations %v", id, rel)
			}
		}

		plain := send(t, r.alice, r.roomID, "plain", nil)
		edited := send(t, r.alice, r.roomID, "v0", nil)
		e := send(t, r.alice, r.roomID, "* v1", edit(edited, "v1"))
		q.Set("since", initial.NextBatch)
		q.Set("timeout", "0")
		evs = timeline(h.sync(t, r.bob, q))
		if ed := evs[edited].replacement(t); ed == nil || ed.EventID != e {
			t.Fatalf("m.replace in an incremental /sync: %+v", ed)
		}
		if rel := evs[plain].Unsigned.Relations; rel != nil {
			t.Fatalf("plain event has m.relations %v", rel)
		}
	})
}

// threadsResponse is the body of /threads.
type threadsResponse struct {
	Chunk     []clientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch"`
}

// TestThreads: thread roots, latest activity first, all or participated,
// paginated (spec: threads_list.yaml).
func TestThreads(t *testing.T) {
	forEachEngine(t, func(t *testing.T, h hs) {
		r := newRelationsRoom(t, h)
		root2 := send(t, r.carol, r.roomID, "root2", nil)
		send(t, r.carol, r.roomID, "in root2", relatesTo("m.thread", root2))
		path := "/_matrix/client/v1/rooms/" + esc(r.roomID) + "/threads"
		list := func(cli *mautrix.Client, q url.Values) threadsResponse {
			t.Helper()
			var resp threadsResponse
			h.getJSON(t, cli, path, q, &resp)
			return resp
		}
		if got := eventIDs(list(r.bob, nil).Chunk); !slices.Equal(got, []string{root2, r.root}) {
			t.Fatalf("threads: %v, want root2 then root", got)
		}
		// New activity in the first thread brings it to the top.
		send(t, r.alice, r.roomID, "t4", relatesTo("m.thread", r.root))
		all := list(r.bob, url.Values{"include": {"all"}})
		if got := eventIDs(all.Chunk); !slices.Equal(got, []string{r.root, root2}) || all.NextBatch != "" {
			t.Fatalf("threads after new activity: %v next %q", got, all.NextBatch)
		}
		if th := all.Chunk[0].thread(t); th == nil || th.Count != 3 {
			t.Fatalf("thread root without its summary: %+v", th)
		}
		// Participation: bob replied in root's thread; carol started
		// root2 (her reaction in root's thread does not count); alice
		// sent root.
		for _, c := range []struct {
			cli  *mautrix.Client
			want []string
		}{{r.bob, []string{r.root}}, {r.carol, []string{root2}}, {r.alice, []string{r.root}}} {
			if got := eventIDs(list(c.cli, url.Values{"include": {"participated"}}).Chunk); !slices.Equal(got, c.want) {
				t.Errorf("%s participated in %v, want %v", c.cli.UserID, got, c.want)
			}
		}
		// One page at a time.
		p1 := list(r.bob, url.Values{"limit": {"1"}})
		if got := eventIDs(p1.Chunk); !slices.Equal(got, []string{r.root}) || p1.NextBatch == "" {
			t.Fatalf("page 1: %v next %q", got, p1.NextBatch)
		}
		p2 := list(r.bob, url.Values{"limit": {"1"}, "from": {p1.NextBatch}})
		if got := eventIDs(p2.Chunk); !slices.Equal(got, []string{root2}) || p2.NextBatch != "" {
			t.Fatalf("page 2: %v next %q", got, p2.NextBatch)
		}
		// A root from an ignored user comes redacted.
		if err := r.bob.SetAccountData(t.Context(), "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{r.carol.UserID.String(): map[string]any{}}}); err != nil {
			t.Fatal(err)
		}
		ignoring := list(r.bob, nil)
		if len(ignoring.Chunk) != 2 || ignoring.Chunk[1].EventID != root2 || string(ignoring.Chunk[1].Content) != "{}" {
			t.Fatalf("ignored root: %s", describe(ignoring.Chunk))
		}
		// Errors.
		wantError(t, "bad include", h.get(t, r.bob, path, url.Values{"include": {"mine"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "limit 0", h.get(t, r.bob, path, url.Values{"limit": {"0"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "bad from", h.get(t, r.bob, path, url.Values{"from": {"zzz"}}), http.StatusBadRequest, "M_INVALID_PARAM")
		wantError(t, "not a member", h.get(t, r.mallory, path, nil), http.StatusForbidden, "M_FORBIDDEN")
		wantError(t, "unknown room", h.get(t, r.bob, "/_matrix/client/v1/rooms/"+esc("!nope:localhost")+"/threads", nil), http.StatusForbidden, "M_FORBIDDEN")
	})
}

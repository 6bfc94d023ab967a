package syncapi

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// Limits of /messages (message_pagination.yaml: default 10).
const (
	messagesDefaultLimit = 10
	messagesMaxLimit     = 1000
	// backfillTimeout bounds the wait of one /messages request for the
	// history it asked other servers for.
	backfillTimeout = 10 * time.Second
)

// Backfiller fetches history older than what this server has of a room
// from the other servers in it (federation.Backfiller): /messages asks
// for it when a backwards page reaches the start of the room here.
type Backfiller interface {
	// Backfill stores one round of the room's older history and says
	// how many events it stored: none when there is nothing to fetch
	// (the room's history here starts with its create event, or what
	// precedes it is hidden from this server).
	Backfill(ctx context.Context, roomID string) (int, error)
}

// WithBackfill makes /messages fetch older history from other servers.
func WithBackfill(b Backfiller) Option {
	return func(a *API) { a.backfill = b }
}

// messagesResponse is the body of GET /messages.
type messagesResponse struct {
	Start string        `json:"start"`
	End   string        `json:"end,omitempty"`
	Chunk []ClientEvent `json:"chunk"`
	State []ClientEvent `json:"state,omitempty"`
}

// messages is GET /rooms/{roomId}/messages: a page of the room's
// timeline in topological order, as far as the caller may see it.
func (a *API) messages(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
	ctx := r.Context()
	roomID, err := pathVar(r, "roomId")
	if err != nil {
		return err
	}
	backward, err := queryDir(r, true)
	if err != nil {
		return err
	}
	limit, err := queryLimit(r, messagesDefaultLimit, messagesMaxLimit)
	if err != nil {
		return err
	}
	from, err := queryToken(r, "from")
	if err != nil {
		return err
	}
	to, err := queryToken(r, "to")
	if err != nil {
		return err
	}
	ef, err := parseEventFilter(r.URL.Query().Get("filter"), roomID)
	if err != nil {
		return err
	}
	v, info, err := a.open(ctx, roomID, dev)
	if err != nil {
		return err
	}
	// Without from, start at the newest event (backwards) or before the
	// first (forwards); without to, run to the end of the room.
	start, end := sql.TopoStart, sql.TopoEnd
	if backward {
		if start, err = a.db.TimelineLast(ctx, info.NID); err != nil {
			return fmt.Errorf("end of %s: %w", roomID, err)
		}
		end = sql.TopoStart
	}
	if from != nil {
		if start, err = a.boundary(ctx, info.NID, *from); err != nil {
			return err
		}
	}
	if to != nil {
		if end, err = a.boundary(ctx, info.NID, *to); err != nil {
			return err
		}
	}
	keep := func(ev sql.Event) (bool, error) {
		if !ef.matches(ev) {
			return false, nil
		}
		return v.Shows(ctx, ev)
	}
	p, err := paginate(ctx, a.timeline(info.NID), start, end, backward, limit, keep)
	if err != nil {
		return err
	}
	if backward && to == nil && !p.more && a.backfill != nil {
		if p, err = a.backfillPage(ctx, roomID, info.NID, p, limit, keep); err != nil {
			return err
		}
	}
	resp := messagesResponse{Start: TopoToken(start)}
	if from != nil {
		resp.Start = r.URL.Query().Get("from") // the spec: "the same as the value given in from"
	}
	if p.more {
		resp.End = TopoToken(p.next)
	}
	if resp.Chunk, err = a.serve(ctx, v, dev, p.events, serveOptions{bundle: true}); err != nil {
		return err
	}
	if ef.lazyMembers() {
		members, err := a.lazyMembers(ctx, p.events)
		if err != nil {
			return err
		}
		if resp.State, err = a.serve(ctx, v, dev, members, serveOptions{}); err != nil {
			return err
		}
	}
	return writeJSON(w, resp)
}

// backfillPage goes on with a backwards page that reached the start of
// the room's history here: one round of backfill, within
// backfillTimeout, then the rest of the page from what it stored. A
// failure is logged and the page served as it is. While rounds store
// events the page ends with a token, even when it is not full (what
// they stored may all be hidden from the caller): the next page asks
// for the next round.
func (a *API) backfillPage(ctx context.Context, roomID string, roomNID int64, p page, limit int,
	keep func(sql.Event) (bool, error)) (page, error) {
	bctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	n, err := a.backfill.Backfill(bctx, roomID)
	cancel()
	if err != nil {
		a.log.WarnContext(ctx, "backfill failed", "room_id", roomID, "err", err)
	}
	if n == 0 {
		return p, nil
	}
	rest, err := paginate(ctx, a.timeline(roomNID), p.next, sql.TopoStart, true, limit-len(p.events), keep)
	if err != nil {
		return page{}, err
	}
	p.events = append(p.events, rest.events...)
	p.next, p.more = rest.next, true
	return p, nil
}

// timeline reads a room's timeline.
func (a *API) timeline(roomNID int64) fetchFunc {
	return func(ctx context.Context, lo, hi sql.TopoPos, backward bool, n int) ([]sql.Event, error) {
		return a.db.TimelineEvents(ctx, roomNID, lo, hi, backward, n)
	}
}

// lazyMembers returns the member events of the senders of evs (spec:
// Lazy-loading room members), each as it stood at the sender's newest
// event among evs, leaving out senders whose own member event is that
// event (it is in the chunk already). Redundant members are always sent:
// Weft does not remember what a client was sent, which the spec allows
// ("it is valid for the server to send redundant membership events"), and
// which satisfies include_redundant_members.
func (a *API) lazyMembers(ctx context.Context, evs []sql.Event) ([]sql.Event, error) {
	newest := make(map[string]sql.Event)
	for _, ev := range evs {
		if cur, ok := newest[ev.Sender]; !ok || cur.Key().Less(ev.Key()) {
			newest[ev.Sender] = ev
		}
	}
	var nids []int64
	for sender, ev := range newest {
		if ev.Type == spec.MRoomMember && ev.StateKey != nil && *ev.StateKey == sender {
			continue
		}
		nid, err := a.db.SnapshotKey(ctx, ev.StateBeforeNID, sql.StateKey{Type: spec.MRoomMember, StateKey: sender})
		if err != nil {
			return nil, fmt.Errorf("membership of %s: %w", sender, err)
		}
		if nid != 0 && !slices.Contains(nids, nid) {
			nids = append(nids, nid)
		}
	}
	members, err := a.db.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(members, func(x, y sql.Event) int { return strings.Compare(*x.StateKey, *y.StateKey) })
	return members, nil
}

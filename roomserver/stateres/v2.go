package stateres

import (
	"cmp"
	"container/heap"
	"context"
	"encoding/json"
	"math/bits"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// resolver runs state resolution v2 (rooms/v2.md, fragments/v2-state-res.md)
// and, with v21, v2.1 (rooms/v12.md): the same steps, except that the full
// conflicted set also holds the conflicted state subgraph and the first
// round of iterative auth checks starts from an empty state map.
type resolver struct {
	g   *graph
	ver gomatrixserverlib.IRoomVersion
	v21 bool
}

func (r *resolver) resolve(ctx context.Context, states []map[Key]string, unconflicted map[Key]string, conflicted map[Key][]string) (map[Key]string, error) {
	g := r.g
	cids := conflictedIDs(conflicted)
	first := cids
	createID := unconflicted[createKey]
	if createID != "" {
		first = append(slices.Clone(cids), createID)
	}
	if err := g.fetch(ctx, first); err != nil {
		return nil, err
	}
	g.pickRoom(createID, cids)
	if err := g.walk(ctx, cids); err != nil {
		return nil, err
	}
	inF, err := r.fullConflictedSet(ctx, states, unconflicted, conflicted, cids)
	if err != nil {
		return nil, err
	}

	// Step 1: the power events of the full conflicted set and the events of
	// their auth chains inside it, in reverse topological power ordering.
	// Like Synapse, the chains are followed only through events of the full
	// conflicted set.
	var power []int32
	for i, in := range inF {
		if in && r.isPowerEvent(int32(i)) {
			power = append(power, int32(i))
		}
	}
	inX := make([]bool, len(inF))
	var xs []int32
	g.closure(power, func(i int32) bool { return inX[i] || !inF[i] }, func(i int32) {
		inX[i] = true
		xs = append(xs, i)
	})
	sorted := r.powerSort(xs, inX)

	// Step 2: iterative auth checks from the unconflicted state map (v2) or
	// from an empty one (v2.1).
	resolved := map[Key]int32{}
	if !r.v21 {
		if resolved, err = r.baseState(ctx, unconflicted, inF); err != nil {
			return nil, err
		}
	}
	r.iterate(sorted, resolved)

	// Steps 3 and 4: the other events, in mainline order of the power
	// levels resolved so far.
	var rest []int32
	for i, in := range inF {
		if in && !inX[i] {
			rest = append(rest, int32(i))
		}
	}
	pl, ok := resolved[powerLevelsKey]
	if !ok {
		pl = missing
	}
	if rest, err = r.mainlineSort(ctx, rest, pl); err != nil {
		return nil, err
	}
	r.iterate(rest, resolved)

	// Step 5: the unconflicted state map has the last word. It is this
	// call's own map (separate built it), so it becomes the result.
	for k, i := range resolved {
		if _, ok := unconflicted[k]; !ok {
			unconflicted[k] = g.nodes[i].ev.EventID()
		}
	}
	return unconflicted, nil
}

// fullConflictedSet marks the conflicted events, the auth difference and,
// for v2.1, the conflicted state subgraph.
//
// The auth difference is computed as Synapse computes it: each state's
// "full auth chain" holds the state's own events as well as their auth
// chains, so an unconflicted event, being in every state, is never part of
// it. An event can then be in the difference only if some conflicted event
// reaches it (every other event of a state's chain is reached from the
// unconflicted events, which are common to all), so only the conflicted
// events' auth chains are walked; the unconflicted events are walked only if
// some event reached from one state's conflicted events but not another's
// is not already known to be reached from an unconflicted event.
func (r *resolver) fullConflictedSet(ctx context.Context, states []map[Key]string, unconflicted map[Key]string, conflicted map[Key][]string, cids []string) ([]bool, error) {
	g := r.g
	size := len(g.nodes)
	inK := make([]bool, size)
	var kNodes []int32
	for _, id := range cids {
		if i := g.node(id); i != missing {
			inK[i] = true
			kNodes = append(kNodes, i)
		}
	}

	// reach holds, for each node, one bit per state: whether that state's
	// conflicted events reach it through auth_events (or are it).
	words := (len(states) + 63) / 64
	reach := make([]uint64, size*words)
	for s, state := range states {
		var start []int32
		for k := range conflicted {
			if i := g.node(state[k]); i != missing {
				start = append(start, i)
			}
		}
		w, bit := s/64, uint64(1)<<(s%64)
		g.closure(start,
			func(i int32) bool { return reach[int(i)*words+w]&bit != 0 },
			func(i int32) { reach[int(i)*words+w] |= bit })
	}
	reachCount := func(i int) int {
		n := 0
		for _, word := range reach[i*words : (i+1)*words] {
			n += bits.OnesCount64(word)
		}
		return n
	}

	var candidates, uStart []int32
	for i := range size {
		n := &g.nodes[i]
		if unconflicted[n.key] == n.ev.EventID() {
			uStart = append(uStart, int32(i))
			continue
		}
		if c := reachCount(i); c > 0 && c < len(states) && !inK[i] {
			candidates = append(candidates, int32(i))
		}
	}
	uSeen := make([]bool, size)
	markU := func(start []int32) {
		g.closure(start, func(i int32) bool { return uSeen[i] }, func(i int32) { uSeen[i] = true })
	}
	markU(uStart)
	if slices.ContainsFunc(candidates, func(i int32) bool { return !uSeen[i] }) {
		all := make([]string, 0, len(unconflicted))
		for _, id := range unconflicted {
			all = append(all, id)
		}
		if err := g.walk(ctx, all); err != nil {
			return nil, err
		}
		uSeen = append(uSeen, make([]bool, len(g.nodes)-size)...)
		uStart = uStart[:0]
		for _, id := range all {
			if i := g.node(id); i != missing {
				uStart = append(uStart, i)
			}
		}
		markU(uStart)
	}

	inF := make([]bool, len(g.nodes))
	for _, i := range kNodes {
		inF[i] = true
	}
	for _, i := range candidates {
		if !uSeen[i] {
			inF[i] = true
		}
	}
	if r.v21 {
		// The conflicted state subgraph: events that are an ancestor (through
		// auth_events) of one conflicted event and a descendant of another.
		// The ancestors are the nodes some state's conflicted events reach;
		// walking the reversed edges among them from the conflicted events
		// finds the descendants. Each edge is looked at once or twice.
		rev := make([][]int32, size)
		for i := range size {
			if reachCount(i) == 0 {
				continue
			}
			for _, a := range g.nodes[i].auth {
				rev[a] = append(rev[a], int32(i))
			}
		}
		stack := slices.Clone(kNodes)
		sub := make([]bool, size)
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if sub[i] {
				continue
			}
			sub[i] = true
			inF[i] = true
			stack = append(stack, rev[i]...)
		}
	}
	return inF, nil
}

// isPowerEvent reports a power event (rooms/v2.md, "Power events"). Like
// Synapse it also counts the create event, which has no auth events and so
// sorts first anyway.
func (r *resolver) isPowerEvent(i int32) bool {
	n := &r.g.nodes[i]
	switch n.key {
	case powerLevelsKey, joinRulesKey, createKey:
		return true
	}
	if n.key.EventType != spec.MRoomMember {
		return false
	}
	m, err := n.ev.Membership()
	return err == nil && (m == spec.Leave || m == spec.Ban) && string(n.ev.SenderID()) != n.key.StateKey
}

// powerSort is the reverse topological power ordering: Kahn's algorithm
// over the auth edges among xs, taking at each step the candidate whose
// sender has the greatest power, then the smallest origin_server_ts, then
// the smallest event id. Events on a cycle never become candidates and are
// left out, as in Synapse.
func (r *resolver) powerSort(xs []int32, inX []bool) []int32 {
	g := r.g
	outdeg := make(map[int32]int, len(xs))
	rev := make(map[int32][]int32, len(xs))
	for _, i := range xs {
		for _, a := range g.nodes[i].auth {
			if inX[a] {
				outdeg[i]++
				rev[a] = append(rev[a], i)
			}
		}
	}
	h := &powerHeap{g: g}
	for _, i := range xs {
		if outdeg[i] == 0 {
			h.items = append(h.items, r.powerItem(i))
		}
	}
	heap.Init(h)
	sorted := make([]int32, 0, len(xs))
	for h.Len() > 0 {
		i := heap.Pop(h).(powerItem).node
		sorted = append(sorted, i)
		for _, p := range rev[i] {
			if outdeg[p]--; outdeg[p] == 0 {
				heap.Push(h, r.powerItem(p))
			}
		}
	}
	return sorted
}

type powerItem struct {
	node  int32
	power int64
}

func (r *resolver) powerItem(i int32) powerItem {
	return powerItem{node: i, power: r.senderPower(i)}
}

type powerHeap struct {
	g     *graph
	items []powerItem
}

func (h *powerHeap) Len() int { return len(h.items) }
func (h *powerHeap) Less(a, b int) bool {
	x, y := h.items[a], h.items[b]
	if x.power != y.power {
		return x.power > y.power
	}
	return compareTSAndID(h.g.nodes[x.node].ev, h.g.nodes[y.node].ev) < 0
}
func (h *powerHeap) Swap(a, b int) { h.items[a], h.items[b] = h.items[b], h.items[a] }
func (h *powerHeap) Push(x any)    { h.items = append(h.items, x.(powerItem)) }
func (h *powerHeap) Pop() any {
	last := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return last
}

// compareTSAndID is the last two tie-breaks of both orderings.
func compareTSAndID(x, y gomatrixserverlib.PDU) int {
	if c := cmp.Compare(x.OriginServerTS(), y.OriginServerTS()); c != 0 {
		return c
	}
	return cmp.Compare(x.EventID(), y.EventID())
}

// senderPower is the power level of an event's sender "when looking at
// their respective auth_events" (rooms/v2.md): the users entry or
// users_default of the power_levels among its auth events; without one, 100
// for the room creator and 0 for others, as Synapse does. In room version 12
// the creators (the create event's sender and additional_creators) have
// infinite power (rooms/v12.md), whatever the power_levels say.
func (r *resolver) senderPower(i int32) int64 {
	g := r.g
	sender := string(g.nodes[i].ev.SenderID())
	var pl, create gomatrixserverlib.PDU
	for _, a := range g.nodes[i].auth {
		switch g.nodes[a].key {
		case powerLevelsKey:
			pl = g.nodes[a].ev
		case createKey:
			create = g.nodes[a].ev
		}
	}
	if create != nil && r.ver.PrivilegedCreators() && isCreator(create, sender) {
		return creatorPower
	}
	if pl == nil {
		if create != nil && legacyCreator(r.ver, create) == sender {
			return 100
		}
		return 0
	}
	levels, err := pl.PowerLevels()
	if err != nil {
		return 0
	}
	return levels.UserLevel(spec.SenderID(sender))
}

// isCreator reports a room version 12 creator.
func isCreator(create gomatrixserverlib.PDU, userID string) bool {
	if string(create.SenderID()) == userID {
		return true
	}
	var content struct {
		AdditionalCreators []string `json:"additional_creators"`
	}
	return json.Unmarshal(create.Content(), &content) == nil && slices.Contains(content.AdditionalCreators, userID)
}

// legacyCreator is the creator who has 100 before any power_levels event:
// content.creator up to room version 10, the sender from version 11 on,
// which dropped that field (rooms/v11.md).
func legacyCreator(ver gomatrixserverlib.IRoomVersion, create gomatrixserverlib.PDU) string {
	switch ver.Version() {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		var content struct {
			Creator string `json:"creator"`
		}
		_ = json.Unmarshal(create.Content(), &content)
		return content.Creator
	}
	return string(create.SenderID())
}

// baseState is the unconflicted state map v2 starts from, cut down to the
// keys the auth checks of the full conflicted set and the mainline can
// read (Synapse cuts it the same way); those events are loaded in one call.
// The rest of the unconflicted state is laid back over the result in step 5.
func (r *resolver) baseState(ctx context.Context, unconflicted map[Key]string, inF []bool) (map[Key]int32, error) {
	var events []gomatrixserverlib.PDU
	for i, in := range inF {
		if in {
			events = append(events, r.g.nodes[i].ev)
		}
	}
	keys := append(gomatrixserverlib.StateNeededForAuth(events).Tuples(), powerLevelsKey)
	var ids []string
	for _, k := range keys {
		if id, ok := unconflicted[k]; ok {
			ids = append(ids, id)
		}
	}
	if err := r.g.fetch(ctx, ids); err != nil {
		return nil, err
	}
	base := map[Key]int32{}
	for _, k := range keys {
		if i := r.g.node(unconflicted[k]); i != missing && r.g.nodes[i].key == k {
			base[k] = i
		}
	}
	return base, nil
}

// iterate is the iterative auth checks algorithm: each event is checked
// against its own auth events overlaid with the entries of the state
// resolved so far that its auth rules read, and joins the state if allowed.
func (r *resolver) iterate(order []int32, resolved map[Key]int32) {
	g := r.g
	for _, i := range order {
		ev := g.nodes[i].ev
		authEvents, _ := gomatrixserverlib.NewAuthEvents(nil)
		for _, a := range g.nodes[i].auth {
			_ = authEvents.AddEvent(g.nodes[a].ev)
		}
		for _, k := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
			if j, ok := resolved[k]; ok {
				_ = authEvents.AddEvent(g.nodes[j].ev)
			}
		}
		if allowed(ev, authEvents) {
			resolved[g.nodes[i].key] = i
		}
	}
}

// mainlineSort orders events by mainline ordering based on the power
// levels event pl (rooms/v2.md, "Mainline ordering"). Positions are counted
// from the root of the mainline (its oldest event is 1, an event whose
// power levels chain never meets the mainline is 0), as Synapse does; that
// sorts exactly as the spec's "greater position first". Each power levels
// event's position is worked out once, so the cost is linear in the chains.
func (r *resolver) mainlineSort(ctx context.Context, events []int32, pl int32) ([]int32, error) {
	if len(events) == 0 {
		return events, nil
	}
	g := r.g
	depth := map[int32]int{}
	var line []int32
	for p := pl; p != missing; {
		if _, seen := depth[p]; seen {
			break // a cycle of power levels events: the mainline ends there
		}
		depth[p] = 0
		line = append(line, p)
		next, err := g.authPL(ctx, p)
		if err != nil {
			return nil, err
		}
		p = next
	}
	for k, p := range line {
		depth[p] = len(line) - k
	}

	memo := map[int32]int{}
	position := func(e int32) (int, error) {
		p, err := g.authPL(ctx, e)
		if err != nil {
			return 0, err
		}
		var path []int32
		onPath := map[int32]bool{}
		pos := 0
		for p != missing {
			if d, ok := depth[p]; ok {
				pos = d
				break
			}
			if d, ok := memo[p]; ok {
				pos = d
				break
			}
			if onPath[p] {
				break
			}
			onPath[p] = true
			path = append(path, p)
			if p, err = g.authPL(ctx, p); err != nil {
				return 0, err
			}
		}
		for _, q := range path {
			memo[q] = pos
		}
		return pos, nil
	}
	pos := make(map[int32]int, len(events))
	for _, e := range events {
		d, err := position(e)
		if err != nil {
			return nil, err
		}
		pos[e] = d
	}
	slices.SortFunc(events, func(x, y int32) int {
		if c := cmp.Compare(pos[x], pos[y]); c != 0 {
			return c
		}
		return compareTSAndID(g.nodes[x].ev, g.nodes[y].ev)
	})
	return events, nil
}

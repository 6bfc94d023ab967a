package stateres

import (
	"context"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
)

// missing marks an event id the Loader did not have, or had in another room
// or as a non-state event: auth_events pointing there are skipped, as
// Synapse skips auth events it cannot find.
const missing = -1

// graph is the part of a room's auth DAG that one Resolve call has looked
// at, loaded once and kept in memory so that every later walk (the auth
// difference, the conflicted subgraph, the orderings) reads it without
// asking the Loader again. Nodes are numbered in load order; edges are
// node numbers, so reachability is plain slice work.
type graph struct {
	load   Loader
	roomID string // once set, events of other rooms are treated as missing
	ids    map[string]int32
	nodes  []node
}

type node struct {
	ev      gomatrixserverlib.PDU
	key     Key
	authIDs []string // ev.AuthEventIDs(), which builds a new slice per call
	auth    []int32  // the loaded auth events, in auth_events order, each once
	// linked says auth is filled in; closed says the whole auth chain below
	// the node is loaded and linked too, so walks need not descend again.
	linked, closed bool
}

func newGraph(load Loader) *graph {
	return &graph{load: load, ids: map[string]int32{}}
}

// node returns the node of a loaded event, or missing.
func (g *graph) node(id string) int32 {
	if i, ok := g.ids[id]; ok {
		return i
	}
	return missing
}

// fetch loads, in one Loader call, those of ids never asked for before.
func (g *graph) fetch(ctx context.Context, ids []string) error {
	var want []string
	for _, id := range ids {
		if _, ok := g.ids[id]; !ok {
			g.ids[id] = missing
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	got, err := g.load(ctx, want)
	if err != nil {
		return fmt.Errorf("load %d events: %w", len(want), err)
	}
	g.nodes = slices.Grow(g.nodes, len(got))
	for _, id := range want {
		ev := got[id]
		// An entry under the wrong id, or a non-state event where only state
		// events belong (state maps and auth_events), cannot be used.
		if ev == nil || ev.EventID() != id || ev.StateKey() == nil {
			continue
		}
		if g.roomID != "" && ev.RoomID().String() != g.roomID {
			continue
		}
		g.ids[id] = int32(len(g.nodes))
		g.nodes = append(g.nodes, node{ev: ev, key: Key{EventType: ev.Type(), StateKey: *ev.StateKey()}, authIDs: ev.AuthEventIDs()})
	}
	return nil
}

// setRoom fixes the room once the first events are loaded, and forgets the
// ones already loaded from other rooms: a foreign event cannot be in this
// room's auth chains, so it is treated as missing rather than failing the
// whole resolution on one bad reference.
func (g *graph) setRoom(roomID string) {
	g.roomID = roomID
	for i := range g.nodes {
		if ev := g.nodes[i].ev; ev.RoomID().String() != roomID {
			g.ids[ev.EventID()] = missing
		}
	}
}

// walk loads the auth chains of the given events breadth first, with one
// Loader call per level across the whole frontier, and links every node it
// reaches. Nodes already closed are not descended into, so repeated walks
// over overlapping chains cost only what is new.
func (g *graph) walk(ctx context.Context, start []string) error {
	frontier := start
	var visited []bool // by node, grown as nodes are loaded
	var reached []int32
	for len(frontier) > 0 {
		if err := g.fetch(ctx, frontier); err != nil {
			return err
		}
		visited = append(visited, make([]bool, len(g.nodes)-len(visited))...)
		var next []string
		for _, id := range frontier {
			i := g.node(id)
			if i == missing || visited[i] {
				continue
			}
			visited[i] = true
			if g.nodes[i].closed {
				continue
			}
			reached = append(reached, i)
			for _, a := range g.nodes[i].authIDs {
				if j, known := g.ids[a]; known && (j == missing || visited[j]) {
					continue
				}
				next = append(next, a)
			}
		}
		frontier = next
	}
	for _, i := range reached {
		g.link(i)
	}
	for _, i := range reached {
		g.nodes[i].closed = true
	}
	return nil
}

// link fills in a node's edges; its auth event ids must all have been asked
// for already.
func (g *graph) link(i int32) {
	if g.nodes[i].linked {
		return
	}
	ids := g.nodes[i].authIDs
	auth := make([]int32, 0, len(ids))
	for _, a := range ids {
		if j := g.node(a); j != missing && !slices.Contains(auth, j) {
			auth = append(auth, j)
		}
	}
	g.nodes[i].auth = auth
	g.nodes[i].linked = true
}

// authOf returns a node's auth events, loading that one level if the node
// was loaded outside a walk (the unconflicted power levels of a mainline).
func (g *graph) authOf(ctx context.Context, i int32) ([]int32, error) {
	if !g.nodes[i].linked {
		if err := g.fetch(ctx, g.nodes[i].authIDs); err != nil {
			return nil, err
		}
		g.link(i)
	}
	return g.nodes[i].auth, nil
}

// authPL is the m.room.power_levels event among a node's auth events, or
// missing. The first one counts, as in Synapse's mainline walk: a second
// one would already break auth rule 3.1.
func (g *graph) authPL(ctx context.Context, i int32) (int32, error) {
	auth, err := g.authOf(ctx, i)
	if err != nil {
		return missing, err
	}
	for _, a := range auth {
		if g.nodes[a].key == powerLevelsKey {
			return a, nil
		}
	}
	return missing, nil
}

// closure calls visit once for every node reachable from start through
// auth edges, start included, skipping nodes for which seen reports true.
// The caller's seen state makes it linear across several calls.
func (g *graph) closure(start []int32, seen func(int32) bool, visit func(int32)) {
	stack := slices.Clone(start)
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen(i) {
			continue
		}
		visit(i)
		for _, a := range g.nodes[i].auth {
			if !seen(a) {
				stack = append(stack, a)
			}
		}
	}
}

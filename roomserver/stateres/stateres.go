// Package stateres resolves conflicting room states: the state resolution
// algorithms of room version 1 (v1), versions 2 to 11 (v2) and version 12
// (v2.1), written from the spec (content/rooms/v1.md, v2.md, v12.md).
//
// It is ours rather than gomatrixserverlib's because that resolver panics on
// v12 conflicts and enumerates auth paths one by one (DESIGN.md). Here the
// auth chains are loaded once per call, level by level, into an in-memory
// graph, and the auth difference and the conflicted subgraph are found by
// reachability over it, so the work stays linear in the events involved.
// The auth rules themselves are gomatrixserverlib.Allowed.
//
// Resolve never panics on hostile input: events it cannot load, events of
// another room and cycles in auth_events are skipped, as Synapse skips them.
package stateres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Key is a piece of state.
type Key = gomatrixserverlib.StateKeyTuple

// Loader returns the events with the given ids; ids it does not have are absent from the map (not an error).
type Loader func(ctx context.Context, ids []string) (map[string]gomatrixserverlib.PDU, error)

// Resolve returns the resolved state of the given states (each a map from Key to event id) for a room of version ver.
//
// Identical states, and states that differ in no key, come back without any
// call to load. Otherwise load is called with batches of ids: the conflicted
// events, then one call per level of their auth chains, then the few
// unconflicted events the auth checks need. The result is a new map; the
// inputs are not modified. An error comes only from load, from ctx, from an
// unsupported room version, or from an event too malformed to read.
func Resolve(ctx context.Context, ver gomatrixserverlib.IRoomVersion, states []map[Key]string, load Loader) (resolved map[Key]string, err error) {
	if ver == nil {
		return nil, errors.New("stateres: no room version")
	}
	// gomatrixserverlib's event accessors panic on some malformed events
	// (an unparsable room_id, say). A roomserver must survive what a remote
	// server sends, so such a panic fails this resolution instead.
	defer func() {
		if p := recover(); p != nil {
			resolved, err = nil, fmt.Errorf("stateres: malformed event: %v", p)
		}
	}()
	if len(states) == 0 {
		return map[Key]string{}, nil
	}
	if len(states) == 1 {
		return maps.Clone(states[0]), nil
	}
	switch algo := ver.StateResAlgorithm(); algo {
	case gomatrixserverlib.StateResV1:
		return resolveV1(ctx, ver, states, load)
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
		unconflicted, conflicted := separate(states)
		if len(conflicted) == 0 {
			return unconflicted, nil
		}
		r := &resolver{g: newGraph(load), ver: ver, v21: algo == gomatrixserverlib.StateResV2_1}
		return r.resolve(ctx, states, unconflicted, conflicted)
	default:
		return nil, fmt.Errorf("stateres: room version %s: unknown state resolution algorithm %d", ver.Version(), algo)
	}
}

var (
	createKey      = Key{EventType: spec.MRoomCreate, StateKey: ""}
	powerLevelsKey = Key{EventType: spec.MRoomPowerLevels, StateKey: ""}
	joinRulesKey   = Key{EventType: spec.MRoomJoinRules, StateKey: ""}
)

// separate splits states into the unconflicted state map and the conflicted
// state set of v2 (rooms/v2.md, "Unconflicted state map and conflicted state
// set"): a key is unconflicted only if every state has it with the same
// event; a key some state lacks is conflicted. The conflicted ids of a key
// are sorted so that everything downstream is deterministic.
func separate(states []map[Key]string) (unconflicted map[Key]string, conflicted map[Key][]string) {
	base := states[0]
	unconflicted = maps.Clone(base)
	conflicted = map[Key][]string{}
	for _, s := range states[1:] {
		shared := 0
		for k, id := range s {
			b, ok := base[k]
			if ok {
				shared++
			}
			if !ok || b != id {
				conflicted[k] = nil
			}
		}
		if shared != len(base) {
			for k := range base {
				if _, ok := s[k]; !ok {
					conflicted[k] = nil
				}
			}
		}
	}
	for k := range conflicted {
		delete(unconflicted, k)
		var ids []string
		for _, s := range states {
			if id, ok := s[k]; ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		conflicted[k] = ids
	}
	return unconflicted, conflicted
}

// creatorPower is the power of a room version 12 creator, "infinitely high"
// (rooms/v12.md): above anything a power_levels event can grant.
const creatorPower = math.MaxInt64

// userIDForSender maps sender ids to user ids, which they are in every room
// version Weft supports (1 to 12).
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// allowed runs the auth rules for ev against the given auth events. Without
// a create event gomatrixserverlib dereferences nil, so such an event is
// refused here (auth rule 1 needs a create event for everything else too);
// a panic inside the library on hostile content refuses the event rather
// than failing the resolution, so one bad event cannot block a room.
func allowed(ev gomatrixserverlib.PDU, authEvents *gomatrixserverlib.AuthEvents) (ok bool) {
	if ev.Type() != spec.MRoomCreate {
		if create, _ := authEvents.Create(); create == nil {
			return false
		}
	}
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return gomatrixserverlib.Allowed(ev, authEvents, userIDForSender) == nil
}

// pickRoom decides which room the resolution is about, before anything
// else is trusted: the room of the unconflicted create event when there is
// one, else that of the first conflicted event loaded (ids sorted, so every
// server picks the same one).
func (g *graph) pickRoom(createID string, conflictedIDs []string) {
	if i := g.node(createID); i != missing && g.nodes[i].key == createKey {
		g.setRoom(g.nodes[i].ev.RoomID().String())
		return
	}
	for _, id := range conflictedIDs {
		if i := g.node(id); i != missing {
			g.setRoom(g.nodes[i].ev.RoomID().String())
			return
		}
	}
}

// conflictedIDs lists every event of the conflicted state set once, sorted.
func conflictedIDs(conflicted map[Key][]string) []string {
	var ids []string
	for _, list := range conflicted {
		ids = append(ids, list...)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

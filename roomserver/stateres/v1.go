package stateres

import (
	"cmp"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"maps"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// resolveV1 is the state resolution of room version 1 (rooms/v1.md, "State
// resolution"): starting from the unconflicted state R, the conflicted
// power levels, then join rules, then memberships are each resolved by
// walking their events from the oldest and stopping at the first one R
// refuses; any other conflicted key takes its newest event that R allows.
func resolveV1(ctx context.Context, ver gomatrixserverlib.IRoomVersion, states []map[Key]string, load Loader) (map[Key]string, error) {
	unconflicted, conflicted := separateV1(states)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	g := newGraph(load)
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

	// Events that could not be loaded drop out; a key left with one event
	// is no longer in conflict (Synapse's v1 does the same).
	events := map[Key][]gomatrixserverlib.PDU{}
	var all []gomatrixserverlib.PDU
	for k, ids := range conflicted {
		var evs []gomatrixserverlib.PDU
		for _, id := range ids {
			if i := g.node(id); i != missing {
				evs = append(evs, g.nodes[i].ev)
			}
		}
		switch len(evs) {
		case 0:
		case 1:
			unconflicted[k] = evs[0].EventID()
		default:
			events[k] = evs
			all = append(all, evs...)
		}
	}

	// R, for the auth checks, is the part of the unconflicted state the
	// conflicted events' auth rules read.
	var ids []string
	keys := gomatrixserverlib.StateNeededForAuth(all).Tuples()
	for _, k := range keys {
		if id, ok := unconflicted[k]; ok {
			ids = append(ids, id)
		}
	}
	if err := g.fetch(ctx, ids); err != nil {
		return nil, err
	}
	auth := map[Key]gomatrixserverlib.PDU{}
	for _, k := range keys {
		if i := g.node(unconflicted[k]); i != missing {
			auth[k] = g.nodes[i].ev
		}
	}

	resolved := map[Key]gomatrixserverlib.PDU{}
	phase := func(match func(Key) bool, pick func([]gomatrixserverlib.PDU, map[Key]gomatrixserverlib.PDU) gomatrixserverlib.PDU) {
		for k, evs := range events {
			if _, done := resolved[k]; !done && match(k) {
				resolved[k] = pick(evs, auth)
			}
		}
		maps.Copy(auth, resolved)
	}
	phase(func(k Key) bool { return k == powerLevelsKey }, resolveAuthEventsV1)
	phase(func(k Key) bool { return k.EventType == spec.MRoomJoinRules }, resolveAuthEventsV1)
	phase(func(k Key) bool { return k.EventType == spec.MRoomMember }, resolveAuthEventsV1)
	phase(func(Key) bool { return true }, resolveOtherEventsV1)

	for k, ev := range resolved {
		unconflicted[k] = ev.EventID()
	}
	return unconflicted, nil
}

// separateV1 splits states as room version 1 does: a conflict is two states
// holding different events for a key, so a key only some states have is
// not one.
func separateV1(states []map[Key]string) (unconflicted map[Key]string, conflicted map[Key][]string) {
	unconflicted = map[Key]string{}
	conflicted = map[Key][]string{}
	for _, s := range states {
		for k, id := range s {
			if ids, ok := conflicted[k]; ok {
				if !slices.Contains(ids, id) {
					conflicted[k] = append(ids, id)
				}
				continue
			}
			if u, ok := unconflicted[k]; !ok {
				unconflicted[k] = id
			} else if u != id {
				conflicted[k] = []string{u, id}
				delete(unconflicted, k)
			}
		}
	}
	for _, ids := range conflicted {
		slices.Sort(ids)
	}
	return unconflicted, conflicted
}

// sortV1 sorts by ascending depth, then descending sha1(event_id), the
// order the v1 auth event passes walk (rooms/v1.md).
func sortV1(evs []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	hashes := make(map[string]string, len(evs))
	for _, ev := range evs {
		sum := sha1.Sum([]byte(ev.EventID()))
		hashes[ev.EventID()] = hex.EncodeToString(sum[:])
	}
	sorted := slices.Clone(evs)
	slices.SortFunc(sorted, func(x, y gomatrixserverlib.PDU) int {
		if c := cmp.Compare(x.Depth(), y.Depth()); c != 0 {
			return c
		}
		return cmp.Compare(hashes[y.EventID()], hashes[x.EventID()])
	})
	return sorted
}

func authEventsOf(auth map[Key]gomatrixserverlib.PDU) *gomatrixserverlib.AuthEvents {
	a, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, ev := range auth {
		_ = a.AddEvent(ev)
	}
	return a
}

// resolveAuthEventsV1 takes the first event, then each next one while the
// state with the previous one applied allows it.
func resolveAuthEventsV1(evs []gomatrixserverlib.PDU, auth map[Key]gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	sorted := sortV1(evs)
	state := maps.Clone(auth)
	prev := sorted[0]
	for _, ev := range sorted[1:] {
		state[Key{EventType: prev.Type(), StateKey: *prev.StateKey()}] = prev
		if !allowed(ev, authEventsOf(state)) {
			return prev
		}
		prev = ev
	}
	return prev
}

// resolveOtherEventsV1 takes the event of greatest depth (then smallest
// sha1) that the state allows, or, if none is allowed, the last one tried.
func resolveOtherEventsV1(evs []gomatrixserverlib.PDU, auth map[Key]gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	sorted := sortV1(evs)
	slices.Reverse(sorted)
	provider := authEventsOf(auth)
	for _, ev := range sorted {
		if allowed(ev, provider) {
			return ev
		}
	}
	return sorted[len(sorted)-1]
}

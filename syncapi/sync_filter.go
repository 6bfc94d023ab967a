package syncapi

import (
	"slices"

	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi/filter"
)

// syncFilter is a filter as /sync applies it.
type syncFilter struct {
	f             *filter.Filter
	timelineLimit int
	// lazyMembers is the state filter's lazy_load_members (spec: /sync
	// supports lazy loading on the state filter only).
	lazyMembers  bool
	includeLeave bool
	federation   bool
}

func compileSyncFilter(f *filter.Filter) *syncFilter {
	sf := &syncFilter{f: f, timelineLimit: syncDefaultTimelineLimit, federation: f.EventFormat == "federation"}
	if r := f.Room; r != nil {
		sf.includeLeave = r.IncludeLeave
		if r.Timeline != nil && r.Timeline.Limit != nil {
			sf.timelineLimit = min(*r.Timeline.Limit, syncMaxTimelineLimit)
		}
		if r.State != nil {
			sf.lazyMembers = r.State.LazyLoadMembers
		}
	}
	return sf
}

// room reports whether the room filter's rooms and not_rooms let a room in;
// they apply before every section filter.
func (sf *syncFilter) room(roomID string) bool {
	r := sf.f.Room
	if r == nil {
		return true
	}
	return roomListed(r.Rooms, r.NotRooms, roomID)
}

func roomListed(rooms, notRooms []string, roomID string) bool {
	if slices.Contains(notRooms, roomID) {
		return false
	}
	return rooms == nil || slices.Contains(rooms, roomID)
}

// section returns a room's filter for one section (nil: everything).
func (sf *syncFilter) section(pick func(*filter.RoomFilter) *filter.RoomEventFilter, roomID string) *eventFilter {
	var ref filter.RoomEventFilter
	if r := sf.f.Room; r != nil {
		if p := pick(r); p != nil {
			ref = *p
		}
	}
	return &eventFilter{f: ref, roomOK: roomListed(ref.Rooms, ref.NotRooms, roomID)}
}

func (sf *syncFilter) timeline(roomID string) *eventFilter {
	return sf.section(func(r *filter.RoomFilter) *filter.RoomEventFilter { return r.Timeline }, roomID)
}

func (sf *syncFilter) state(roomID string) *eventFilter {
	return sf.section(func(r *filter.RoomFilter) *filter.RoomEventFilter { return r.State }, roomID)
}

// roomAccountData keeps the room account data types the filter lets
// through.
func (sf *syncFilter) roomAccountData(roomID, typ string) bool {
	ef := sf.section(func(r *filter.RoomFilter) *filter.RoomEventFilter { return r.AccountData }, roomID)
	return ef.roomOK && typeAllowed(ef.f.Types, ef.f.NotTypes, typ)
}

// globalAccountData keeps the global account data types the filter lets
// through. Account data has no sender, and the limit is not applied: a
// sync that dropped some would never send them (Synapse does the same).
func (sf *syncFilter) globalAccountData(typ string) bool {
	ef := sf.f.AccountData
	return ef == nil || typeAllowed(ef.Types, ef.NotTypes, typ)
}

func typeAllowed(types, notTypes []string, typ string) bool {
	match := func(p string) bool { return typeMatches(p, typ) }
	if slices.ContainsFunc(notTypes, match) {
		return false
	}
	return types == nil || slices.ContainsFunc(types, match)
}

// eventPasses applies a section filter to an event (nil: no filter).
func eventPasses(ef *eventFilter, ev sql.Event) bool {
	return ef == nil || ef.matches(ev)
}

// The compiled filters kept: at most filterCacheMax, each given as at
// most filterCacheRaw bytes (clients send short ones; a request line may
// carry a megabyte, and 10,000 of those would be 10 GiB).
const (
	filterCacheMax = 10_000
	filterCacheRaw = 4096
)

// filterKey is a filter parameter, with the owner of a filter id ("" for
// inline JSON, which means the same for everyone).
type filterKey struct{ localpart, raw string }

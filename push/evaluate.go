package push

import "strings"

// Context is what evaluation needs beyond the event. The room's fields are
// the same for every member and are set once per event; UserID and
// DisplayName change per member. A Context also remembers, for the event
// it last evaluated, which member-independent conditions of the shared
// default ruleset hold, so each further member costs a walk over the
// answers: the room's fields must not change between the members of one
// event, and a Context must not be used by two goroutines at once.
type Context struct {
	// UserID is the member the rules belong to.
	UserID string
	// DisplayName is the member's display name in the room ("" when
	// unknown or unset); only needed when Compiled.NeedsDisplayName.
	DisplayName string
	// MemberCount is the number of joined members of the room.
	MemberCount int64
	// SenderPower is the sender's power level.
	SenderPower int64
	// NotificationPowers is the notifications object of the room's power
	// levels; a key it lacks needs 50 (spec: m.room.power_levels).
	NotificationPowers map[string]int64

	// memo holds, for memoEvent and Defaults, per rule: 1 when its
	// member-independent conditions hold, -1 when not, 0 not yet known.
	memoEvent *Event
	memo      []int8
	// bodyGlobs holds, for memoEvent, the results of body patterns that
	// need a regexp, by pattern: users' keyword rules often repeat.
	bodyGlobs map[string]bool
}

// forEvent resets the per-event memory when ev is a new event.
func (ctx *Context) forEvent(ev *Event) {
	if ctx.memoEvent != ev {
		ctx.memoEvent = ev
		ctx.memo = ctx.memo[:0]
		clear(ctx.bodyGlobs)
	}
}

// defaultNotificationPower is the level a notification key needs when the
// power levels do not name it (spec: notifications.room defaults to 50).
const defaultNotificationPower = 50

// Evaluate returns the result of the first enabled rule of rules that
// matches ev for ctx.UserID, or a zero Result (no notification) when none
// does. It does not check that the member is not the sender: callers leave
// the sender out (spec: "Homeservers MUST NOT notify the Push Gateway for
// events that the user has sent themselves").
func Evaluate(rules *Compiled, ev *Event, ctx *Context) Result {
	ctx.forEvent(ev)
	var memo []int8
	if rules.shared {
		if len(ctx.memo) != len(rules.rules) {
			ctx.memo = append(ctx.memo[:0], make([]int8, len(rules.rules))...)
		}
		memo = ctx.memo
	}
	for i := range rules.rules {
		r := &rules.rules[i]
		if r.legacy && ev.hasMentions {
			continue
		}
		if memo == nil {
			if !matchAll(r.conds, ev, ctx) {
				continue
			}
		} else {
			if memo[i] == 0 {
				memo[i] = -1
				if matchAll(r.conds, ev, ctx) {
					memo[i] = 1
				}
			}
			if memo[i] < 0 {
				continue
			}
		}
		if matchAll(r.own, ev, ctx) {
			return r.result
		}
	}
	return Result{}
}

func matchAll(conds []cond, ev *Event, ctx *Context) bool {
	for i := range conds {
		if !matches(&conds[i], ev, ctx) {
			return false
		}
	}
	return true
}

func matches(c *cond, ev *Event, ctx *Context) bool {
	switch c.op {
	case opGlob:
		v := ev.lookup(c.key, c.known)
		if v == nil || v.kind != kindString {
			return false
		}
		if c.glob.re == nil {
			return c.glob.match(v.lower)
		}
		matched, ok := ctx.bodyGlobs[c.glob.pattern]
		if !ok {
			matched = c.glob.match(v.lower)
			if ctx.bodyGlobs == nil {
				ctx.bodyGlobs = make(map[string]bool)
			}
			ctx.bodyGlobs[c.glob.pattern] = matched
		}
		return matched
	case opGlobSelfUserID:
		v := ev.lookup(c.key, c.known)
		return v != nil && v.kind == kindString && strings.EqualFold(v.str, ctx.UserID)
	case opWordsSelfLocalpart:
		v := ev.known[propBody]
		return v != nil && v.kind == kindString && containsWord(v.lower, lower(localpartOf(ctx.UserID)))
	case opIs:
		v := ev.lookup(c.key, c.known)
		return v != nil && v.kind != kindArray && v.equal(c.val)
	case opIsSelfUserID:
		v := ev.lookup(c.key, c.known)
		return v != nil && v.kind == kindString && v.str == ctx.UserID
	case opContains:
		v := ev.lookup(c.key, c.known)
		if v == nil || v.kind != kindArray {
			return false
		}
		for _, e := range v.arr {
			if e.equal(c.val) {
				return true
			}
		}
		return false
	case opContainsSelfUserID:
		v := ev.lookup(c.key, c.known)
		if v == nil || v.kind != kindArray {
			return false
		}
		for _, e := range v.arr {
			if e.kind == kindString && e.str == ctx.UserID {
				return true
			}
		}
		return false
	case opDisplayName:
		v := ev.known[propBody]
		if v == nil || v.kind != kindString || ctx.DisplayName == "" {
			return false
		}
		return containsWord(v.lower, lower(ctx.DisplayName))
	case opMemberCount:
		n := ctx.MemberCount
		switch c.cmp {
		case "==":
			return n == c.n
		case "<":
			return n < c.n
		case ">":
			return n > c.n
		case "<=":
			return n <= c.n
		case ">=":
			return n >= c.n
		}
		return false
	case opSenderPermission:
		need, ok := ctx.NotificationPowers[c.str]
		if !ok {
			need = defaultNotificationPower
		}
		return ctx.SenderPower >= need
	case opRoomIs:
		return ev.roomID == c.str
	case opSenderIs:
		return ev.sender == c.str
	}
	return false
}

// lower lower-cases s, without allocating when s has no upper-case ASCII
// and no multi-byte characters (user ids and most names).
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || ('A' <= c && c <= 'Z') {
			return strings.ToLower(s)
		}
	}
	return s
}

package syncapi_test

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
)

// TestHistoryVisibilityMatrix checks, for each history visibility setting
// and each membership history, exactly which events /messages and
// /context serve (spec: Room History Visibility). The timeline, after the
// room's creation:
//
//	inv    alice invites "invited" (who never joins)
//	inv2   alice invites "invjoin"
//	lj     "left" joins
//	jj     "joined" joins
//	m1     alice: message
//	ll     "left" leaves
//	m2     alice: message
//	ij     "invjoin" joins
//	latej  "late" joins
//	m3     alice: message
//
// "never" never has a membership. Users who are not joined now and have
// never been (never, invited) get 403 unless the room is world_readable:
// "a user needs to join a room to view events in that room".
func TestHistoryVisibilityMatrix(t *testing.T) {
	all := []string{"inv", "inv2", "lj", "jj", "m1", "ll", "m2", "ij", "latej", "m3"}
	// While joined, from their own join to their own leave.
	leftSees := []string{"lj", "jj", "m1", "ll"}
	forbidden := []string(nil)
	expect := map[string]map[string][]string{
		"world_readable": {"never": all, "invited": all, "left": all, "joined": all, "invjoin": all, "late": all},
		// shared: everything for whoever is joined now; a user who left
		// sees only what they saw while joined (as Synapse).
		"shared": {"never": forbidden, "invited": forbidden, "left": leftSees, "joined": all, "invjoin": all, "late": all},
		// invited: from the user's invite (or join) onwards.
		"invited": {"never": forbidden, "invited": forbidden, "left": leftSees,
			"joined":  {"jj", "m1", "ll", "m2", "ij", "latej", "m3"},
			"invjoin": {"inv2", "lj", "jj", "m1", "ll", "m2", "ij", "latej", "m3"},
			"late":    {"latej", "m3"}},
		// joined: from the user's join onwards.
		"joined": {"never": forbidden, "invited": forbidden, "left": leftSees,
			"joined":  {"jj", "m1", "ll", "m2", "ij", "latej", "m3"},
			"invjoin": {"ij", "latej", "m3"},
			"late":    {"latej", "m3"}},
	}
	forEachEngine(t, func(t *testing.T, h hs) {
		alice := h.user(t, "alice")
		users := map[string]*clientUser{}
		for _, name := range []string{"never", "invited", "left", "joined", "invjoin", "late"} {
			users[name] = &clientUser{cli: h.user(t, name)}
		}
		for _, vis := range []string{"world_readable", "shared", "invited", "joined"} {
			t.Run(vis, func(t *testing.T) {
				roomID := roomWithVisibility(t, alice, vis)
				invite(t, alice, roomID, users["invited"].cli)
				invite(t, alice, roomID, users["invjoin"].cli)
				join(t, users["left"].cli, roomID)
				join(t, users["joined"].cli, roomID)
				named := map[string]string{"m1": send(t, alice, roomID, "m1", nil)}
				leave(t, users["left"].cli, roomID)
				named["m2"] = send(t, alice, roomID, "m2", nil)
				join(t, users["invjoin"].cli, roomID)
				join(t, users["late"].cli, roomID)
				named["m3"] = send(t, alice, roomID, "m3", nil)

				timeline := h.allEvents(t, alice, roomID)
				named["inv"] = membershipEventID(t, timeline, users["invited"].cli.UserID.String(), 0)
				named["inv2"] = membershipEventID(t, timeline, users["invjoin"].cli.UserID.String(), 0)
				named["lj"] = membershipEventID(t, timeline, users["left"].cli.UserID.String(), 0)
				named["ll"] = membershipEventID(t, timeline, users["left"].cli.UserID.String(), 1)
				named["jj"] = membershipEventID(t, timeline, users["joined"].cli.UserID.String(), 0)
				named["ij"] = membershipEventID(t, timeline, users["invjoin"].cli.UserID.String(), 1)
				named["latej"] = membershipEventID(t, timeline, users["late"].cli.UserID.String(), 0)
				nameOf := map[string]string{}
				for n, id := range named {
					nameOf[id] = n
				}
				for user, want := range expect[vis] {
					cli := users[user].cli
					path := roomPath("v3", roomID, "/messages")
					if want == nil {
						wantError(t, vis+": "+user+" /messages", h.get(t, cli, path, url.Values{"dir": {"f"}}), http.StatusForbidden, "M_FORBIDDEN")
						for _, n := range all {
							wantError(t, vis+": "+user+" /context "+n, h.get(t, cli, roomPath("v3", roomID, "/context/"+esc(named[n])), nil),
								http.StatusForbidden, "M_FORBIDDEN")
						}
						continue
					}
					// Both directions, with pages small enough to cross every
					// boundary of visibility.
					for _, dir := range []string{"f", "b"} {
						var seen []string
						for _, e := range h.paginateAll(t, cli, roomID, dir, 2, "", "") {
							if n, ok := nameOf[e.EventID]; ok {
								seen = append(seen, n)
							}
						}
						if dir == "b" {
							slices.Reverse(seen)
						}
						if !slices.Equal(seen, want) {
							t.Errorf("%s: %s sees %v paging %s, want %v", vis, user, seen, dir, want)
						}
					}
					// /context: 200 exactly for the visible events, and with a
					// limit past the room's size, the events around are
					// exactly the other visible ones.
					for _, n := range all {
						r := h.get(t, cli, roomPath("v3", roomID, "/context/"+esc(named[n])), url.Values{"limit": {"100"}})
						if !slices.Contains(want, n) {
							wantError(t, vis+": "+user+" /context "+n, r, http.StatusNotFound, "M_NOT_FOUND")
							continue
						}
						var ctx contextResponse
						h.getJSON(t, cli, roomPath("v3", roomID, "/context/"+esc(named[n])), url.Values{"limit": {"100"}}, &ctx)
						before := slices.Clone(ctx.EventsBefore)
						slices.Reverse(before) // served newest first
						var around []string
						for _, e := range append(append(before, ctx.Event), ctx.EventsAfter...) {
							if nn, ok := nameOf[e.EventID]; ok {
								around = append(around, nn)
							}
						}
						if !slices.Equal(around, want) {
							t.Errorf("%s: %s's /context of %s shows %v, want %v", vis, user, n, around, want)
						}
						if ctx.Event.EventID != named[n] {
							t.Errorf("%s: %s's /context of %s returns %s", vis, user, n, ctx.Event.EventID)
						}
					}
				}
			})
		}
	})
}

type clientUser struct {
	cli *mautrix.Client
}

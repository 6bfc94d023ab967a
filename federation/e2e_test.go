package federation_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/homeserver/hstest"
	"github.com/weft-chat/weft/internal/testclient"
	"github.com/weft-chat/weft/sql/sqltest"
)

// End-to-end federation between whole Weft servers over loopback TLS,
// driven through the client API, except where a test reaches into a
// server's database for its outbound queue: to hold it, to see it empty,
// or to age its back-off. Joins by id and by remote alias, leave and
// rejoin are in join_twoserver_test.go, remote invites in invite_test.go,
// remote profiles and EDUs in edus_twoserver_test.go.

// TestFederation runs scenarios on three federated servers A, B and C,
// with alice on A, bob on B and carol on C; each scenario has rooms of
// its own.
func TestFederation(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			cfgs := []config.Config{hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)}
			servers := hstest.StartFederated(t, cfgs...)
			f := &trio{cfgs: cfgs,
				alice: testclient.Register(t, servers[0].ClientURL, "alice"),
				bob:   testclient.Register(t, servers[1].ClientURL, "bob"),
				carol: testclient.Register(t, servers[2].ClientURL, "carol")}
			t.Run("three servers", f.threeServers)
			t.Run("kick and ban", f.kickBanAcross)
			t.Run("fork with a held queue", f.forkHeldQueue)
		})
	}
}

// trio is TestFederation's servers' configurations and users.
type trio struct {
	cfgs              []config.Config
	alice, bob, carol *mautrix.Client
}

// threeServers: a room of A with users of B and C, both invited by
// createRoom's invite list (each invite countersigned by the invitee's
// server, as /invite does): messages sent at once from the three servers
// reach every server, each sender's in the order sent.
func (f *trio) threeServers(t *testing.T) {
	ctx := context.Background()
	alice, bob, carol := f.alice, f.bob, f.carol
	users := []*mautrix.Client{alice, bob, carol}

	since := []string{syncSince(t, bob), syncSince(t, carol)}
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Three", Preset: "private_chat",
		Invite: []id.UserID{bob.UserID, carol.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	for i, cli := range []*mautrix.Client{bob, carol} {
		syncUntil(t, cli, since[i], "the createRoom invite", func(r *mautrix.RespSync) bool {
			return r.Rooms.Invite[roomID] != nil
		})
		// The room id names no server (version 12): the invite's does.
		if _, err := cli.JoinRoom(ctx, roomID.String(), nil); err != nil {
			t.Fatalf("%s joins: %v", cli.UserID, err)
		}
	}
	for _, cli := range users {
		waitFor(t, func() bool { return len(joinedMembers(t, cli, roomID)) == 3 })
	}

	const perUser = 10
	var wg sync.WaitGroup
	for _, cli := range users {
		wg.Go(func() {
			for i := range perUser {
				if _, err := cli.SendText(ctx, roomID, fmt.Sprintf("%s %d", cli.UserID.Localpart(), i)); err != nil {
					t.Errorf("%s sends: %v", cli.UserID, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, cli := range users {
		waitFor(t, func() bool { return len(bodies(t, cli, roomID)) == len(users)*perUser })
		got := bodies(t, cli, roomID)
		for _, sender := range users {
			var mine []string
			for _, b := range got {
				if strings.HasPrefix(b, sender.UserID.Localpart()+" ") {
					mine = append(mine, b)
				}
			}
			var want []string
			for i := range perUser {
				want = append(want, fmt.Sprintf("%s %d", sender.UserID.Localpart(), i))
			}
			if !slices.Equal(mine, want) {
				t.Fatalf("%s reads %s's messages as %v", cli.UserID, sender.UserID, mine)
			}
		}
	}
}

// kickBanAcross: alice on A kicks bob of B, whose sync on B shows the
// room left; bans him, so that his join through A is refused (403);
// unbans him, and he joins again.
func (f *trio) kickBanAcross(t *testing.T) {
	ctx := context.Background()
	alice, bob, cfgA := f.alice, f.bob, f.cfgs[0]
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID
	via := &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}
	if _, err := bob.JoinRoom(ctx, roomID.String(), via); err != nil {
		t.Fatal(err)
	}

	since := syncSince(t, bob)
	if _, err := alice.KickUser(ctx, roomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "out"}); err != nil {
		t.Fatal(err)
	}
	syncUntil(t, bob, since, "the kick", func(r *mautrix.RespSync) bool {
		left := r.Rooms.Leave[roomID]
		return left != nil && slices.ContainsFunc(left.Timeline.Events, func(ev *event.Event) bool {
			return ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() &&
				ev.Sender == alice.UserID && ev.Content.Raw["membership"] == "leave"
		})
	})

	if _, err := alice.BanUser(ctx, roomID, &mautrix.ReqBanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, roomID.String(), via); !isMautrixError(err, 403, "M_FORBIDDEN") {
		t.Fatalf("banned bob joins: %v, want 403 M_FORBIDDEN", err)
	}

	if _, err := alice.UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoom(ctx, roomID.String(), via); err != nil {
		t.Fatalf("unbanned bob joins: %v", err)
	}
	if _, err := alice.SendText(ctx, roomID, "welcome back"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return hasText(t, bob, roomID, "welcome back") })
}

// TestOutage: B is stopped, alice of A sends 100 messages, B starts
// again: bob of B reads all of them, in order, seconds later, A sending
// them at its first retry (10 seconds after its first failure). Then a
// long outage, which A's back-off has grown to an hour (set in A's
// database, as hours of failures would leave it): B's first transaction
// to A, here bob's message when he is back, tells A that B is up, and A
// sends what waits at once. (B's restart alone tells A nothing: A learns
// it from B's traffic or at its next retry, as Synapse does.)
func TestOutage(t *testing.T) {
	for _, engine := range sqltest.Engines() {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			cfgA, cfgB := hstest.FederationConfig(t, engine), hstest.FederationConfig(t, engine)
			servers := hstest.StartFederated(t, cfgA, cfgB)
			b := servers[1]
			dbA := openDB(t, cfgA.Database.URL)
			nameB := cfgB.ServerName
			alice := testclient.Register(t, servers[0].ClientURL, "alice")
			bob := testclient.Register(t, b.ClientURL, "bob")
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
			if err != nil {
				t.Fatal(err)
			}
			roomID := created.RoomID
			if _, err := bob.JoinRoom(ctx, roomID.String(), &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}); err != nil {
				t.Fatal(err)
			}
			// B has sent A all it had (and knows A has it: a transaction
			// answered after B stopped would be sent again when B starts,
			// and tell A that B is back): what follows shows A's retries
			// alone.
			if _, err := bob.SendText(ctx, roomID, "hi"); err != nil {
				t.Fatal(err)
			}
			dbB := openDB(t, cfgB.Database.URL)
			waitFor(t, func() bool {
				queued, err := dbB.FederationQueued(ctx, cfgA.ServerName)
				return err == nil && !queued && hasText(t, alice, roomID, "hi")
			})
			var want []string
			// outage stops B while alice sends 100 messages and returns once
			// A has failed to reach B.
			outage := func(round int) {
				t.Helper()
				b.Stop(t)
				for i := range 100 {
					body := fmt.Sprintf("round %d: %d", round, i)
					if _, err := alice.SendText(ctx, roomID, body); err != nil {
						t.Fatal(err)
					}
					want = append(want, body)
				}
				waitFor(t, func() bool {
					st, err := dbA.FederationDestinationState(ctx, nameB)
					return err == nil && st.RetryAtTS != 0
				})
			}
			// seen waits until bob reads alice's messages as sent and
			// returns how long that took.
			seen := func() time.Duration {
				t.Helper()
				start := time.Now()
				deadline := start.Add(30 * time.Second)
				for {
					var got []string
					for _, body := range bodies(t, bob, roomID) {
						if strings.HasPrefix(body, "round ") {
							got = append(got, body)
						}
					}
					if slices.Equal(got, want) {
						return time.Since(start)
					}
					if time.Now().After(deadline) {
						t.Fatalf("bob reads %d of alice's %d messages (first %q), want them all in order", len(got), len(want), got[:min(len(got), 1)])
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			restart := func() {
				t.Helper()
				b.Restart(t)
				// The client's connections went with the old process.
				bob.Client.CloseIdleConnections()
			}

			outage(1)
			restart()
			// B sends A nothing: A sends at its first retry, 10 seconds
			// after its first failure (the second would come 16 to 28
			// seconds after the first).
			took := seen()
			if took > 20*time.Second {
				t.Errorf("short outage: A took %v to send what waited", took)
			}
			t.Logf("short outage: bob read all 100 messages %v after B restarted", took)

			outage(2)
			st, err := dbA.FederationDestinationState(ctx, nameB)
			if err != nil {
				t.Fatal(err)
			}
			hour := time.Hour.Milliseconds()
			if err := dbA.SetFederationBackoff(ctx, nameB, st.FailureTS, hour, time.Now().UnixMilli()+hour); err != nil {
				t.Fatal(err)
			}
			restart()
			if _, err := bob.SendText(ctx, roomID, "back"); err != nil {
				t.Fatal(err)
			}
			took = seen()
			if took > 10*time.Second {
				t.Errorf("after B's transaction, A took %v to send what waited", took)
			}
			t.Logf("long outage: bob read all 100 messages %v after his first message", took)
		})
	}
}

// forkHeldQueue: A and B change the same state while B's queue to A
// is held (another process of B holds its lease on A: the queue's own
// way of sharing destinations between processes), so that neither change
// is made on the other; once released, both servers resolve the fork to
// the same state: the topic in one room, the power levels in another, in
// a version 10 and a version 12 room.
func (f *trio) forkHeldQueue(t *testing.T) {
	ctx := context.Background()
	alice, bob, cfgA := f.alice, f.bob, f.cfgs[0]
	dbB := openDB(t, f.cfgs[1].Database.URL)

	type fork struct {
		version string
		typ     event.Type
		roomID  id.RoomID
		// change is the content each side sets.
		change func(cli *mautrix.Client) any
		mine   map[id.UserID]id.EventID
	}
	topic := func(cli *mautrix.Client) any {
		return map[string]any{"topic": "set on " + cli.UserID.Homeserver()}
	}
	var forks []*fork
	for _, version := range []string{"10", "12"} {
		for _, typ := range []event.Type{event.StateTopic, event.StatePowerLevels} {
			f := &fork{version: version, typ: typ, change: topic, mine: map[id.UserID]id.EventID{}}
			created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: id.RoomVersion(version)})
			if err != nil {
				t.Fatal(err)
			}
			f.roomID = created.RoomID
			if _, err := bob.JoinRoom(ctx, f.roomID.String(), &mautrix.ReqJoinRoom{Via: []string{cfgA.ServerName}}); err != nil {
				t.Fatal(err)
			}
			var pl map[string]any
			if err := alice.StateEvent(ctx, f.roomID, event.StatePowerLevels, "", &pl); err != nil {
				t.Fatal(err)
			}
			users, _ := pl["users"].(map[string]any)
			users[bob.UserID.String()] = 100
			if _, err := alice.SendStateEvent(ctx, f.roomID, event.StatePowerLevels, "", pl); err != nil {
				t.Fatal(err)
			}
			if typ == event.StatePowerLevels {
				// Each side moves a different level.
				f.change = func(cli *mautrix.Client) any {
					changed := maps.Clone(pl)
					key := "events_default"
					if cli == bob {
						key = "state_default"
					}
					changed[key] = 40
					return changed
				}
			}
			forks = append(forks, f)
		}
	}
	// B has bob's power before he uses it.
	for _, f := range forks {
		waitFor(t, func() bool {
			var pl event.PowerLevelsEventContent
			return bob.StateEvent(ctx, f.roomID, event.StatePowerLevels, "", &pl) == nil && pl.GetUserLevel(bob.UserID) == 100
		})
	}

	const holder = "test-holder"
	nameA := cfgA.ServerName
	waitFor(t, func() bool {
		now := time.Now()
		_, held, err := dbB.AcquireFederationLease(ctx, nameA, holder, now.UnixMilli(), now.Add(time.Hour).UnixMilli())
		return err == nil && held
	})
	// B changes first, then A, whose change B gets at once: neither
	// side's change is made on the other's.
	for _, cli := range []*mautrix.Client{bob, alice} {
		for _, f := range forks {
			resp, err := cli.SendStateEvent(ctx, f.roomID, f.typ, "", f.change(cli))
			if err != nil {
				t.Fatalf("v%s %s by %s: %v", f.version, f.typ.Type, cli.UserID, err)
			}
			f.mine[cli.UserID] = resp.EventID
		}
	}
	for _, f := range forks {
		waitFor(t, func() bool {
			_, err := bob.GetEvent(ctx, f.roomID, f.mine[alice.UserID])
			return err == nil
		})
		if _, err := alice.GetEvent(ctx, f.roomID, f.mine[bob.UserID]); !isMautrixError(err, 404, "M_NOT_FOUND") {
			t.Fatalf("v%s %s: A has B's change while B's queue is held: %v", f.version, f.typ.Type, err)
		}
	}

	if err := dbB.ReleaseFederationLease(ctx, nameA, holder); err != nil {
		t.Fatal(err)
	}
	// B's queue waits for the lease it saw taken; A's next
	// transaction tells B to look again.
	if _, err := alice.SendText(ctx, forks[0].roomID, "released"); err != nil {
		t.Fatal(err)
	}
	for _, f := range forks {
		var onA, onB id.EventID
		waitFor(t, func() bool {
			onA, onB = stateEventID(t, alice, f.roomID, f.typ), stateEventID(t, bob, f.roomID, f.typ)
			return onA == onB
		})
		winner := "A's"
		switch onA {
		case f.mine[alice.UserID]:
		case f.mine[bob.UserID]:
			winner = "B's"
		default:
			t.Errorf("v%s %s: resolved to %s, neither side's change", f.version, f.typ.Type, onA)
		}
		t.Logf("v%s %s: both servers resolved to %s change", f.version, f.typ.Type, winner)
	}
}

// stateEventID is the id of the room's current state event of type typ
// (state key "") as cli reads it.
func stateEventID(t *testing.T, cli *mautrix.Client, roomID id.RoomID, typ event.Type) id.EventID {
	t.Helper()
	state, err := cli.State(context.Background(), roomID)
	if err != nil {
		t.Fatalf("state as %s: %v", cli.UserID, err)
	}
	if ev := state[typ][""]; ev != nil {
		return ev.ID
	}
	return ""
}

// syncSince is the next_batch of a sync of cli, for syncUntil
// (edus_twoserver_test.go).
func syncSince(t *testing.T, cli *mautrix.Client) string {
	t.Helper()
	resp, err := cli.SyncRequest(context.Background(), 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	return resp.NextBatch
}

// joinedMembers is the room's joined members as cli reads them.
func joinedMembers(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []id.UserID {
	t.Helper()
	resp, err := cli.JoinedMembers(context.Background(), roomID)
	if err != nil {
		t.Fatalf("joined members as %s: %v", cli.UserID, err)
	}
	var out []id.UserID
	for u := range resp.Joined {
		out = append(out, u)
	}
	return out
}

// bodies is the bodies of the room's messages as cli reads them (the
// latest 1000), oldest first.
func bodies(t *testing.T, cli *mautrix.Client, roomID id.RoomID) []string {
	t.Helper()
	msgs, err := cli.Messages(context.Background(), roomID, "", "", mautrix.DirectionBackward, nil, 1000)
	if err != nil {
		t.Fatalf("messages as %s: %v", cli.UserID, err)
	}
	var out []string
	for _, ev := range slices.Backward(msgs.Chunk) {
		if ev.Type == event.EventMessage {
			b, _ := ev.Content.Raw["body"].(string)
			out = append(out, b)
		}
	}
	return out
}

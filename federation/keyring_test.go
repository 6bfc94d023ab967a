package federation

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/sql/sqltest"
)

const ours = spec.ServerName("ours.example")

func newTestRing(t testing.TB, db *sql.DB, fake *fakeServers, notaries ...spec.ServerName) (*KeyRing, serverkey.Key) {
	t.Helper()
	k, err := serverkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return NewKeyRing(KeyRingConfig{DB: db, ServerName: ours, Key: k, Client: fake, Notaries: notaries, RefetchInterval: time.Nanosecond}), k
}

// verify checks one signed message from server at time at.
func verify(t *testing.T, ring *KeyRing, server spec.ServerName, msg []byte, at time.Time) error {
	t.Helper()
	res, err := ring.VerifyJSONs(context.Background(), []gomatrixserverlib.VerifyJSONRequest{{
		ServerName: server, AtTS: spec.AsTimestamp(at), Message: msg,
		ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
	}})
	if err != nil {
		t.Fatalf("VerifyJSONs: %v", err)
	}
	return res[0].Error
}

func TestKeyRingCachesFetchedKeys(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		ctx := context.Background()
		fake := newFakeServers()
		remote := fake.add(t, "remote.example", time.Hour)
		ring, _ := newTestRing(t, db, fake)

		msg := signedBy(t, remote, `{"hello":"world"}`)
		if err := verify(t, ring, "remote.example", msg, time.Now()); err != nil {
			t.Fatalf("first verification: %v", err)
		}
		if n := fake.directCalls("remote.example"); n != 1 {
			t.Fatalf("first verification fetched %d times, want 1", n)
		}
		rows, err := db.ServerKeysFor(ctx, []string{"remote.example"})
		if err != nil || len(rows) != 1 || rows[0].KeyID != string(remote.keys.Key.ID) ||
			rows[0].PublicKey != base64.RawStdEncoding.EncodeToString(remote.keys.Key.Public()) {
			t.Fatalf("cached keys = %+v, %v", rows, err)
		}
		// The document is kept for the notary, as signed by its server.
		docs, err := db.ServerKeyJSONs(ctx, "remote.example")
		if err != nil || len(docs) != 1 {
			t.Fatalf("kept documents = %+v, %v", docs, err)
		}
		if err := gomatrixserverlib.VerifyJSON("remote.example", remote.keys.Key.ID, remote.keys.Key.Public(), docs[0].JSON); err != nil {
			t.Fatalf("kept document lost its signature: %v", err)
		}

		// Served from the cache: no second fetch, even for another message.
		if err := verify(t, ring, "remote.example", signedBy(t, remote, `{"n":2}`), time.Now()); err != nil {
			t.Fatalf("second verification: %v", err)
		}
		if n := fake.directCalls("remote.example"); n != 1 {
			t.Fatalf("second verification refetched (%d fetches)", n)
		}

		// A bad signature fails, with the key known.
		forged := signedBy(t, remote, `{"hello":"world"}`)
		var m map[string]any
		json.Unmarshal(forged, &m)
		m["hello"] = "mars"
		tampered, _ := json.Marshal(m)
		if err := verify(t, ring, "remote.example", tampered, time.Now()); err == nil {
			t.Fatal("a tampered message verified")
		}

		// A new ring over the same database (a restart) uses the cache too.
		ring2, _ := newTestRing(t, db, fake)
		if err := verify(t, ring2, "remote.example", msg, time.Now()); err != nil {
			t.Fatal(err)
		}
		if n := fake.directCalls("remote.example"); n != 1 {
			t.Fatalf("after restart: %d fetches, want 1", n)
		}
	})
}

func TestKeyRingRefetchesExpiredKeys(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		fake := newFakeServers()
		remote := fake.add(t, "remote.example", 300*time.Millisecond)
		ring, _ := newTestRing(t, db, fake)
		msg := signedBy(t, remote, `{"a":1}`)
		if err := verify(t, ring, "remote.example", msg, time.Now()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(400 * time.Millisecond)
		// The cached key's valid_until_ts has passed: the ring fetches the
		// document again, which now lasts an hour.
		fake.set(func() { remote.keys.Validity = time.Hour })
		if err := verify(t, ring, "remote.example", msg, time.Now()); err != nil {
			t.Fatalf("after expiry: %v", err)
		}
		if n := fake.directCalls("remote.example"); n != 2 {
			t.Fatalf("%d fetches, want 2 (the expired key refetched)", n)
		}
		rows, _ := db.ServerKeysFor(context.Background(), []string{"remote.example"})
		if len(rows) != 1 || time.UnixMilli(rows[0].ValidUntilTS).Before(time.Now().Add(50*time.Minute)) {
			t.Fatalf("cache not updated by the refetch: %+v", rows)
		}
	})
}

func TestKeyRingCapsValidityAtSevenDays(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	fake := newFakeServers()
	remote := fake.add(t, "remote.example", 365*24*time.Hour)
	ring, _ := newTestRing(t, db, fake)
	before := time.Now()
	if err := verify(t, ring, "remote.example", signedBy(t, remote, `{}`), time.Now()); err != nil {
		t.Fatal(err)
	}
	rows, _ := db.ServerKeysFor(context.Background(), []string{"remote.example"})
	if len(rows) != 1 {
		t.Fatalf("rows = %+v", rows)
	}
	got := time.UnixMilli(rows[0].ValidUntilTS)
	// Room versions 5+: "the lesser of valid_until_ts and 7 days into the
	// future" (rooms/fragments/v5-signing-requirements.md).
	if got.Before(before.Add(7*24*time.Hour-time.Second)) || got.After(time.Now().Add(7*24*time.Hour)) {
		t.Fatalf("stored valid_until_ts %v, want 7 days from now, not the published year", got)
	}
}

func TestKeyRingOwnKeysNeverFetched(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	fake := newFakeServers()
	old, _ := serverkey.Generate()
	k, _ := serverkey.Generate()
	ring := NewKeyRing(KeyRingConfig{DB: db, ServerName: ours, Key: k, Client: fake, OldKeys: []config.OldSigningKey{{
		KeyID: string(old.ID), PublicKey: base64.RawStdEncoding.EncodeToString(old.Public()), ExpiredTS: time.Now().Add(-time.Hour).UnixMilli(),
	}}})
	self := &fakeServer{keys: &KeyServer{ServerName: ours, Key: k}}
	if err := verify(t, ring, ours, signedBy(t, self, `{"x":1}`), time.Now()); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	// The old key verifies what it signed before it expired, not after.
	selfOld := &fakeServer{keys: &KeyServer{ServerName: ours, Key: old}}
	if err := verify(t, ring, ours, signedBy(t, selfOld, `{"x":2}`), time.Now().Add(-2*time.Hour)); err != nil {
		t.Fatalf("old key before expiry: %v", err)
	}
	if err := verify(t, ring, ours, signedBy(t, selfOld, `{"x":2}`), time.Now()); err == nil {
		t.Fatal("old key verified after its expiry")
	}
	if fake.directCalls(ours) != 0 {
		t.Fatal("the ring fetched our own keys over the network")
	}
	if rows, _ := db.ServerKeysFor(context.Background(), []string{string(ours)}); len(rows) != 0 {
		t.Fatalf("own keys stored in the cache: %+v", rows)
	}
}

func TestKeyRingUnknownKeyRateLimited(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	fake := newFakeServers()
	remote := fake.add(t, "remote.example", time.Hour)
	k, _ := serverkey.Generate()
	ring := NewKeyRing(KeyRingConfig{DB: db, ServerName: ours, Key: k, Client: fake}) // default interval
	stranger, _ := serverkey.Generate()
	imposter := &fakeServer{keys: &KeyServer{ServerName: "remote.example", Key: stranger}}
	for range 3 {
		if err := verify(t, ring, "remote.example", signedBy(t, imposter, `{}`), time.Now()); err == nil {
			t.Fatal("a signature by a key the server does not publish verified")
		}
	}
	if n := fake.directCalls("remote.example"); n != 1 {
		t.Fatalf("3 requests with an unknown key made %d fetches, want 1", n)
	}
	// The real key still verifies (from the one fetch).
	if err := verify(t, ring, "remote.example", signedBy(t, remote, `{}`), time.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestKeyRingNotaryFallback(t *testing.T) {
	sqltest.Run(t, func(t *testing.T, db *sql.DB) {
		fake := newFakeServers()
		remote := fake.add(t, "remote.example", time.Hour)
		fake.add(t, "notary.example", time.Hour)
		fake.set(func() { remote.down = true })
		msg := signedBy(t, remote, `{"via":"notary"}`)

		// Without notaries the keys of an unreachable server are unknown.
		plain, _ := newTestRing(t, db, fake)
		if err := verify(t, plain, "remote.example", msg, time.Now()); err == nil {
			t.Fatal("verified without any way to get the keys")
		}

		ring, _ := newTestRing(t, db, fake, "notary.example")
		if err := verify(t, ring, "remote.example", msg, time.Now()); err != nil {
			t.Fatalf("through the notary: %v", err)
		}
		if fake.lookups["notary.example"] != 1 {
			t.Fatalf("notary asked %d times", fake.lookups["notary.example"])
		}
		// The notary's own keys were fetched from it, and cached with the
		// remote's.
		rows, _ := db.ServerKeysFor(context.Background(), []string{"notary.example", "remote.example"})
		if len(rows) != 2 {
			t.Fatalf("cache = %+v, want the notary's and the remote's key", rows)
		}
		// A relayed document is not kept for our own notary (only direct
		// fetches are).
		if docs, _ := db.ServerKeyJSONs(context.Background(), "remote.example"); len(docs) != 0 {
			t.Fatalf("relayed document kept: %+v", docs)
		}
	})
}

func TestKeyRingRejectsForgedNotaryAnswer(t *testing.T) {
	db := sqltest.Open(t, config.SQLite)
	fake := newFakeServers()
	remote := fake.add(t, "remote.example", time.Hour)
	notary := fake.add(t, "notary.example", time.Hour)
	fake.set(func() { remote.down = true })
	ring, _ := newTestRing(t, db, fake, "notary.example")
	// The notary's key changes after we cached it: its answers no longer
	// carry a signature we trust.
	if _, err := ring.FetchServerKeys(context.Background(), "notary.example"); err != nil {
		t.Fatal(err)
	}
	if err := verify(t, ring, "notary.example", signedBy(t, notary, `{}`), time.Now()); err != nil {
		t.Fatal(err)
	}
	other, _ := serverkey.Generate()
	fake.set(func() { notary.keys.Key = other })
	if err := verify(t, ring, "remote.example", signedBy(t, remote, `{}`), time.Now()); err == nil {
		t.Fatal("accepted keys relayed by a notary under a key we do not know")
	}
}

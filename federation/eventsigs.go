package federation

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// The signatures of events, checked in bulk. gomatrixserverlib works out
// an event's redacted, canonical form three times over: for its event id
// (room versions 3 and later), in VerifyEventSignatures, and again in the
// key ring's VerifyJSON; on the ten thousand events of a big room's
// state, that costs more than the signatures themselves. Here the form is
// worked out once per event and serves both its id and its signatures,
// which are checked with the keys the key ring holds once it has fetched
// or refreshed them as it would for those events.

// signedForm is what an event's signatures sign (spec: "Signing
// events"): the event redacted, without its signatures and unsigned
// data, as canonical JSON. In room versions 3 and later its sha256 is
// the event id (spec: "Calculating the reference hash for an event").
type signedForm struct {
	signed []byte
	sigs   map[string]map[gomatrixserverlib.KeyID]spec.Base64Bytes
}

// withSignedForm works out ev's signed form. Where the event id is the
// form's hash, it returns ev with its id set from it, which
// gomatrixserverlib would otherwise work out again when first asked.
func withSignedForm(ev gomatrixserverlib.PDU) (gomatrixserverlib.PDU, *signedForm, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return nil, nil, err
	}
	redacted, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, nil, fmt.Errorf("redact: %w", err)
	}
	// The redacted form has no unsigned data left, and only its
	// signatures to take out: cut from the bytes, which spares decoding
	// and encoding the whole event again.
	f := &signedForm{}
	if sigs := gjson.GetBytes(redacted, "signatures"); sigs.Exists() {
		if err := json.Unmarshal([]byte(sigs.Raw), &f.sigs); err != nil {
			return nil, nil, fmt.Errorf("signatures: %w", err)
		}
		if redacted, err = sjson.DeleteBytes(redacted, "signatures"); err != nil {
			return nil, nil, err
		}
	}
	if f.signed, err = gomatrixserverlib.CanonicalJSON(redacted); err != nil {
		return nil, nil, err
	}
	var enc *base64.Encoding
	switch verImpl.EventIDFormat() {
	case gomatrixserverlib.EventIDFormatV2:
		enc = base64.RawStdEncoding
	case gomatrixserverlib.EventIDFormatV3:
		enc = base64.RawURLEncoding
	default:
		return ev, f, nil // the id is the event's own field
	}
	sum := sha256.Sum256(f.signed)
	withID, err := verImpl.NewEventFromTrustedJSONWithEventID("$"+enc.EncodeToString(sum[:]), ev.JSON(), ev.Redacted())
	if err != nil {
		return nil, nil, err
	}
	return withID, f, nil
}

// signedForms is withSignedForm of each of pdus, on every core: pdus[i]
// is replaced by the event with its id set, forms[i] is its form; nil
// entries and those with an error already are skipped, and errs[i] is
// set where the form cannot be worked out.
func signedForms(pdus []gomatrixserverlib.PDU, errs []error) []*signedForm {
	forms := make([]*signedForm, len(pdus))
	inParallel(len(pdus), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if pdus[i] == nil || errs[i] != nil {
				continue
			}
			ev, f, err := withSignedForm(pdus[i])
			if err != nil {
				errs[i] = fmt.Errorf("event %s: %w", pdus[i].EventID(), err)
				continue
			}
			pdus[i], forms[i] = ev, f
		}
	})
	return forms
}

// signersOf lists the servers whose signatures ev needs (spec:
// "Validating hashes and signatures on received events"), as
// gomatrixserverlib's VerifyEventSignatures has them: the sender's; in
// room versions 1 and 2 the event id's; an invite's invitee's; a
// restricted join's authorising server's.
func signersOf(verImpl gomatrixserverlib.IRoomVersion, ev gomatrixserverlib.PDU) ([]spec.ServerName, error) {
	if verImpl.Version() == gomatrixserverlib.RoomVersionPseudoIDs {
		return nil, fmt.Errorf("room version %s is not supported", verImpl.Version())
	}
	sender, err := userIDForSender(ev.RoomID(), ev.SenderID())
	if err != nil {
		return nil, fmt.Errorf("invalid sender userID: %w", err)
	}
	out := []spec.ServerName{sender.Domain()}
	add := func(s spec.ServerName) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV1 {
		_, s, err := gomatrixserverlib.SplitID('$', ev.EventID())
		if err != nil {
			return nil, fmt.Errorf("failed to split event ID: %w", err)
		}
		add(s)
	}
	if ev.Type() != spec.MRoomMember {
		return out, nil
	}
	membership, err := ev.Membership()
	if err != nil {
		return nil, fmt.Errorf("failed to get membership of membership event: %w", err)
	}
	switch membership {
	case spec.Invite:
		if ev.StateKey() == nil {
			return nil, errors.New("an invite without a state key")
		}
		_, s, err := gomatrixserverlib.SplitID('@', *ev.StateKey())
		if err != nil {
			return nil, fmt.Errorf("failed to split state key: %w", err)
		}
		add(s)
	case spec.Join:
		s, err := verImpl.RestrictedJoinServername(ev.Content())
		if err != nil {
			return nil, err
		}
		if s != "" {
			add(s)
		}
	}
	return out, nil
}

// supportedKey reports whether the key ring verifies signatures of the
// key's algorithm, as gomatrixserverlib's does: ed25519 only.
func supportedKey(id gomatrixserverlib.KeyID) bool {
	return strings.HasPrefix(string(id), "ed25519:")
}

// keyHolder hands out the keys a key ring holds (a *KeyRing).
type keyHolder interface {
	heldKeys(ctx context.Context, lookups map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (
		map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error)
}

// heldKeys returns the keys of lookups that the key ring holds, without
// fetching any.
func (k *KeyRing) heldKeys(ctx context.Context, lookups map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (
	map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	return k.db.FetchKeys(ctx, lookups)
}

// verifySignedForms checks the signatures each of pdus needs (see
// signersOf) against its form, setting errs[i] for each that fails; nil
// forms and events with an error already are skipped. First the key
// ring (keys, which must also be a keyHolder) checks, for each key the
// events are signed with, the latest event signed with it, as it would
// check any: it fetches the key if it lacks it, or refreshes it. Then
// every event is checked against the keys it holds, on every core. err
// is a failure of the key ring itself (its database), not of the events.
func verifySignedForms(ctx context.Context, keys gomatrixserverlib.JSONVerifier, pdus []gomatrixserverlib.PDU, forms []*signedForm, errs []error) error {
	holder, ok := keys.(keyHolder)
	if !ok {
		return fmt.Errorf("verify event signatures: %T holds no keys", keys)
	}
	type latest struct {
		at    spec.Timestamp
		event int
	}
	verImpls := make([]gomatrixserverlib.IRoomVersion, len(pdus))
	signers := make([][]spec.ServerName, len(pdus))
	keyUses := make(map[gomatrixserverlib.PublicKeyLookupRequest]latest)
	for i, ev := range pdus {
		if forms[i] == nil || errs[i] != nil {
			continue
		}
		verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
		if err == nil {
			signers[i], err = signersOf(verImpl, ev)
		}
		if err != nil {
			errs[i] = fmt.Errorf("event %s: %w", ev.EventID(), err)
			continue
		}
		verImpls[i] = verImpl
		for _, s := range signers[i] {
			for id := range forms[i].sigs[string(s)] {
				r := gomatrixserverlib.PublicKeyLookupRequest{ServerName: s, KeyID: id}
				if u, seen := keyUses[r]; supportedKey(id) && (!seen || ev.OriginServerTS() > u.at) {
					keyUses[r] = latest{ev.OriginServerTS(), i}
				}
			}
		}
	}
	reqs := make([]gomatrixserverlib.VerifyJSONRequest, 0, len(keyUses))
	lookups := make(map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp, len(keyUses))
	for r, u := range keyUses {
		msg, err := forms[u.event].message()
		if err != nil {
			return fmt.Errorf("verify event signatures: %w", err)
		}
		reqs = append(reqs, gomatrixserverlib.VerifyJSONRequest{ServerName: r.ServerName, Message: msg, AtTS: u.at,
			ValidityCheckingFunc: verImpls[u.event].SignatureValidityCheck})
		lookups[r] = u.at
	}
	if len(reqs) > 0 {
		if _, err := keys.VerifyJSONs(ctx, reqs); err != nil {
			return fmt.Errorf("verify event signatures: %w", err)
		}
	}
	held, err := holder.heldKeys(ctx, lookups)
	if err != nil {
		return fmt.Errorf("verify event signatures: %w", err)
	}
	inParallel(len(pdus), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if forms[i] == nil || errs[i] != nil {
				continue
			}
			for _, s := range signers[i] {
				if err := forms[i].verify(s, pdus[i].OriginServerTS(), verImpls[i].SignatureValidityCheck, held); err != nil {
					errs[i] = fmt.Errorf("event %s: bad signature of %s: %w", pdus[i].EventID(), s, err)
					break
				}
			}
		}
	})
	return nil
}

// verify checks that server signed the form with one of the keys, valid
// when the event was sent, as the key ring's VerifyJSONs does.
func (f *signedForm) verify(server spec.ServerName, at spec.Timestamp, validity gomatrixserverlib.SignatureValidityCheckFunc,
	keys map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	err := fmt.Errorf("not signed by %q with a supported algorithm", server)
	for id, sig := range f.sigs[string(server)] {
		if !supportedKey(id) {
			continue
		}
		key, ok := keys[gomatrixserverlib.PublicKeyLookupRequest{ServerName: server, KeyID: id}]
		switch {
		case !ok || len(key.Key) != ed25519.PublicKeySize:
			err = fmt.Errorf("could not download key %s of %q", id, server)
		case !key.WasValidAt(at, validity):
			err = fmt.Errorf("key %s of %q not valid at %d", id, server, at)
		case len(sig) != ed25519.SignatureSize || !ed25519.Verify(ed25519.PublicKey(key.Key), f.signed, sig):
			err = fmt.Errorf("bad signature from %q with ID %q", server, id)
		default:
			return nil
		}
	}
	return err
}

// message is the form signed again: the JSON the key ring verifies.
func (f *signedForm) message() ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(f.signed, &fields); err != nil {
		return nil, err
	}
	sigs, err := json.Marshal(f.sigs)
	if err != nil {
		return nil, err
	}
	fields["signatures"] = sigs
	return json.Marshal(fields)
}

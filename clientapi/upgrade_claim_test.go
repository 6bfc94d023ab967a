package clientapi

import (
	"errors"
	"net/http"
	"testing"

	"github.com/weft-chat/weft/internal/mxhttp"
)

// TestUpgradeClaim: one upgrade of a room at a time. Another user's
// upgrade in progress is a 400 (as in Synapse); the same user waits for
// theirs, and within upgradeReplay gets a finished one's answer again; a
// failed upgrade is forgotten.
func TestUpgradeClaim(t *testing.T) {
	u := &upgrades{runs: map[string]*upgradeRun{}}
	first, leader, err := u.claim("!r", "@a:hs", "12")
	if err != nil || !leader {
		t.Fatalf("first claim: leader %v, %v", leader, err)
	}
	_, _, err = u.claim("!r", "@b:hs", "12")
	var me *mxhttp.Error
	if !errors.As(err, &me) || me.Status != http.StatusBadRequest || me.Code != "M_UNKNOWN" {
		t.Fatalf("another user's claim during an upgrade: %v, want 400 M_UNKNOWN", err)
	}
	if run, leader, err := u.claim("!r", "@a:hs", "11"); err != nil || leader || run != first {
		t.Fatalf("the same user's claim during their upgrade: %v %v %v, want to wait for it", run, leader, err)
	}
	if _, leader, _ := u.claim("!other", "@b:hs", "12"); !leader {
		t.Fatal("an upgrade of another room was held up")
	}
	u.finish("!r", first, "!new", nil)
	if run, leader, _ := u.claim("!r", "@a:hs", "12"); leader || run != first || run.replacement != "!new" {
		t.Fatal("a repeated upgrade did not get the first one's answer")
	}
	second, leader, _ := u.claim("!r", "@b:hs", "12")
	if !leader {
		t.Fatal("another user cannot upgrade after the first upgrade finished")
	}
	u.finish("!r", second, "", errors.New("boom"))
	if _, leader, _ := u.claim("!r", "@b:hs", "12"); !leader {
		t.Fatal("a failed upgrade was not forgotten")
	}
}

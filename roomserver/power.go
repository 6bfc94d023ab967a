package roomserver

import (
	"encoding/json"
	"math"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Power is a room's power levels as the auth rules apply them.
type Power struct {
	levels   gomatrixserverlib.PowerLevelContent
	creators map[string]bool // privileged creators (room version 12)
}

// CreatorPower is the level of a privileged creator: above any level a
// power_levels event can grant.
const CreatorPower = math.MaxInt64

// PowerFrom reads power levels from a room's create and power_levels
// events (either may be nil). Without power_levels the spec's defaults
// apply: the creator has 100.
func PowerFrom(create, pl gomatrixserverlib.PDU) Power {
	p := Power{creators: map[string]bool{}}
	if pl != nil {
		if c, err := pl.PowerLevels(); err == nil {
			p.levels = *c
		}
	} else {
		p.levels.Defaults()
		if create != nil {
			p.levels.Users = map[string]int64{string(create.SenderID()): 100}
		}
	}
	if create != nil {
		verImpl, err := gomatrixserverlib.GetRoomVersion(create.Version())
		if err == nil && verImpl.PrivilegedCreators() {
			p.creators[string(create.SenderID())] = true
			var content struct {
				AdditionalCreators []string `json:"additional_creators"`
			}
			_ = json.Unmarshal(create.Content(), &content)
			for _, c := range content.AdditionalCreators {
				p.creators[c] = true
			}
		}
	}
	return p
}

// UserLevel is a user's power level.
func (p Power) UserLevel(userID string) int64 {
	if p.creators[userID] {
		return CreatorPower
	}
	return p.levels.UserLevel(spec.SenderID(userID))
}

// Levels exposes the parsed power_levels content.
func (p Power) Levels() gomatrixserverlib.PowerLevelContent { return p.levels }

// IsCreator reports whether the user is a privileged creator (v12).
func (p Power) IsCreator(userID string) bool { return p.creators[userID] }

func powerOf(create, pl gomatrixserverlib.PDU, userID string) (level, redact int64) {
	p := PowerFrom(create, pl)
	return p.UserLevel(userID), p.levels.Redact
}

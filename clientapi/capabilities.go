package clientapi

import (
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/userapi"
)

// defaultRoomVersion is the version of new rooms; room creation should use
// it too, so that the capability tells the truth.
const defaultRoomVersion = "12"

// roomVersions are the stable room versions Weft supports, 1 to 12.
var roomVersions = func() map[string]string {
	m := make(map[string]string, 12)
	for v := 1; v <= 12; v++ {
		m[strconv.Itoa(v)] = "stable"
	}
	return m
}()

func (a *API) capabilityRoutes(r *mux.Router) {
	handle(r, "/capabilities", a.authedJSON(a.capabilities), http.MethodGet)
}

type enabled struct {
	Enabled bool `json:"enabled"`
}

type profileFieldsCapability struct {
	Enabled bool     `json:"enabled"`
	Allowed []string `json:"allowed,omitempty"`
}

// capabilities is GET /capabilities (spec: Capabilities negotiation). The
// answer depends on the caller: a guest may change only its display name
// (spec: guest access), which m.profile_fields says with allowed, and the
// deprecated m.set_avatar_url must then say false.
func (a *API) capabilities(_ *http.Request, dev *userapi.Device) (any, error) {
	profile := profileFieldsCapability{Enabled: true}
	if dev.IsGuest {
		profile.Allowed = []string{"displayname"}
	}
	return map[string]any{"capabilities": map[string]any{
		"m.change_password": enabled{true},
		"m.room_versions": map[string]any{
			"default":   defaultRoomVersion,
			"available": roomVersions,
		},
		"m.set_displayname": enabled{true},
		"m.set_avatar_url":  enabled{!dev.IsGuest},
		"m.profile_fields":  profile,
		// No identity or email support yet (see threepid.go).
		"m.3pid_changes":    enabled{false},
		"m.get_login_token": enabled{true},
		// Leaving a room does not forget it; /forget does.
		"m.forget_forced_upon_leave": enabled{false},
	}}, nil
}

package clientapi

import (
	"log/slog"
	"net"
	"net/http"
	"net/url"

	"github.com/gorilla/mux"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/ratelimit"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/userapi"
)

// API serves the client-server endpoints.
type API struct {
	cfg   config.Config
	users *userapi.Service
	db    *sql.DB
	rooms Rooms
	// sent formats events with their transaction ids (see Sent).
	sent *Sent
	log  *slog.Logger

	// Rate limiters; nil when rate limiting is off.
	loginLimit, registerLimit, messageLimit *ratelimit.Limiter

	// wake wakes the long-polling syncs a write concerns (nil: nobody to
	// tell, as in tests of the client API alone).
	wake *wake.Publisher

	// typing holds this process's typing expiry timers (typing.go).
	typing typingTimers

	// presence reads and writes users' presence. It keeps nothing in
	// memory: the sync API's shares everything through the database.
	presence     *presence.Service
	presenceOpts []presence.Option

	// remoteToDevice queues to-device messages for other servers
	// (todevice.go); nil: they are dropped.
	remoteToDevice RemoteToDevice

	// remoteKeys fetches other servers' users' keys (keys.go); nil: they
	// are listed in the failures of /keys/query and /keys/claim.
	remoteKeys e2ee.RemoteKeys
	// deviceListResync refetches stale cached device lists for
	// /keys/query (keys.go); nil: their users are asked for directly.
	deviceListResync e2ee.DeviceListResync

	// remoteAliases resolves other servers' room aliases (directory.go);
	// nil: they are unknown here.
	remoteAliases RemoteAliases

	// remoteTyping (typing.go), remoteReceipts (receipts.go) and
	// remoteProfiles (profile.go) reach other servers; nil: they are not
	// told, or asked.
	remoteTyping   RemoteTyping
	remoteReceipts RemoteReceipts
	remoteProfiles RemoteProfiles
}

// Option tunes the client API at construction.
type Option func(*API)

// WithWake makes the API wake the syncs its writes concern (account data,
// typing, receipts, presence, to-device messages) through p.
func WithWake(p *wake.Publisher) Option {
	return func(a *API) { a.wake = p }
}

// New makes the client API.
func New(cfg config.Config, users *userapi.Service, db *sql.DB, rooms Rooms, log *slog.Logger, opts ...Option) *API {
	a := &API{cfg: cfg, users: users, db: db, rooms: rooms, log: log, sent: NewSent(db, rooms)}
	for _, o := range opts {
		o(a)
	}
	a.presence = presence.New(db, a.wake, log, a.presenceOpts...)
	if rl := cfg.RateLimits; rl.Enabled {
		a.loginLimit = ratelimit.New(rl.Login.Rate, rl.Login.Burst)
		a.registerLimit = ratelimit.New(rl.Registration.Rate, rl.Registration.Burst)
		a.messageLimit = ratelimit.New(rl.Message.Rate, rl.Message.Burst)
	}
	return a
}

// Routes registers every client-server endpoint built so far. Endpoints
// not registered answer 404 M_UNRECOGNIZED.
func (a *API) Routes(r *mux.Router) {
	DiscoveryRoutes(r, a.cfg.Client.PublicBaseURL)
	a.registerRoutes(r)
	a.loginRoutes(r)
	a.deviceRoutes(r)
	a.accountRoutes(r)
	a.profileRoutes(r)
	a.accountDataRoutes(r)
	a.filterRoutes(r)
	a.capabilityRoutes(r)
	a.threepidRoutes(r)
	a.adminRoutes(r)
	a.roomRoutes(r)
	a.membershipRoutes(r)
	a.directoryRoutes(r)
	a.roomExtrasRoutes(r)
	a.pushRuleRoutes(r)
	a.keyRoutes(r)
	a.typingRoutes(r)
	a.receiptRoutes(r)
	a.tagRoutes(r)
	a.presenceRoutes(r)
	a.toDeviceRoutes(r)
	a.dehydratedDeviceRoutes(r)
	a.openIDRoutes(r)
}

// handle registers h for path under the stable client prefixes (v3, and r0
// for older clients); path starts with "/".
func handle(r *mux.Router, path string, h http.Handler, methods ...string) {
	for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		r.Handle(prefix+path, h).Methods(methods...)
	}
}

// AuthedHandler is a handler that needs a logged-in caller.
type AuthedHandler func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error

// authed checks the access token (401 M_MISSING_TOKEN or M_UNKNOWN_TOKEN)
// and records the device's last use before running h.
func (a *API) authed(h AuthedHandler) mxhttp.Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		token, ok := userapi.AccessTokenFrom(r)
		if !ok {
			return mxhttp.MissingToken()
		}
		dev, err := a.users.Authenticate(r.Context(), token)
		if err != nil {
			return err
		}
		a.users.Touch(r.Context(), dev, clientIP(r), r.UserAgent())
		return h(w, r, dev)
	}
}

// Sent is what formats events for clients, with the transaction ids of
// the events this process committed lately from memory: for the other
// components that serve events (the sync API).
func (a *API) Sent() *Sent { return a.sent }

// Authed is authed for the routes of other components (the sync API), so
// that every client endpoint checks access tokens the same way.
func (a *API) Authed(h AuthedHandler) mxhttp.Handler { return a.authed(h) }

// authedJSON is authed for handlers that answer 200 with a JSON body.
func (a *API) authedJSON(f func(r *http.Request, dev *userapi.Device) (any, error)) mxhttp.Handler {
	return a.authed(func(w http.ResponseWriter, r *http.Request, dev *userapi.Device) error {
		v, err := f(r, dev)
		if err != nil {
			return err
		}
		return mxhttp.WriteJSON(w, http.StatusOK, v)
	})
}

// clientIP is the address the request came from. Behind a reverse proxy it
// is the proxy's; trusting X-Forwarded-For needs a configured proxy list,
// which does not exist yet.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limit takes a token from l for key: 429 M_LIMIT_EXCEEDED when empty.
func limit(l *ratelimit.Limiter, key string) error {
	if ok, wait := l.Allow(key); !ok {
		return mxhttp.LimitExceeded(wait)
	}
	return nil
}

// pathVar returns a path variable, unescaped (routes match encoded paths
// because Matrix ids contain reserved characters).
func pathVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", mxhttp.InvalidParam("Bad %s in path", name)
	}
	return v, nil
}

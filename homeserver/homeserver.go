// Package homeserver wires every component into one running server. The
// binary (cmd/weft) is its command-line front end; end-to-end tests start
// it in-process on free ports.
package homeserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-chat/weft/clientapi"
	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/e2ee"
	"github.com/weft-chat/weft/federation"
	"github.com/weft-chat/weft/internal/bus"
	"github.com/weft-chat/weft/internal/mxhttp"
	"github.com/weft-chat/weft/internal/roomsummary"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/wake"
	"github.com/weft-chat/weft/presence"
	"github.com/weft-chat/weft/push"
	"github.com/weft-chat/weft/roomserver"
	"github.com/weft-chat/weft/sql"
	"github.com/weft-chat/weft/syncapi"
	"github.com/weft-chat/weft/userapi"
)

// Server is a running homeserver.
type Server struct {
	cfg config.Config
	log *slog.Logger

	db  *sql.DB
	bus *bus.Bus
	key serverkey.Key

	fedClient *federation.Client
	keyRing   *federation.KeyRing
	fedQueue  *federation.Queue
	// edus routes inbound EDUs by type to the components handling them.
	edus *federation.EDURegistry

	servers []*listener
	closers []func() error
	once    sync.Once
}

// listener is one HTTP server and where it listens.
type listener struct {
	name string
	srv  *http.Server
	ln   net.Listener
	// wrap, if set, wraps the listener Serve takes.
	wrap func(net.Listener) net.Listener
}

// New opens storage, the bus and the keys, and builds the HTTP handlers.
// Nothing listens until Start.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *Server, err error) {
	// s is not the named result: "return nil, err" would set it to nil
	// before the deferred cleanup reads it.
	s := &Server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if s.key, err = serverkey.LoadOrGenerate(cfg.SigningKeyPath); err != nil {
		return nil, fmt.Errorf("signing_key_path: %w", err)
	}
	if s.db, err = sql.Open(ctx, cfg.Database.URL, cfg.Database.MaxOpenConns); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	s.closers = append(s.closers, s.db.Close)
	if s.bus, err = bus.Open(ctx, bus.Config{URLs: cfg.NATS.URLs, StoreDir: filepath.Join(cfg.DataDir, "nats"), Listen: cfg.NATS.Listen}, log); err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	s.closers = append(s.closers, s.bus.Close)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	serverName := spec.ServerName(cfg.ServerName)
	keys := &federation.KeyServer{ServerName: serverName, Key: s.key, Old: cfg.OldSigningKeys, Validity: cfg.KeyValidity}

	users, err := userapi.New(s.db, cfg.ServerName, cfg.Auth, s.bus.Conn(), log.With("component", "userapi"))
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, users.Close)

	clientRouter := mxhttp.NewRouter()
	fedLog := log.With("component", "federation")
	// The roomserver fetches from other servers: the client and key ring
	// come first.
	if err := s.federationClient(keys.ServerName, fedLog); err != nil {
		return nil, err
	}
	joiner, err := federation.NewJoiner(s.fedClient, s.key, s.keyRing, fedLog)
	if err != nil {
		return nil, err
	}
	rs := roomserver.New(s.db, s.bus, cfg.ServerName, s.key, log.With("component", "roomserver"))
	rs.UseFederation(federation.NewFetcher(s.fedClient, s.keyRing, fedLog), joiner)
	rs.UseInviter(&federation.Inviter{Client: s.fedClient, Key: s.key, Keys: s.keyRing})
	// The consumers live as long as the server, not as long as New's ctx.
	runCtx, cancel := context.WithCancel(context.Background())
	stopRooms, err := rs.Serve(runCtx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("roomserver: %w", err)
	}
	s.closers = append(s.closers, func() error { cancel(); stopRooms(); return nil })
	rooms := roomserver.API{Client: roomserver.NewClient(s.bus), Roomserver: rs}
	// Notification counts follow room.output on their own durable
	// consumer, so counting never holds up room input.
	counter := push.NewCounter(s.db, rooms, cfg.ServerName, log.With("component", "push"),
		push.WithWake(wake.NewPublisher(s.bus.Conn(), log.With("component", "wake"))))
	stopCounts, err := counter.Serve(runCtx, s.bus)
	if err != nil {
		return nil, fmt.Errorf("push counts: %w", err)
	}
	s.closers = append(s.closers, func() error { stopCounts(); return nil })

	notifier := syncapi.NewNotifier(s.db, log.With("component", "notifier"))
	if err := notifier.Start(runCtx, s.bus); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { notifier.Close(); return nil })
	// Federation before the client API, which sends through its queue.
	fedRouter := mxhttp.NewRouter()
	keys.Routes(fedRouter)
	deviceListCache, err := s.federation(fedRouter, keys, rooms, fedLog)
	if err != nil {
		return nil, err
	}
	stopResync := deviceListCache.Start(runCtx)
	s.closers = append(s.closers, func() error { stopResync(); return nil })
	stopQueue, err := s.fedQueue.Start(runCtx)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { stopQueue(); return nil })
	stopSender, err := federation.NewSender(s.db, s.fedQueue, keys.ServerName, fedLog).Serve(runCtx, s.bus)
	if err != nil {
		return nil, fmt.Errorf("federation sender: %w", err)
	}
	s.closers = append(s.closers, func() error { stopSender(); return nil })
	remoteKeys, err := federation.NewRemoteKeys(s.fedClient, s.key)
	if err != nil {
		return nil, err
	}
	remoteAliases, err := federation.NewRemoteAliases(s.fedClient, s.key)
	if err != nil {
		return nil, err
	}
	profiles, err := federation.NewProfiles(s.fedClient, s.key)
	if err != nil {
		return nil, err
	}
	eduSender := &federation.EDUSender{DB: s.db, Queue: s.fedQueue, ServerName: serverName}
	capiOpts := []clientapi.Option{clientapi.WithWake(wake.NewPublisher(s.bus.Conn(), log.With("component", "wake"))),
		clientapi.WithRemoteToDevice(s.fedQueue), clientapi.WithRemoteKeys(remoteKeys), clientapi.WithDeviceListResync(deviceListCache), clientapi.WithRemoteAliases(remoteAliases), clientapi.WithRemoteProfiles(profiles),
		clientapi.WithRemoteTyping(eduSender), clientapi.WithRemoteReceipts(eduSender)}
	var presenceOpts []presence.Option
	presenceSender := &federation.PresenceSender{DB: s.db, Queue: s.fedQueue, ServerName: serverName, Log: fedLog}
	if cfg.Presence.Enabled {
		// The client API's and the sync API's presence services share
		// their hints, which the presence wake-ups of every process keep
		// honest.
		hints := presence.NewHints()
		hintsSub, err := wake.Subscribe(s.bus.Conn(), func(m wake.Message) {
			if m.Presence {
				hints.Forget(m.Users...)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("presence hints: %w", err)
		}
		s.closers = append(s.closers, hintsSub.Unsubscribe)
		presenceOpts = append(presenceOpts, presence.WithFederation(presenceSender), presence.WithHints(hints))
		capiOpts = append(capiOpts, clientapi.WithPresenceOptions(presenceOpts...))
	}
	capi := clientapi.New(cfg, users, s.db, rooms, log.With("component", "clientapi"), capiOpts...)
	// Typing from other servers goes through the client API's typing
	// storage and expiry timers.
	if err := s.edus.Register(federation.TypingEDUType, (&federation.TypingReceiver{DB: s.db, Store: capi, Log: fedLog}).Handle); err != nil {
		return nil, err
	}
	deviceLists := federation.NewDeviceListSender(s.db, s.fedQueue, e2ee.New(s.db, cfg.ServerName), serverName, fedLog)
	stopDeviceLists, err := deviceLists.Start(runCtx, s.bus.Conn())
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { stopDeviceLists(); return nil })
	stopTyping := capi.StartTypingExpiry()
	s.closers = append(s.closers, func() error { stopTyping(); return nil })
	syncOpts := []syncapi.Option{syncapi.WithBackfill(federation.NewBackfiller(s.fedClient, s.keyRing, s.db, rooms, fedLog))}
	if cfg.Presence.Enabled {
		pres := presence.New(s.db, wake.NewPublisher(s.bus.Conn(), log.With("component", "wake")), log.With("component", "presence"),
			presenceOpts...)
		if err := s.edus.Register(federation.PresenceEDUType, (&federation.PresenceReceiver{DB: s.db, Store: pres,
			ServerName: serverName, Log: fedLog}).Handle); err != nil {
			return nil, err
		}
		stopPresence := pres.Start(runCtx)
		stopPings := presenceSender.Start(runCtx, pres.Content)
		s.closers = append(s.closers, func() error { stopPings(); stopPresence(); return nil })
		syncOpts = append(syncOpts, syncapi.WithPresence(pres))
	}
	// Idle long-polls park their connections instead of holding a
	// goroutine each; the client listener serves them again after.
	parking := syncapi.NewParking()
	syncOpts = append(syncOpts, syncapi.WithParking(parking), syncapi.WithClientEvents(capi.Sent()))
	sapi := syncapi.New(s.db, rooms, capi.Authed, log.With("component", "syncapi"), syncOpts...)
	// The router tries routes in order: /sync, the most requested by
	// far, goes first.
	sapi.SyncRoutes(clientRouter, notifier)
	capi.Routes(clientRouter)
	capi.KeyChangesRoute(clientRouter, syncapi.ParseSyncPositions)
	sapi.Routes(clientRouter)
	federation.WellKnownRoutes(clientRouter, cfg.Federation.WellKnownServer)
	healthRoute(clientRouter)

	federation.WellKnownRoutes(fedRouter, cfg.Federation.WellKnownServer)
	healthRoute(fedRouter)

	var cert tls.Certificate
	if f := cfg.Federation; f.TLSCACert != "" {
		cert, err = serverkey.IssueCertificate(f.TLSCACert, f.TLSCAKey, hostOf(cfg.ServerName))
	} else {
		cert, err = serverkey.LoadOrMakeCertificate(f.TLSCert, f.TLSKey, cfg.DataDir, hostOf(cfg.ServerName))
	}
	if err != nil {
		return nil, err
	}

	stack := func(name string) mxhttp.Stack {
		return mxhttp.Stack{Log: log.With("listener", name), Metrics: mxhttp.NewMetrics(reg, name), MaxBodyBytes: cfg.Client.MaxBodyBytes}
	}
	s.servers = append(s.servers,
		&listener{name: "client", srv: &http.Server{Addr: cfg.Client.Listen, Handler: stack("client").Wrap(clientRouter)},
			wrap: parking.Listener},
		&listener{name: "federation", srv: &http.Server{Addr: cfg.Federation.Listen, Handler: stack("federation").Wrap(fedRouter),
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}},
	)
	if cfg.Metrics.Listen != "" {
		s.servers = append(s.servers, &listener{name: "metrics", srv: &http.Server{Addr: cfg.Metrics.Listen,
			Handler: metricsHandler(reg)}})
	}
	// Long-polling syncs answer as soon as shutdown begins, rather than
	// hold it for their timeout.
	s.servers[0].srv.RegisterOnShutdown(notifier.Close)
	for _, l := range s.servers {
		l.srv.ReadHeaderTimeout = 30 * time.Second
		l.srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return s, nil
}

// federationClient builds the outbound client and the key ring.
func (s *Server) federationClient(serverName spec.ServerName, log *slog.Logger) error {
	f := s.cfg.Federation
	var err error
	s.fedClient, err = federation.NewClient(federation.ClientConfig{ServerName: serverName, Key: s.key,
		TrustedCAFile: f.TrustedCAFile, InsecureSkipVerify: f.TLSInsecureSkipVerify, AllowNetworks: f.AllowPrivateNetworks,
		StaticHosts: f.StaticHosts})
	if err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	notaries := make([]spec.ServerName, len(f.KeyNotaries))
	for i, n := range f.KeyNotaries {
		notaries[i] = spec.ServerName(n)
	}
	s.keyRing = federation.NewKeyRing(federation.KeyRingConfig{DB: s.db, ServerName: serverName, Key: s.key,
		OldKeys: s.cfg.OldSigningKeys, Client: s.fedClient, Notaries: notaries, Log: log})
	return nil
}

// federation registers the notary and the authenticated federation
// endpoints on r (after the key server's open routes), and builds the
// outbound queue. It returns the cache of other servers' device lists,
// whose background fetches the caller starts.
func (s *Server) federation(r *mux.Router, keys *federation.KeyServer, rooms roomserver.API, log *slog.Logger) (*federation.DeviceLists, error) {
	f := s.cfg.Federation
	var err error
	(&federation.Notary{Keys: keys, DB: s.db, Fetch: s.keyRing, Log: log}).Routes(r)
	// Services, not servers, call userinfo, unsigned: it stays outside
	// the authenticated routes.
	(&federation.OpenID{DB: s.db}).Routes(r)
	authed := (&federation.Authenticator{ServerName: keys.ServerName, Keys: s.keyRing}).Router(r)
	(&federation.Query{DB: s.db, ServerName: keys.ServerName}).Routes(authed)
	s.fedQueue, err = federation.NewQueue(federation.QueueConfig{DB: s.db, Client: s.fedClient, Key: s.key,
		Origin: keys.ServerName, Log: log.With("part", "queue"), PDUs: federation.StoredPDUs(s.db)})
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	// Inbound EDUs by type; each feature registers its types here (typing
	// and presence once their components exist, in New).
	s.edus = federation.NewEDURegistry()
	wakes := wake.NewPublisher(s.bus.Conn(), log.With("component", "wake"))
	toDevice := &federation.ToDeviceReceiver{DB: s.db, ServerName: keys.ServerName, Wake: wakes, Log: log}
	deviceLists, err := federation.NewDeviceLists(s.db, s.fedClient, s.key, wakes, log)
	if err != nil {
		return nil, err
	}
	for typ, h := range map[string]federation.EDUHandler{
		federation.ToDeviceEDUType:         toDevice.Handle,
		federation.ReceiptEDUType:          (&federation.ReceiptReceiver{DB: s.db, Wake: wakes, Log: log}).Handle,
		federation.DeviceListUpdateEDUType: deviceLists.HandleDeviceListUpdate,
		federation.SigningKeyUpdateEDUType: deviceLists.HandleSigningKeyUpdate,
	} {
		if err := s.edus.Register(typ, h); err != nil {
			return nil, err
		}
	}
	(&federation.Transactions{DB: s.db, EDUs: s.edus, Rooms: rooms, Keys: s.keyRing, Queue: s.fedQueue, Log: log}).Routes(authed)
	(&federation.Events{DB: s.db, ServerName: keys.ServerName}).Routes(authed)
	(&federation.Memberships{DB: s.db, ServerName: keys.ServerName, Key: s.key, Keys: s.keyRing, Rooms: rooms}).Routes(authed)
	summaries := &roomsummary.Reader{DB: s.db, Rooms: rooms}
	(&federation.RoomDirectory{DB: s.db, ServerName: keys.ServerName, Summaries: summaries,
		List: roomsummary.NewDirectory(summaries), AllowPublicRooms: f.AllowPublicRooms}).Routes(authed)
	(&federation.UserKeys{DB: s.db, Keys: e2ee.New(s.db, s.cfg.ServerName), ServerName: keys.ServerName}).Routes(authed)
	(&federation.ThirdPartyInvites{DB: s.db}).Routes(authed)
	(&federation.InviteReceiver{DB: s.db, Rooms: rooms, Keys: s.keyRing, ServerName: keys.ServerName, Key: s.key}).Routes(authed)
	return deviceLists, nil
}

// FederationClient is the outbound federation client, signing as this
// server.
func (s *Server) FederationClient() *federation.Client { return s.fedClient }

// KeyRing is the key ring that verifies other servers' signatures.
func (s *Server) KeyRing() *federation.KeyRing { return s.keyRing }

// metricsHandler serves /metrics and, for profiling a running server,
// Go's /debug/pprof/ (the metrics listener is for operators only).
func metricsHandler(reg *prometheus.Registry) http.Handler {
	m := http.NewServeMux()
	m.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}

func healthRoute(r *mux.Router) {
	r.Handle("/health", mxhttp.Handler(func(w http.ResponseWriter, _ *http.Request) error {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("OK"))
		return nil
	})).Methods(http.MethodGet)
}

// hostOf strips the port from a server name.
func hostOf(serverName string) string {
	if host, _, err := net.SplitHostPort(serverName); err == nil {
		return host
	}
	// An IPv6 literal without a port: the certificate names the address.
	return strings.TrimSuffix(strings.TrimPrefix(serverName, "["), "]")
}

// Start binds every listener and serves in the background, logging one
// line per listener.
func (s *Server) Start() error {
	for _, l := range s.servers {
		ln, err := net.Listen("tcp", l.srv.Addr)
		if err != nil {
			for _, bound := range s.servers {
				if bound.ln != nil {
					bound.ln.Close()
					bound.ln = nil
				}
			}
			return fmt.Errorf("%s listener: %w", l.name, err)
		}
		l.ln = ln
	}
	for _, l := range s.servers {
		scheme, ln := "http", l.ln
		if l.srv.TLSConfig != nil {
			scheme, ln = "https", tls.NewListener(ln, l.srv.TLSConfig)
		}
		if l.wrap != nil {
			ln = l.wrap(ln)
		}
		s.log.Info("listening", "listener", l.name, "url", fmt.Sprintf("%s://%s", scheme, l.ln.Addr()))
		go func() {
			if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("listener stopped", "listener", l.name, "err", err)
			}
		}()
	}
	s.log.Info("weft is ready", "server_name", s.cfg.ServerName)
	return nil
}

// Addr returns the bound address of the named listener ("client",
// "federation", "metrics"), or "" when it is not listening.
func (s *Server) Addr(name string) string {
	for _, l := range s.servers {
		if l.name == name && l.ln != nil {
			return l.ln.Addr().String()
		}
	}
	return ""
}

// Shutdown stops accepting connections, lets requests in flight finish for
// up to the configured grace (or until ctx ends), then closes the bus and
// the database. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.ShutdownGrace)
		defer cancel()
		var wg sync.WaitGroup
		for _, l := range s.servers {
			if l.ln == nil {
				continue
			}
			wg.Go(func() {
				if e := l.srv.Shutdown(ctx); e != nil {
					s.log.Warn("requests still running at shutdown", "listener", l.name, "err", e)
					l.srv.Close()
				}
			})
		}
		wg.Wait()
		err = s.closeAll()
		s.log.Info("weft stopped")
	})
	return err
}

// closeAll closes what New opened, newest first.
func (s *Server) closeAll() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

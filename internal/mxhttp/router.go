package mxhttp

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
)

// NewRouter returns a router for Matrix paths: ids carry reserved
// characters, so paths are matched encoded and never cleaned. Unknown paths
// answer 404 M_UNRECOGNIZED and known paths with the wrong method 405
// M_UNRECOGNIZED.
func NewRouter() *mux.Router {
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.NotFoundHandler = Handler(func(http.ResponseWriter, *http.Request) error { return Unrecognized() })
	r.MethodNotAllowedHandler = Handler(func(http.ResponseWriter, *http.Request) error { return MethodNotAllowed() })
	r.Use(nameRoute)
	return r
}

// Stack is the middleware every listener runs, outermost first: panic
// recovery, access log and metrics, CORS (answering preflights), and the
// body size limit.
type Stack struct {
	Log          *slog.Logger
	Metrics      *Metrics // nil: no metrics
	MaxBodyBytes int64
}

// Wrap returns next behind the stack.
func (s Stack) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &routeInfo{name: "unmatched"}
		ctx := context.WithValue(r.Context(), loggerKey{}, s.Log)
		ctx = context.WithValue(ctx, routeKey{}, info)
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.Log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", p)
				if !sw.wrote {
					WriteError(sw, r, Errorf(http.StatusInternalServerError, "M_UNKNOWN", "Internal server error"))
				}
			}
			elapsed := time.Since(start)
			// Asked first: the record's values would be boxed even when
			// the level drops it.
			if s.Log.Enabled(ctx, slog.LevelInfo) {
				s.Log.Info("request", "method", r.Method, "path", r.URL.Path, "status", statusText(sw.status), "route", info.name,
					"ms", float64(elapsed.Microseconds())/1000, "remote", r.RemoteAddr)
			}
			if s.Metrics != nil {
				s.Metrics.observe(r.Method, info.name, sw.status, elapsed)
			}
		}()
		setCORS(sw.Header())
		if r.Method == http.MethodOptions {
			// The spec: answer preflights with the CORS headers and run no
			// endpoint logic.
			sw.WriteHeader(http.StatusOK)
			return
		}
		if r.ContentLength > s.MaxBodyBytes {
			WriteError(sw, r, TooLarge("Request body is larger than %d bytes", s.MaxBodyBytes))
			return
		}
		r.Body = http.MaxBytesReader(sw, r.Body, s.MaxBodyBytes)
		keepEncoded(r.URL)
		next.ServeHTTP(sw, r)
	})
}

// keepEncoded makes u's path its own encoding where it can: the router
// matches the encoded path against each route in turn, and net/url
// builds it anew at every call unless RawPath holds it without escapes
// (Go clients send the '!' of room ids as %21: a new string per route
// tried). A path whose every byte may stand in an encoded path (RFC 3986
// pchar or '/') reads the same either way, unless an escaped '/' in it
// (%2F) is one segment's character, not a separator.
func keepEncoded(u *url.URL) {
	if strings.Contains(u.RawPath, "%2F") || strings.Contains(u.RawPath, "%2f") {
		return
	}
	for i := 0; i < len(u.Path); i++ {
		if !isPathByte(u.Path[i]) {
			return
		}
	}
	u.RawPath = u.Path
}

// isPathByte reports whether c may stand unencoded in a URL path: an
// unreserved character, a sub-delimiter, ':', '@' or '/'.
func isPathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0
}

func setCORS(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
}

type routeKey struct{}

// routeInfo carries the matched route's template out to the access log and
// metrics, which run outside the router.
type routeInfo struct{ name string }

func nameRoute(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info, ok := r.Context().Value(routeKey{}).(*routeInfo); ok {
			if route := mux.CurrentRoute(r); route != nil {
				if tpl, err := route.GetPathTemplate(); err == nil {
					info.name = tpl
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Metrics holds the per-route request counters and latency histograms.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics registers the HTTP metrics of one listener on reg.
func NewMetrics(reg prometheus.Registerer, listener string) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "weft_http_requests_total",
			Help:        "HTTP requests by route, method and status.",
			ConstLabels: prometheus.Labels{"listener": listener},
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "weft_http_request_duration_seconds",
			Help:        "HTTP request latency by route and method.",
			ConstLabels: prometheus.Labels{"listener": listener},
			Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *Metrics) observe(method, route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, method, statusText(status)).Inc()
	m.latency.WithLabelValues(route, method).Observe(d.Seconds())
}

func statusText(code int) string {
	if code == 0 {
		code = http.StatusOK // nothing written: net/http sends 200
	}
	return strconv.Itoa(code)
}

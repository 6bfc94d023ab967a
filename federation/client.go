package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/weft-chat/weft/config"
	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/version"
)

// ClientConfig configures the outbound federation client.
type ClientConfig struct {
	// ServerName and Key sign every request (X-Matrix).
	ServerName spec.ServerName
	Key        serverkey.Key
	// TrustedCAFile is a PEM file of extra CAs (config: trusted_ca_file).
	TrustedCAFile string
	// InsecureSkipVerify accepts any certificate (test setups only).
	InsecureSkipVerify bool
	// AllowNetworks are CIDRs exempt from the private-address rule
	// (config: allow_private_networks).
	AllowNetworks []string
	// StaticHosts are "server_name=host:port" entries sent to the address
	// without server discovery (config: static_hosts).
	StaticHosts []string
	// Timeout bounds a whole request, body included; 0 means 60s.
	Timeout time.Duration
}

// maxResponseBytes bounds a response body from a remote server, against
// one that streams forever; it is Synapse's largest limit (send_join of
// the biggest rooms).
const maxResponseBytes = 512 << 20

// Client is the outbound federation client: gomatrixserverlib's requests,
// signed with our key, sent through Weft's transport (server name
// resolution per the spec, TLS with SNI and the configured CAs, no
// connection to private addresses unless allowed).
type Client struct {
	fclient.FederationClient
	origin spec.ServerName
}

// NewClient builds the client. It fails on an unreadable trusted_ca_file or
// a bad network in AllowNetworks.
func NewClient(cfg ClientConfig) (*Client, error) {
	tr, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	fc := fclient.NewFederationClient(
		[]*fclient.SigningIdentity{{ServerName: cfg.ServerName, KeyID: cfg.Key.ID, PrivateKey: cfg.Key.Private}},
		fclient.WithTransport(tr),
		fclient.WithTimeout(timeout),
		fclient.WithUserAgent(version.Name+"/"+version.String()),
	)
	return &Client{FederationClient: fc, origin: cfg.ServerName}, nil
}

// Origin is the server name the client signs as.
func (c *Client) Origin() spec.ServerName { return c.origin }

// transport is the http.RoundTripper behind the client. gomatrixserverlib
// addresses requests to matrix://<server name>/path; the transport resolves
// the server name and sends the request over HTTPS to each target in turn.
type transport struct {
	resolver *resolver
	dialer   *net.Dialer
	tls      *tls.Config

	// mu guards byTLSName.
	mu sync.Mutex
	// byTLSName holds one http.Transport per certificate name: a
	// transport's connections share one TLS ServerName, and two server
	// names may resolve to the same address with different certificates.
	byTLSName map[string]*namedTransport
}

type namedTransport struct {
	*http.Transport
	lastUsed time.Time
}

// idleTransportLifetime is how long an unused per-name transport is kept.
const idleTransportLifetime = 10 * time.Minute

func newTransport(cfg ClientConfig) (*transport, error) {
	allow, err := ParseNetworks(cfg.AllowNetworks)
	if err != nil {
		return nil, fmt.Errorf("allow_private_networks: %w", err)
	}
	static, err := config.ParseStaticHosts(cfg.StaticHosts)
	if err != nil {
		return nil, fmt.Errorf("static_hosts: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.TrustedCAFile != "" {
		pem, err := os.ReadFile(cfg.TrustedCAFile)
		if err != nil {
			return nil, fmt.Errorf("trusted_ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("trusted_ca_file %s: no PEM certificate in it", cfg.TrustedCAFile)
		}
	}
	t := &transport{
		dialer: newDialer(allow),
		tls: &tls.Config{
			RootCAs:            roots,
			InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // test setups only, off by default
			MinVersion:         tls.VersionTLS12,
		},
		byTLSName: make(map[string]*namedTransport),
	}
	// The well-known fetch is a plain HTTPS request to the server name,
	// under the same address policy and trust.
	wkClient := &http.Client{
		Transport: &http.Transport{
			DialContext:         t.dialer.DialContext,
			TLSClientConfig:     t.tls.Clone(),
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
		},
		Timeout: wellKnownTimeout,
	}
	t.resolver = newResolver(func(ctx context.Context, host string) (string, time.Duration, error) {
		return fetchWellKnown(ctx, wkClient, "https://"+host+"/.well-known/matrix/server")
	}, net.DefaultResolver.LookupSRV)
	t.resolver.static = static
	return t, nil
}

// RoundTrip implements http.RoundTripper for matrix:// URLs.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "matrix" {
		closeBody(req)
		return nil, fmt.Errorf("federation transport: unsupported URL scheme %q", req.URL.Scheme)
	}
	serverName := spec.ServerName(req.URL.Host)
	targets, err := t.resolver.resolve(req.Context(), serverName)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	var errs []error
	for i, tg := range targets {
		out := req.Clone(req.Context())
		if i > 0 && req.Body != nil {
			if req.GetBody == nil {
				break // the body is spent and cannot be replayed
			}
			if out.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		out.URL.Scheme, out.URL.Host, out.Host = "https", tg.Addr, tg.Host
		resp, err := t.forTLSName(tg.TLSName).RoundTrip(out)
		if err == nil {
			resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxResponseBytes}
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", tg.Addr, err))
		var denied *deniedAddrError
		if errors.As(err, &denied) {
			continue
		}
	}
	// None answered: resolve afresh next time, as the targets may have moved.
	t.resolver.forget(serverName)
	return nil, fmt.Errorf("federation: no target of %s answered: %w", serverName, errors.Join(errs...))
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

func (t *transport) forTLSName(name string) *http.Transport {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if nt, ok := t.byTLSName[name]; ok {
		nt.lastUsed = now
		return nt.Transport
	}
	// Drop the transports of servers we stopped talking to while here,
	// rather than in a goroutine of our own.
	for n, nt := range t.byTLSName {
		if now.Sub(nt.lastUsed) > idleTransportLifetime {
			nt.CloseIdleConnections()
			delete(t.byTLSName, n)
		}
	}
	cfg := t.tls.Clone()
	cfg.ServerName = name
	nt := &namedTransport{lastUsed: now, Transport: &http.Transport{
		DialContext:         t.dialer.DialContext,
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// No proxy: a proxy would dial for us and defeat the address policy.
		Proxy: nil,
	}}
	t.byTLSName[name] = nt
	return nt.Transport
}

// limitedBody fails a response body read past its limit.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("federation: response body larger than %d bytes", maxResponseBytes)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

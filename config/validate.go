package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Validate checks every option and reports the first bad one by its YAML
// path, in one line.
func (c *Config) Validate() error {
	if err := ValidateServerName(c.ServerName); err != nil {
		return optionError("server_name", c.ServerName, err)
	}
	if c.DataDir == "" {
		return optionError("data_dir", c.DataDir, fmt.Errorf("must not be empty"))
	}
	for i, k := range c.OldSigningKeys {
		if err := k.validate(); err != nil {
			return optionError(fmt.Sprintf("old_signing_keys[%d]", i), k.KeyID, err)
		}
	}
	if c.KeyValidity <= 0 {
		return optionError("key_validity", c.KeyValidity.String(), fmt.Errorf("must be positive"))
	}
	// Slices, not maps: the first bad option in file order is reported,
	// the same one on every run.
	for _, o := range []struct{ name, addr string }{{"client.listen", c.Client.Listen}, {"federation.listen", c.Federation.Listen}} {
		if err := validateListen(o.addr, false); err != nil {
			return optionError(o.name, o.addr, err)
		}
	}
	if err := validateListen(c.Metrics.Listen, true); err != nil {
		return optionError("metrics.listen", c.Metrics.Listen, err)
	}
	if err := validateListen(c.NATS.Listen, true); err != nil {
		return optionError("nats.listen", c.NATS.Listen, err)
	}
	if c.Client.PublicBaseURL != "" {
		if u, err := url.Parse(c.Client.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return optionError("client.public_base_url", c.Client.PublicBaseURL, fmt.Errorf("must be an http or https URL"))
		}
	}
	if c.Client.MaxBodyBytes <= 0 {
		return optionError("client.max_body_bytes", strconv.FormatInt(c.Client.MaxBodyBytes, 10), fmt.Errorf("must be positive"))
	}
	if (c.Federation.TLSCert == "") != (c.Federation.TLSKey == "") {
		return optionError("federation.tls_cert", c.Federation.TLSCert, fmt.Errorf("tls_cert and tls_key go together"))
	}
	if (c.Federation.TLSCACert == "") != (c.Federation.TLSCAKey == "") {
		return optionError("federation.tls_ca_cert", c.Federation.TLSCACert, fmt.Errorf("tls_ca_cert and tls_ca_key go together"))
	}
	if c.Federation.TLSCACert != "" && c.Federation.TLSCert != "" {
		return optionError("federation.tls_ca_cert", c.Federation.TLSCACert, fmt.Errorf("set tls_cert or tls_ca_cert, not both"))
	}
	for _, n := range c.Federation.KeyNotaries {
		if err := ValidateServerName(n); err != nil {
			return optionError("federation.key_notaries", n, err)
		}
	}
	for _, cidr := range c.Federation.AllowPrivateNetworks {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			return optionError("federation.allow_private_networks", cidr, fmt.Errorf("must be a CIDR like 10.0.0.0/8"))
		}
	}
	if _, err := ParseStaticHosts(c.Federation.StaticHosts); err != nil {
		return fmt.Errorf("config option federation.static_hosts: %w", err)
	}
	if _, _, err := ParseDatabaseURL(c.Database.URL); err != nil {
		return optionError("database.url", c.Database.URL, err)
	}
	if c.Database.MaxOpenConns <= 0 {
		return optionError("database.max_open_conns", strconv.Itoa(c.Database.MaxOpenConns), fmt.Errorf("must be positive"))
	}
	for _, u := range c.NATS.URLs {
		if pu, err := url.Parse(u); err != nil || pu.Host == "" {
			return optionError("nats.urls", u, fmt.Errorf("must be a URL like nats://host:4222"))
		}
	}
	switch c.Logging.Level {
	case "debug", "info", "warn", "error":
	default:
		return optionError("logging.level", c.Logging.Level, fmt.Errorf("must be debug, info, warn or error"))
	}
	switch c.Logging.Format {
	case "text", "json":
	default:
		return optionError("logging.format", c.Logging.Format, fmt.Errorf("must be text or json"))
	}
	if c.Auth.BcryptCost < 4 || c.Auth.BcryptCost > 31 {
		return optionError("auth.bcrypt_cost", strconv.Itoa(c.Auth.BcryptCost), fmt.Errorf("must be from 4 to 31"))
	}
	if c.Auth.RefreshableTokenExpiry <= 0 {
		return optionError("auth.refreshable_token_expiry", c.Auth.RefreshableTokenExpiry.String(), fmt.Errorf("must be positive"))
	}
	if c.Auth.UIASessionExpiry <= 0 {
		return optionError("auth.uia_session_expiry", c.Auth.UIASessionExpiry.String(), fmt.Errorf("must be positive"))
	}
	for _, o := range []struct {
		name string
		b    Bucket
	}{{"rate_limits.login", c.RateLimits.Login}, {"rate_limits.registration", c.RateLimits.Registration}, {"rate_limits.message", c.RateLimits.Message}} {
		if b := o.b; b.Rate <= 0 || b.Burst < 1 {
			return optionError(o.name, fmt.Sprintf("rate %g burst %d", b.Rate, b.Burst), fmt.Errorf("rate must be positive and burst at least 1"))
		}
	}
	if c.ShutdownGrace <= 0 {
		return optionError("shutdown_grace", c.ShutdownGrace.String(), fmt.Errorf("must be positive"))
	}
	return nil
}

func optionError(option, value string, err error) error {
	return fmt.Errorf("config option %s: %q: %w", option, value, err)
}

func validateListen(addr string, optional bool) error {
	if addr == "" {
		if optional {
			return nil
		}
		return fmt.Errorf("must be host:port")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("must be host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port must be from 0 to 65535")
	}
	return nil
}

func (k OldSigningKey) validate() error {
	if !strings.HasPrefix(k.KeyID, "ed25519:") || len(k.KeyID) == len("ed25519:") {
		return fmt.Errorf("key_id must look like ed25519:abc")
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(k.PublicKey, "="))
	if err != nil || len(raw) != 32 {
		return fmt.Errorf("public_key must be an unpadded base64 ed25519 public key")
	}
	return nil
}

// Engine names a storage engine.
type Engine string

// The storage engines.
const (
	Postgres Engine = "postgres"
	SQLite   Engine = "sqlite"
)

// ParseDatabaseURL tells the engine of a database URL and the connection
// string its driver takes: postgres://… and postgresql://… are PostgreSQL
// (the URL is passed as is); sqlite:PATH is a SQLite file at PATH.
func ParseDatabaseURL(raw string) (Engine, string, error) {
	switch {
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		if _, err := url.Parse(raw); err != nil {
			return "", "", fmt.Errorf("not a valid URL")
		}
		return Postgres, raw, nil
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(raw, "sqlite:"), "//")
		if path == "" {
			return "", "", fmt.Errorf("sqlite: needs a file path, like sqlite:weft-data/weft.db")
		}
		return SQLite, path, nil
	default:
		return "", "", fmt.Errorf("unknown database scheme: use postgres://… or sqlite:PATH")
	}
}

// ValidateServerName checks a server name against the grammar of the spec's
// appendices (hostname or IP literal, optional port).
func ValidateServerName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("must be 1 to 255 characters")
	}
	host, port := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.Index(name, "]")
		if end < 0 {
			return fmt.Errorf("unclosed IPv6 literal")
		}
		host, port = name[1:end], name[end+1:]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return fmt.Errorf("bad IPv6 literal")
		}
		if port != "" && !strings.HasPrefix(port, ":") {
			return fmt.Errorf("bad port")
		}
		port = strings.TrimPrefix(port, ":")
	} else if i := strings.LastIndex(name, ":"); i >= 0 {
		host, port = name[:i], name[i+1:]
	}
	if port != "" || strings.HasSuffix(name, ":") {
		// The grammar's port is 1*5DIGIT: Atoi alone would take "+80".
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || len(port) > 5 || strings.TrimLeft(port, "0123456789") != "" {
			return fmt.Errorf("port must be from 1 to 65535")
		}
	}
	if host == "" {
		return fmt.Errorf("host must not be empty")
	}
	if !strings.HasPrefix(name, "[") {
		for _, r := range host {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
				return fmt.Errorf("may contain only letters, digits, '-' and '.', and a :port")
			}
		}
	}
	return nil
}

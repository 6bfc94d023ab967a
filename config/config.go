// Package config holds Weft's typed configuration: defaults, YAML loading,
// environment overrides and validation. Nothing here reads globals; the
// binary loads a Config once and passes it down.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole server configuration. Its YAML form is documented,
// option by option, in example.yaml (printed by `weft config example`).
type Config struct {
	ServerName     string          `yaml:"server_name"`
	DataDir        string          `yaml:"data_dir"`
	SigningKeyPath string          `yaml:"signing_key_path"`
	OldSigningKeys []OldSigningKey `yaml:"old_signing_keys"`
	KeyValidity    time.Duration   `yaml:"key_validity"`
	Client         Client          `yaml:"client"`
	Federation     Federation      `yaml:"federation"`
	Database       Database        `yaml:"database"`
	NATS           NATS            `yaml:"nats"`
	Metrics        Metrics         `yaml:"metrics"`
	Logging        Logging         `yaml:"logging"`
	Registration   Registration    `yaml:"registration"`
	Auth           Auth            `yaml:"auth"`
	RateLimits     RateLimits      `yaml:"rate_limits"`
	Presence       Presence        `yaml:"presence"`
	ShutdownGrace  time.Duration   `yaml:"shutdown_grace"`
}

// OldSigningKey is a retired signing key still published in old_verify_keys,
// so that remote servers can check events it signed.
type OldSigningKey struct {
	KeyID     string `yaml:"key_id"`
	PublicKey string `yaml:"public_key"`
	ExpiredTS int64  `yaml:"expired_ts"`
}

// Client configures the client-server API listener.
type Client struct {
	Listen        string `yaml:"listen"`
	PublicBaseURL string `yaml:"public_base_url"`
	MaxBodyBytes  int64  `yaml:"max_body_bytes"`
}

// Federation configures the server-server API listener.
type Federation struct {
	Listen  string `yaml:"listen"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSCACert and TLSCAKey are a certificate authority from which a
	// fresh certificate for the server name is issued at every start, when
	// TLSCert is not set (test federations such as Complement's).
	TLSCACert       string `yaml:"tls_ca_cert"`
	TLSCAKey        string `yaml:"tls_ca_key"`
	WellKnownServer string `yaml:"well_known_server"`
	// KeyNotaries are servers asked for other servers' keys when a direct
	// fetch fails. Empty by default (Synapse defaults to matrix.org) so that
	// a fresh server never contacts anyone it was not asked to.
	KeyNotaries []string `yaml:"key_notaries"`
	// TrustedCAFile is a PEM file of extra certificate authorities trusted
	// for outgoing federation, on top of the system's.
	TrustedCAFile string `yaml:"trusted_ca_file"`
	// TLSInsecureSkipVerify accepts any certificate from remote servers:
	// for test setups only.
	TLSInsecureSkipVerify bool `yaml:"tls_insecure_skip_verify"`
	// AllowPrivateNetworks lists CIDRs exempt from the rule that outgoing
	// federation never connects to private, loopback or link-local
	// addresses.
	AllowPrivateNetworks []string `yaml:"allow_private_networks"`
	// StaticHosts are "server_name=host:port" entries: requests to that
	// server name go to that address, skipping server discovery.
	StaticHosts []string `yaml:"static_hosts"`
	// AllowPublicRooms serves this server's published room directory to
	// other servers (GET/POST /_matrix/federation/v1/publicRooms). Off by
	// default, as Synapse's allow_public_rooms_over_federation.
	AllowPublicRooms bool `yaml:"allow_public_rooms"`
}

// Database chooses the storage engine by URL.
type Database struct {
	URL          string `yaml:"url"`
	MaxOpenConns int    `yaml:"max_open_conns"`
}

// NATS chooses between the embedded NATS server and an external cluster.
type NATS struct {
	URLs   []string `yaml:"urls"`
	Listen string   `yaml:"listen"`
}

// Metrics configures the Prometheus listener.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Logging configures the process log.
type Logging struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Registration says who may create accounts and how.
type Registration struct {
	Enabled       bool   `yaml:"enabled"`
	RequiresToken bool   `yaml:"requires_token"`
	AllowGuests   bool   `yaml:"allow_guests"`
	SharedSecret  string `yaml:"shared_secret"`
}

// Auth configures passwords and tokens.
type Auth struct {
	BcryptCost             int           `yaml:"bcrypt_cost"`
	RefreshableTokenExpiry time.Duration `yaml:"refreshable_token_expiry"`
	UIASessionExpiry       time.Duration `yaml:"uia_session_expiry"`
}

// RateLimits configures per-user and per-address token buckets.
type RateLimits struct {
	Enabled      bool   `yaml:"enabled"`
	Login        Bucket `yaml:"login"`
	Registration Bucket `yaml:"registration"`
	Message      Bucket `yaml:"message"`
}

// Presence configures users' presence (online, unavailable, offline).
type Presence struct {
	// Enabled tracks and shares presence; off, /sync has no presence
	// section and the presence endpoints answer as Synapse's do with
	// presence disabled.
	Enabled bool `yaml:"enabled"`
}

// Bucket is a token bucket: Rate tokens per second, up to Burst at once.
type Bucket struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

//go:embed example.yaml
var exampleYAML []byte

// Example returns the commented example configuration. Its values are the
// defaults; a test keeps the two in step.
func Example() []byte { return bytes.Clone(exampleYAML) }

// Defaults returns the configuration used for every option a file or the
// environment does not set. It is the example file, parsed.
func Defaults() Config {
	var c Config
	if err := decodeYAML(exampleYAML, &c); err != nil {
		// The example is embedded and tested; failing here is a build defect.
		panic("config: embedded example.yaml: " + err.Error())
	}
	return c
}

// Local returns the zero-config setup of `weft` run with no config file:
// the defaults plus open registration, so a fresh server is usable at once.
func Local() Config {
	c := Defaults()
	c.Registration.Enabled = true
	return c
}

// Load builds the configuration: base, then the YAML file at path (if path
// is not empty), then environment overrides from environ (os.Environ form).
// It resolves derived paths and validates the result.
func Load(base Config, path string, environ []string) (Config, error) {
	c := base
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		if err := decodeYAML(data, &c); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := applyEnv(&c, environ); err != nil {
		return Config{}, err
	}
	c.resolve()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func decodeYAML(data []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file keeps the defaults
		}
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			return errors.New(te.Errors[0])
		}
		return err
	}
	return nil
}

// resolve fills the options whose defaults derive from others.
func (c *Config) resolve() {
	if c.SigningKeyPath == "" {
		c.SigningKeyPath = filepath.Join(c.DataDir, "signing.key")
	}
	if c.Database.URL == "" {
		c.Database.URL = "sqlite:" + filepath.Join(c.DataDir, "weft.db")
	}
}

// ParseStaticHosts reads federation.static_hosts entries
// ("server_name=host:port") into a map from server name to address.
func ParseStaticHosts(entries []string) (map[string]string, error) {
	out := make(map[string]string, len(entries))
	for _, e := range entries {
		name, addr, ok := strings.Cut(e, "=")
		if !ok {
			return nil, fmt.Errorf("%q: must look like server_name=host:port", e)
		}
		if err := ValidateServerName(name); err != nil {
			return nil, fmt.Errorf("%q: server name: %w", e, err)
		}
		host, port, err := net.SplitHostPort(addr)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q: the address must be host:port", e)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%q: %s is given twice", e, name)
		}
		out[name] = addr
	}
	return out, nil
}

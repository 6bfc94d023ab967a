package config_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/weft-chat/weft/config"
)

// resolved is c with the derived defaults Load fills in.
func resolved(c config.Config) config.Config {
	if c.SigningKeyPath == "" {
		c.SigningKeyPath = filepath.Join(c.DataDir, "signing.key")
	}
	if c.Database.URL == "" {
		c.Database.URL = "sqlite:" + filepath.Join(c.DataDir, "weft.db")
	}
	return c
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "weft.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// leafPaths lists the YAML path of every option of Config: the scalars and
// lists at the bottom of the nested structs.
func leafPaths(t reflect.Type, prefix []string) [][]string {
	var out [][]string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			panic("config field without a yaml tag: " + f.Name)
		}
		path := append(slices.Clone(prefix), tag)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
			out = append(out, leafPaths(f.Type, path)...)
			continue
		}
		out = append(out, path)
	}
	return out
}

func TestExampleFileIsTheDefaults(t *testing.T) {
	onDisk, err := os.ReadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, config.Example()) {
		t.Fatal("config.Example() differs from example.yaml")
	}

	// Decoding the example independently of the package gives Defaults().
	var decoded config.Config
	dec := yaml.NewDecoder(bytes.NewReader(onDisk))
	dec.KnownFields(true)
	if err := dec.Decode(&decoded); err != nil {
		t.Fatalf("example.yaml does not decode: %v", err)
	}
	if !reflect.DeepEqual(decoded, config.Defaults()) {
		t.Fatalf("example.yaml decodes to\n%+v\nDefaults() is\n%+v", decoded, config.Defaults())
	}

	// Loading it over a base in which every option holds some other value
	// gives exactly the defaults: the example sets every option itself.
	base := config.Defaults()
	perturb(t, reflect.ValueOf(&base).Elem())
	got, err := config.Load(base, "example.yaml", nil)
	if err != nil {
		t.Fatalf("Load(example.yaml): %v", err)
	}
	if want := resolved(config.Defaults()); !reflect.DeepEqual(got, want) {
		t.Fatalf("Load(example.yaml) over a perturbed base =\n%+v\nwant\n%+v", got, want)
	}

	// The defaults are a valid configuration on their own.
	fromDefaults, err := config.Load(config.Defaults(), "", nil)
	if err != nil {
		t.Fatalf("Load(Defaults()): %v", err)
	}
	if !reflect.DeepEqual(fromDefaults, got) {
		t.Fatalf("Load(Defaults(), no file) = %+v, want %+v", fromDefaults, got)
	}
}

// perturb sets every option below v to a value the example does not use.
func perturb(t *testing.T, v reflect.Value) {
	for i := range v.NumField() {
		f := v.Field(i)
		switch {
		case f.Type() == reflect.TypeFor[time.Duration]():
			f.SetInt(f.Int() + int64(7*time.Second))
		case f.Kind() == reflect.Struct:
			perturb(t, f)
		case f.Kind() == reflect.String:
			f.SetString(f.String() + "-perturbed")
		case f.Kind() == reflect.Bool:
			f.SetBool(!f.Bool())
		case f.Kind() == reflect.Int, f.Kind() == reflect.Int64:
			f.SetInt(f.Int() + 7)
		case f.Kind() == reflect.Float64:
			f.SetFloat(f.Float() + 7)
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
			f.Set(reflect.ValueOf([]string{"nats://perturbed:4222"}))
		case f.Kind() == reflect.Slice:
			f.Set(reflect.MakeSlice(f.Type(), 1, 1))
		default:
			t.Fatalf("perturb: unhandled kind %s of %s", f.Kind(), v.Type().Field(i).Name)
		}
	}
}

func TestDefaults(t *testing.T) {
	d := config.Defaults()
	checks := []struct {
		name      string
		got, want any
	}{
		{"server_name", d.ServerName, "localhost"},
		{"data_dir", d.DataDir, "./weft-data"},
		{"client.listen", d.Client.Listen, "127.0.0.1:8008"},
		{"database.url", d.Database.URL, ""}, // derived from data_dir
		{"resolved database.url", resolved(d).Database.URL, "sqlite:" + filepath.Join("weft-data", "weft.db")},
		{"registration.enabled", d.Registration.Enabled, false},
		{"metrics.listen", d.Metrics.Listen, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Local is the defaults plus open registration, and nothing else.
	l := config.Local()
	if !l.Registration.Enabled {
		t.Error("Local() does not enable registration")
	}
	l.Registration.Enabled = d.Registration.Enabled
	if !reflect.DeepEqual(l, d) {
		t.Errorf("Local() differs from Defaults() beyond registration.enabled:\n%+v\n%+v", l, d)
	}
	// Defaults returns a fresh value each time.
	d.NATS.URLs = append(d.NATS.URLs, "nats://x:1")
	if len(config.Defaults().NATS.URLs) != 0 {
		t.Error("Defaults() shares state between calls")
	}
}

// TestEveryOptionIsDocumented walks Config's yaml tags and checks that each
// option appears as a key in example.yaml, and that example.yaml has no key
// Config lacks.
func TestEveryOptionIsDocumented(t *testing.T) {
	data, err := os.ReadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		t.Fatal("example.yaml is not one mapping")
	}
	root := doc.Content[0]
	leaves := leafPaths(reflect.TypeFor[config.Config](), nil)
	if len(leaves) < 30 {
		t.Fatalf("found only %d options; the walk is broken", len(leaves))
	}
	want := make(map[string]bool)
	for _, path := range leaves {
		want[strings.Join(path, ".")] = true
		node := root
		for i, key := range path {
			next := lookup(node, key)
			if next == nil {
				t.Errorf("option %s is not in example.yaml (missing key %q)", strings.Join(path, "."), strings.Join(path[:i+1], "."))
				break
			}
			node = next
		}
		if node != nil && node.Kind == yaml.MappingNode {
			t.Errorf("option %s is a mapping in example.yaml, want a value", strings.Join(path, "."))
		}
	}
	// And the other way: every leaf key of the example is an option.
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			path := prefix + key
			if val.Kind == yaml.MappingNode {
				walk(val, path+".")
				continue
			}
			if !want[path] {
				t.Errorf("example.yaml has key %s, which is not a Config option", path)
			}
		}
	}
	walk(root, "")
}

func lookup(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func TestEnvNames(t *testing.T) {
	names := config.EnvNames()
	seen := make(map[string]bool)
	for _, n := range names {
		if seen[n] {
			t.Errorf("environment variable %s names two options", n)
		}
		seen[n] = true
		if !strings.HasPrefix(n, config.EnvPrefix) {
			t.Errorf("%s lacks the %s prefix", n, config.EnvPrefix)
		}
	}
	// Every option but the list of structs has a variable, named after its
	// path.
	for _, path := range leafPaths(reflect.TypeFor[config.Config](), nil) {
		if path[0] == "old_signing_keys" {
			continue
		}
		name := config.EnvPrefix + strings.ToUpper(strings.Join(path, "_"))
		if !seen[name] {
			t.Errorf("option %s has no environment variable %s", strings.Join(path, "."), name)
		}
	}
	for _, n := range []string{"WEFT_SERVER_NAME", "WEFT_DATABASE_URL", "WEFT_NATS_URLS", "WEFT_RATE_LIMITS_LOGIN_BURST", "WEFT_CLIENT_LISTEN", "WEFT_FEDERATION_LISTEN"} {
		if !seen[n] {
			t.Errorf("EnvNames lacks %s", n)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	file := writeFile(t, `
server_name: file.example.org
database:
  url: sqlite:/tmp/from-file.db
nats:
  urls: [nats://file:4222]
rate_limits:
  login:
    burst: 4
shutdown_grace: 30s
registration:
  enabled: true
`)
	env := []string{
		"HOME=/root",           // not ours: ignored
		"WEFT_TEST_POSTGRES=x", // WEFT_ but not an option: ignored
		"WEFT_SERVER_NAME=env.example.org",
		"WEFT_DATABASE_URL=postgres://weft@db.example.org:5432/weft?sslmode=disable",
		"WEFT_NATS_URLS=nats://a:4222, nats://b:4222,,",
		"WEFT_RATE_LIMITS_LOGIN_BURST=9",
		"WEFT_RATE_LIMITS_MESSAGE_RATE=2.5",
		"WEFT_SHUTDOWN_GRACE=3s",
		"WEFT_AUTH_UIA_SESSION_EXPIRY=1h",
		"WEFT_REGISTRATION_ENABLED=false",
		"WEFT_REGISTRATION_ALLOW_GUESTS=true",
		"WEFT_CLIENT_MAX_BODY_BYTES=1234",
		"WEFT_DATA_DIR=/var/lib/weft",
	}
	c, err := config.Load(config.Defaults(), file, env)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"server_name", c.ServerName, "env.example.org"},
		{"database.url", c.Database.URL, "postgres://weft@db.example.org:5432/weft?sslmode=disable"},
		{"nats.urls", strings.Join(c.NATS.URLs, "|"), "nats://a:4222|nats://b:4222"},
		{"rate_limits.login.burst", c.RateLimits.Login.Burst, 9},
		{"rate_limits.login.rate (file and env silent)", c.RateLimits.Login.Rate, config.Defaults().RateLimits.Login.Rate},
		{"rate_limits.message.rate", c.RateLimits.Message.Rate, 2.5},
		{"shutdown_grace", c.ShutdownGrace, 3 * time.Second},
		{"auth.uia_session_expiry", c.Auth.UIASessionExpiry, time.Hour},
		{"registration.enabled", c.Registration.Enabled, false},
		{"registration.allow_guests", c.Registration.AllowGuests, true},
		{"client.max_body_bytes", c.Client.MaxBodyBytes, int64(1234)},
		{"data_dir", c.DataDir, "/var/lib/weft"},
		// Derived from the overridden data_dir.
		{"signing_key_path", c.SigningKeyPath, filepath.Join("/var/lib/weft", "signing.key")},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}

	// Without the environment the file's values stand.
	c, err = config.Load(config.Defaults(), file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerName != "file.example.org" || c.RateLimits.Login.Burst != 4 || c.ShutdownGrace != 30*time.Second || !c.Registration.Enabled {
		t.Errorf("file values not applied: %+v", c)
	}
	if c.Database.URL != "sqlite:/tmp/from-file.db" || len(c.NATS.URLs) != 1 {
		t.Errorf("file values not applied: %+v", c)
	}
}

// oneLine fails unless err is a single-line error containing every want.
func oneLine(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %q", want)
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
}

func TestBadConfigFiles(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"bad server name", "server_name: \"bad name!\"\n", []string{"server_name", "bad name!"}},
		{"unknown database scheme", "database:\n  url: mysql://weft@localhost/weft\n", []string{"database.url", "mysql://"}},
		{"broken yaml", "server_name: example.org\nclient:\n\tlisten: 1.2.3.4:5\n", []string{"line 3"}},
		{"unclosed quote", "server_name: example.org\nclient:\n  listen: \"127.0.0.1:8008\n", []string{"line 3"}},
		{"unknown key", "server_name: example.org\nclinet:\n  listen: 127.0.0.1:8008\n", []string{"line 2", "clinet"}},
		{"unknown nested key", "server_name: example.org\ndatabase:\n  max_conns: 5\n", []string{"line 3", "max_conns"}},
		{"wrong type", "server_name: example.org\ndatabase:\n  max_open_conns: many\n", []string{"line 3", "many"}},
		{"bad duration", "key_validity: forever\n", []string{"line 1", "forever"}},
		{"duplicate key", "server_name: a.org\nserver_name: b.org\n", []string{"line 2", "server_name"}},
		{"bad log level", "logging:\n  level: loud\n", []string{"logging.level"}},
		{"bad listen", "client:\n  listen: nowhere\n", []string{"client.listen"}},
		{"bad old key", "old_signing_keys:\n  - key_id: rsa:1\n    public_key: abc\n    expired_ts: 1\n", []string{"old_signing_keys[0]"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := config.Load(config.Defaults(), writeFile(t, c.yaml), nil)
			oneLine(t, err, c.want...)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := config.Load(config.Defaults(), filepath.Join(t.TempDir(), "nope.yaml"), nil)
		oneLine(t, err, "nope.yaml")
	})
	t.Run("empty file keeps the defaults", func(t *testing.T) {
		c, err := config.Load(config.Defaults(), writeFile(t, "# nothing\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := resolved(config.Defaults()); !reflect.DeepEqual(c, want) {
			t.Fatalf("got %+v, want %+v", c, want)
		}
	})
}

func TestBadEnvValues(t *testing.T) {
	cases := []struct{ env, want string }{
		{"WEFT_RATE_LIMITS_LOGIN_BURST=lots", "WEFT_RATE_LIMITS_LOGIN_BURST"},
		{"WEFT_SHUTDOWN_GRACE=10", "WEFT_SHUTDOWN_GRACE"},
		{"WEFT_REGISTRATION_ENABLED=maybe", "WEFT_REGISTRATION_ENABLED"},
		{"WEFT_RATE_LIMITS_MESSAGE_RATE=fast", "WEFT_RATE_LIMITS_MESSAGE_RATE"},
		{"WEFT_SERVER_NAME=bad name!", "server_name"},
		{"WEFT_DATABASE_URL=mysql://x/y", "database.url"},
		{"WEFT_NATS_URLS=nats://a:4222,not a url", "nats.urls"},
	}
	for _, c := range cases {
		t.Run(c.env, func(t *testing.T) {
			_, err := config.Load(config.Defaults(), "", []string{c.env})
			oneLine(t, err, c.want)
		})
	}
}

// TestValidateNamesTheOption breaks one option at a time and checks the
// error names it.
func TestValidateNamesTheOption(t *testing.T) {
	cases := []struct {
		option string
		break_ func(c *config.Config)
	}{
		{"server_name", func(c *config.Config) { c.ServerName = "" }},
		{"data_dir", func(c *config.Config) { c.DataDir = "" }},
		{"key_validity", func(c *config.Config) { c.KeyValidity = 0 }},
		{"client.listen", func(c *config.Config) { c.Client.Listen = "8008" }},
		{"federation.listen", func(c *config.Config) { c.Federation.Listen = "host:123456" }},
		{"metrics.listen", func(c *config.Config) { c.Metrics.Listen = "metrics" }},
		{"nats.listen", func(c *config.Config) { c.NATS.Listen = "nats" }},
		{"client.public_base_url", func(c *config.Config) { c.Client.PublicBaseURL = "ftp://example.org" }},
		{"client.max_body_bytes", func(c *config.Config) { c.Client.MaxBodyBytes = 0 }},
		{"federation.tls_cert", func(c *config.Config) { c.Federation.TLSCert = "/etc/cert.pem" }},
		{"database.url", func(c *config.Config) { c.Database.URL = "sqlite:" }},
		{"database.max_open_conns", func(c *config.Config) { c.Database.MaxOpenConns = 0 }},
		{"nats.urls", func(c *config.Config) { c.NATS.URLs = []string{"localhost"} }},
		{"logging.level", func(c *config.Config) { c.Logging.Level = "trace" }},
		{"logging.format", func(c *config.Config) { c.Logging.Format = "xml" }},
		{"auth.bcrypt_cost", func(c *config.Config) { c.Auth.BcryptCost = 3 }},
		{"auth.refreshable_token_expiry", func(c *config.Config) { c.Auth.RefreshableTokenExpiry = -time.Second }},
		{"auth.uia_session_expiry", func(c *config.Config) { c.Auth.UIASessionExpiry = 0 }},
		{"rate_limits.login", func(c *config.Config) { c.RateLimits.Login.Burst = 0 }},
		{"rate_limits.registration", func(c *config.Config) { c.RateLimits.Registration.Rate = 0 }},
		{"rate_limits.message", func(c *config.Config) { c.RateLimits.Message.Rate = -1 }},
		{"shutdown_grace", func(c *config.Config) { c.ShutdownGrace = 0 }},
		{"old_signing_keys[1]", func(c *config.Config) {
			c.OldSigningKeys = []config.OldSigningKey{
				{KeyID: "ed25519:old", PublicKey: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", ExpiredTS: 1},
				{KeyID: "ed25519:short", PublicKey: "AAAA", ExpiredTS: 1},
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.option, func(t *testing.T) {
			cfg := resolved(config.Defaults())
			if err := cfg.Validate(); err != nil {
				t.Fatalf("defaults do not validate: %v", err)
			}
			c.break_(&cfg)
			oneLine(t, cfg.Validate(), "config option "+c.option+":")
		})
	}
}

// TestValidateReportsTheFirstBadOption: with several bad options the error
// names the first in file order, the same one every time.
func TestValidateReportsTheFirstBadOption(t *testing.T) {
	for range 50 {
		c := resolved(config.Defaults())
		c.Client.Listen, c.Federation.Listen = "bad", "bad"
		c.RateLimits.Login.Burst, c.RateLimits.Registration.Burst, c.RateLimits.Message.Burst = 0, 0, 0
		oneLine(t, c.Validate(), "config option client.listen:")
		c.Client.Listen, c.Federation.Listen = "127.0.0.1:1", "127.0.0.1:2"
		oneLine(t, c.Validate(), "config option rate_limits.login:")
		if t.Failed() {
			return
		}
	}
}

func TestParseDatabaseURL(t *testing.T) {
	cases := []struct {
		url    string
		engine config.Engine
		conn   string
	}{
		{"postgres://u:p@h:5432/db?sslmode=disable", config.Postgres, "postgres://u:p@h:5432/db?sslmode=disable"},
		{"postgresql://h/db", config.Postgres, "postgresql://h/db"},
		{"sqlite:weft-data/weft.db", config.SQLite, "weft-data/weft.db"},
		{"sqlite:///var/lib/weft.db", config.SQLite, "/var/lib/weft.db"},
	}
	for _, c := range cases {
		e, conn, err := config.ParseDatabaseURL(c.url)
		if err != nil || e != c.engine || conn != c.conn {
			t.Errorf("ParseDatabaseURL(%q) = %q, %q, %v; want %q, %q", c.url, e, conn, err, c.engine, c.conn)
		}
	}
	for _, bad := range []string{"", "mysql://h/db", "sqlite:", "sqlite://", "/var/lib/weft.db", "postgres://h:port/db"} {
		if e, _, err := config.ParseDatabaseURL(bad); err == nil {
			t.Errorf("ParseDatabaseURL(%q) = %q, want an error", bad, e)
		}
	}
}

func TestValidateServerName(t *testing.T) {
	valid := []string{
		"localhost",
		"example.org",
		"EXAMPLE.org",
		"matrix-1.example.org",
		"example.org:8448",
		"example.org:1",
		"example.org:65535",
		"1.2.3.4",
		"1.2.3.4:8448",
		"[::1]",
		"[::1]:8448",
		"[2001:db8::1]:443",
		strings.Repeat("a", 255),
	}
	for _, name := range valid {
		if err := config.ValidateServerName(name); err != nil {
			t.Errorf("ValidateServerName(%q) = %v, want valid", name, err)
		}
	}
	invalid := []string{
		"",
		"bad name!",
		"host:0",
		"host:99999",
		"host:123456",
		"host:",
		"host:-1",
		"host:+80",
		"host:80a",
		":8448",
		"[::1",
		"[::1]:",
		"[::1]8448",
		"[]",
		"[1.2.3.4]",
		"[::1]:0",
		"::1",
		"ex_ample.org",
		"example.org/path",
		"user@example.org",
		"exämple.org",
		strings.Repeat("a", 256),
	}
	for _, name := range invalid {
		if err := config.ValidateServerName(name); err == nil {
			t.Errorf("ValidateServerName(%q) = nil, want an error", name)
		}
	}
}

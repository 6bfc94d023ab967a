package config_test

import (
	"reflect"
	"testing"

	"github.com/weft-chat/weft/config"
)

// TestFederationCAAndStaticHosts covers the options a private federation
// such as Complement's sets: a CA to issue the certificate from, and fixed
// addresses for server names, both from the environment.
func TestFederationCAAndStaticHosts(t *testing.T) {
	c, err := config.Load(config.Defaults(), "", []string{
		"WEFT_FEDERATION_TLS_CA_CERT=/complement/ca/ca.crt",
		"WEFT_FEDERATION_TLS_CA_KEY=/complement/ca/ca.key",
		"WEFT_FEDERATION_STATIC_HOSTS=hs1=127.0.0.1:8448, hs2=[::1]:9448,other.example.org:8448=10.0.0.5:8448",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Federation.TLSCACert != "/complement/ca/ca.crt" || c.Federation.TLSCAKey != "/complement/ca/ca.key" {
		t.Errorf("CA options = %q, %q", c.Federation.TLSCACert, c.Federation.TLSCAKey)
	}
	got, err := config.ParseStaticHosts(c.Federation.StaticHosts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"hs1": "127.0.0.1:8448", "hs2": "[::1]:9448", "other.example.org:8448": "10.0.0.5:8448"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("static hosts = %v, want %v", got, want)
	}

	const ca, hosts = "config option federation.tls_ca_cert:", "config option federation.static_hosts:"
	for _, bad := range []struct {
		env          []string
		option, want string
	}{
		{[]string{"WEFT_FEDERATION_TLS_CA_CERT=/ca.crt"}, ca, "go together"},
		{[]string{"WEFT_FEDERATION_TLS_CA_KEY=/ca.key"}, ca, "go together"},
		{[]string{"WEFT_FEDERATION_TLS_CA_CERT=/ca.crt", "WEFT_FEDERATION_TLS_CA_KEY=/ca.key",
			"WEFT_FEDERATION_TLS_CERT=/c.pem", "WEFT_FEDERATION_TLS_KEY=/k.pem"}, ca, "not both"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=hs1"}, hosts, "server_name=host:port"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=hs1=127.0.0.1"}, hosts, "host:port"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=hs1=:8448"}, hosts, "host:port"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=hs1=h:0"}, hosts, "host:port"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=bad name=127.0.0.1:1"}, hosts, "server name"},
		{[]string{"WEFT_FEDERATION_STATIC_HOSTS=hs1=127.0.0.1:1,hs1=127.0.0.1:2"}, hosts, "twice"},
	} {
		_, err := config.Load(config.Defaults(), "", bad.env)
		oneLine(t, err, bad.option, bad.want)
	}
}

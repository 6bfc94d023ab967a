package federation

import (
	"context"
	"reflect"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestStaticHosts: a configured address replaces discovery for exactly
// that server name, keeping the name for Host and the certificate.
func TestStaticHosts(t *testing.T) {
	dns := &fakeDNS{wkCalls: map[string]int{}}
	r := dns.resolver()
	r.static = map[string]string{"hs1": "127.0.0.1:34567", "[2001:db8::1]": "10.0.0.1:8448", "named.example:8000": "10.0.0.2:9000"}
	for _, c := range []struct {
		name string
		want target
	}{
		{"hs1", target{"127.0.0.1:34567", "hs1", "hs1"}},
		{"[2001:db8::1]", target{"10.0.0.1:8448", "[2001:db8::1]", "2001:db8::1"}},
		{"named.example:8000", target{"10.0.0.2:9000", "named.example:8000", "named.example"}},
		// Another name, or the same host with a port, is resolved as usual.
		{"hs1:8448", target{"hs1:8448", "hs1:8448", "hs1"}},
		{"hs2", target{"hs2:8448", "hs2", "hs2"}},
	} {
		got, err := r.resolve(context.Background(), spec.ServerName(c.name))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(got, []target{c.want}) {
			t.Errorf("%s: targets %v, want %v", c.name, got, c.want)
		}
	}
	if n := dns.wkCalls["hs1"]; n != 0 {
		t.Errorf("a static host's well-known was fetched %d times", n)
	}
	if n := dns.wkCalls["hs2"]; n != 1 {
		t.Errorf("hs2's well-known was fetched %d times, want discovery as usual", n)
	}
}

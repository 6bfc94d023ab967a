package serverkey_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-chat/weft/internal/serverkey"
	"github.com/weft-chat/weft/internal/serverkey/testca"
)

func TestIssueCertificate(t *testing.T) {
	for _, kind := range []struct {
		name string
		o    testca.Options
	}{
		{"Complement's RSA CA", testca.Options{}},
		// Complement's CAs used to live five hours: what it signs
		// must not outlive it.
		{"EC CA in PKCS 8, short-lived", testca.Options{EC: true, NotAfter: time.Now().Add(5 * time.Hour)}},
	} {
		t.Run(kind.name, func(t *testing.T) {
			ca := testca.Write(t, t.TempDir(), kind.o)
			for _, host := range []string{"hs1", "matrix.example.org", "127.0.0.1", "::1"} {
				cert, err := serverkey.IssueCertificate(ca.CertFile, ca.KeyFile, host)
				if err != nil {
					t.Fatalf("%s: %v", host, err)
				}
				l := leaf(t, cert.Certificate)
				opts := x509.VerifyOptions{DNSName: host, Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
				if _, err := l.Verify(opts); err != nil {
					t.Errorf("%s: the issued certificate does not chain to the CA for its name: %v", host, err)
				}
				// A server behind a CA the client does not know is not
				// trusted: the test above can fail.
				if _, err := l.Verify(x509.VerifyOptions{DNSName: host, Roots: x509.NewCertPool()}); err == nil {
					t.Errorf("%s: verified without the CA", host)
				}
				if l.NotAfter.After(ca.Cert.NotAfter) {
					t.Errorf("%s: valid until %v, after its CA (%v)", host, l.NotAfter, ca.Cert.NotAfter)
				}
				if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], ca.Cert.Raw) {
					t.Errorf("%s: chain of %d certificates, want the leaf and the CA", host, len(cert.Certificate))
				}
			}
		})
	}

	t.Run("fresh on every call, nothing written", func(t *testing.T) {
		dir := t.TempDir()
		ca := testca.Write(t, filepath.Join(dir, "ca"), testca.Options{EC: true})
		a, err := serverkey.IssueCertificate(ca.CertFile, ca.KeyFile, "hs1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := serverkey.IssueCertificate(ca.CertFile, ca.KeyFile, "hs1")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.Certificate[0], b.Certificate[0]) {
			t.Fatal("the same certificate twice")
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("files written next to the CA: %v", entries)
		}
	})

	t.Run("bad CAs", func(t *testing.T) {
		good := testca.Write(t, filepath.Join(t.TempDir(), "good"), testca.Options{EC: true})
		other := testca.Write(t, filepath.Join(t.TempDir(), "other"), testca.Options{EC: true})
		notCA := testca.Write(t, filepath.Join(t.TempDir(), "leaf"), testca.Options{NotCA: true})
		expired := testca.Write(t, filepath.Join(t.TempDir(), "expired"), testca.Options{EC: true, NotAfter: time.Now().Add(-time.Second)})
		missing := filepath.Join(t.TempDir(), "missing.crt")
		for _, c := range []struct{ name, cert, key, want string }{
			{"missing file", missing, good.KeyFile, "federation.tls_ca_cert"},
			{"key of another CA", good.CertFile, other.KeyFile, "federation.tls_ca_cert"},
			{"not a CA", notCA.CertFile, notCA.KeyFile, "not a CA"},
			{"expired", expired.CertFile, expired.KeyFile, "expired"},
		} {
			_, err := serverkey.IssueCertificate(c.cert, c.key, "hs1")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: err = %v, want one saying %q", c.name, err, c.want)
			}
		}
	})
}

package serverkey_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/weft-chat/weft/internal/serverkey"
)

// RFC 8032 test vector 1, written the way Synapse writes a signing key.
const (
	rfcSeed   = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
	rfcPublic = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"
)

func TestMarshalParseRoundTrip(t *testing.T) {
	for range 5 {
		k, err := serverkey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(k.ID), "ed25519:a_") || len(k.ID) <= len("ed25519:a_") {
			t.Fatalf("key id %q", k.ID)
		}
		line := k.Marshal()
		if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
			t.Fatalf("Marshal is not one line: %q", line)
		}
		fields := strings.Fields(string(line))
		if len(fields) != 3 || fields[0] != "ed25519" || "ed25519:"+fields[1] != string(k.ID) || strings.HasSuffix(fields[2], "=") {
			t.Fatalf("Marshal = %q, want \"ed25519 <version> <unpadded base64 seed>\"", line)
		}
		back, err := serverkey.Parse(line)
		if err != nil {
			t.Fatalf("Parse(Marshal()) = %v", err)
		}
		if back.ID != k.ID || !back.Private.Equal(k.Private) {
			t.Fatalf("round trip changed the key: %v -> %v", k.ID, back.ID)
		}
		// The key signs what it claims to.
		signed, err := gomatrixserverlib.SignJSON("example.org", back.ID, back.Private, []byte(`{"a":1}`))
		if err != nil {
			t.Fatal(err)
		}
		if err := gomatrixserverlib.VerifyJSON("example.org", k.ID, k.Public(), signed); err != nil {
			t.Fatalf("signature by the parsed key does not verify: %v", err)
		}
	}
}

func TestParseSynapseKey(t *testing.T) {
	wantPub, _ := base64.RawStdEncoding.DecodeString(rfcPublic)
	for _, file := range []string{
		"ed25519 a_AbCd " + rfcSeed + "\n",
		"ed25519 a_AbCd " + rfcSeed,                                        // no newline
		"ed25519 a_AbCd " + rfcSeed + "=\n",                                // padded
		"# made by synapse\n\ned25519 a_AbCd " + rfcSeed,                   // comment and blank line first
		"ed25519 a_AbCd " + rfcSeed + "\ned25519 a_zzzz " + rfcSeed + "\n", // several keys: the first
		"  ed25519\ta_AbCd  " + rfcSeed + "  \r\n",
	} {
		k, err := serverkey.Parse([]byte(file))
		if err != nil {
			t.Errorf("Parse(%q) = %v", file, err)
			continue
		}
		if k.ID != "ed25519:a_AbCd" {
			t.Errorf("Parse(%q): id %q, want ed25519:a_AbCd", file, k.ID)
		}
		if !bytes.Equal(k.Public(), wantPub) {
			t.Errorf("Parse(%q): public key %s, want %s", file, base64.RawStdEncoding.EncodeToString(k.Public()), rfcPublic)
		}
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	for _, file := range []string{
		"",
		"\n\n# only a comment\n",
		"hello",
		"ed25519 a_AbCd",
		"ed25519 a_AbCd " + rfcSeed + " extra",
		"rsa a_AbCd " + rfcSeed,
		"ed25519 a_AbCd not*base64!",
		"ed25519 a_AbCd " + rfcSeed[:20], // too short
		"ed25519 a_AbCd " + base64.RawStdEncoding.EncodeToString(make([]byte, 64)), // too long
		"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMRESdVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n",
		"\x00\x01\x02binary",
	} {
		if k, err := serverkey.Parse([]byte(file)); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", file, k.ID)
		}
	}
}

func TestLoadOrGenerate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "dir", "signing.key")
	first, err := serverkey.LoadOrGenerate(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no key file written: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if !bytes.Equal(data, first.Marshal()) {
		t.Errorf("file holds %q, want %q", data, first.Marshal())
	}
	second, err := serverkey.LoadOrGenerate(path)
	if err != nil {
		t.Fatal(err)
	}
	if second.ID != first.ID || !second.Private.Equal(first.Private) {
		t.Fatalf("second call returned another key: %v then %v", first.ID, second.ID)
	}

	// A file that is there but unusable is an error, never replaced.
	garbage := filepath.Join(t.TempDir(), "signing.key")
	os.WriteFile(garbage, []byte("not a key\n"), 0o600)
	if _, err := serverkey.LoadOrGenerate(garbage); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("garbage key file: err = %v, want one naming %s", err, garbage)
	}
	if data, _ := os.ReadFile(garbage); string(data) != "not a key\n" {
		t.Error("a garbage key file was overwritten")
	}
	dir := t.TempDir()
	if _, err := serverkey.LoadOrGenerate(dir); err == nil {
		t.Error("a directory as key path: no error")
	}
}

func TestWriteNewRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	a, _ := serverkey.Generate()
	b, _ := serverkey.Generate()
	if err := serverkey.WriteNew(path, a); err != nil {
		t.Fatal(err)
	}
	if err := serverkey.WriteNew(path, b); err == nil {
		t.Fatal("WriteNew overwrote an existing key")
	}
	data, _ := os.ReadFile(path)
	if !bytes.Equal(data, a.Marshal()) {
		t.Fatal("the existing key changed")
	}
	got, err := serverkey.LoadOrGenerate(path)
	if err != nil || got.ID != a.ID {
		t.Fatalf("LoadOrGenerate after WriteNew: %v, %v", got.ID, err)
	}
}

func leaf(t *testing.T, der [][]byte) *x509.Certificate {
	t.Helper()
	if len(der) == 0 {
		t.Fatal("empty certificate chain")
	}
	c, err := x509.ParseCertificate(der[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadOrMakeCertificate(t *testing.T) {
	for _, host := range []string{"example.org", "localhost", "127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			cert, err := serverkey.LoadOrMakeCertificate("", "", dir, host)
			if err != nil {
				t.Fatal(err)
			}
			l := leaf(t, cert.Certificate)
			if err := l.VerifyHostname(host); err != nil {
				t.Fatalf("certificate does not name %s: %v", host, err)
			}
			if ip := net.ParseIP(host); ip != nil && len(l.IPAddresses) == 0 {
				t.Error("an IP host got no IP SAN")
			}
			// It verifies as a self-signed server certificate.
			pool := x509.NewCertPool()
			pool.AddCert(l)
			if _, err := l.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
				t.Errorf("self-signed certificate does not verify: %v", err)
			}
			for _, f := range []string{"federation.crt", "federation.key"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("%s not written: %v", f, err)
				}
			}
			if st, err := os.Stat(filepath.Join(dir, "federation.key")); err == nil && st.Mode().Perm()&0o077 != 0 {
				t.Errorf("federation.key mode %v is readable by others", st.Mode().Perm())
			}
			again, err := serverkey.LoadOrMakeCertificate("", "", dir, host)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Certificate[0], cert.Certificate[0]) {
				t.Fatal("second call made a new certificate instead of reusing it")
			}
		})
	}

	t.Run("new host, new certificate", func(t *testing.T) {
		dir := t.TempDir()
		a, err := serverkey.LoadOrMakeCertificate("", "", dir, "a.example.org")
		if err != nil {
			t.Fatal(err)
		}
		b, err := serverkey.LoadOrMakeCertificate("", "", dir, "b.example.org")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.Certificate[0], b.Certificate[0]) {
			t.Fatal("reused a certificate for another host")
		}
		if err := leaf(t, b.Certificate).VerifyHostname("b.example.org"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("configured files", func(t *testing.T) {
		made := t.TempDir()
		want, err := serverkey.LoadOrMakeCertificate("", "", made, "matrix.example.org")
		if err != nil {
			t.Fatal(err)
		}
		other := t.TempDir()
		got, err := serverkey.LoadOrMakeCertificate(filepath.Join(made, "federation.crt"), filepath.Join(made, "federation.key"), other, "ignored.example.org")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Certificate[0], want.Certificate[0]) {
			t.Fatal("configured certificate not used")
		}
		if entries, _ := os.ReadDir(other); len(entries) != 0 {
			t.Errorf("made files in the data dir despite a configured certificate: %v", entries)
		}
		_, err = serverkey.LoadOrMakeCertificate(filepath.Join(other, "missing.crt"), filepath.Join(other, "missing.key"), other, "x")
		if err == nil || !strings.Contains(err.Error(), "federation.tls_cert") {
			t.Fatalf("missing configured certificate: err = %v, want one naming federation.tls_cert", err)
		}
	})

	t.Run("corrupt files", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "federation.crt"), []byte("garbage"), 0o600)
		os.WriteFile(filepath.Join(dir, "federation.key"), []byte("garbage"), 0o600)
		if _, err := serverkey.LoadOrMakeCertificate("", "", dir, "example.org"); err == nil {
			t.Fatal("corrupt certificate files: no error")
		}
	})
}

func TestPublic(t *testing.T) {
	k, _ := serverkey.Generate()
	if !bytes.Equal(k.Public(), k.Private.Public().(ed25519.PublicKey)) {
		t.Fatal("Public() is not the private key's public half")
	}
}

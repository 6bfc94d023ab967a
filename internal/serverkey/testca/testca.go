// Package testca writes certificate authorities for tests of TLS setups
// that issue certificates from a CA, such as Complement's.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Options shape the CA. The zero value is a CA as Complement makes it
// (complement/config: generateCAValues): an RSA key in PKCS #1 form, an
// empty subject, valid for ten years.
type Options struct {
	// EC makes a P-256 key written in PKCS #8 form instead.
	EC bool
	// NotCA leaves out basicConstraints CA:TRUE: a certificate that must
	// not sign others.
	NotCA bool
	// NotAfter overrides the end of validity (ten years from now).
	NotAfter time.Time
}

// CA is a written certificate authority.
type CA struct {
	Cert     *x509.Certificate
	CertFile string
	KeyFile  string
	// Pool holds Cert alone, for verifying what the CA issued.
	Pool *x509.CertPool
}

// Write makes a CA and writes it to dir/ca.crt and dir/ca.key (the names
// Complement mounts), creating dir.
func Write(t testing.TB, dir string, o Options) CA {
	t.Helper()
	var key crypto.Signer
	var keyPEM *pem.Block
	if o.EC {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		key, keyPEM = k, &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	} else {
		// 2048 bits rather than Complement's 4096: the same format, made
		// in a fraction of the time.
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key, keyPEM = k, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	}
	notAfter := o.NotAfter
	if notAfter.IsZero() {
		notAfter = time.Now().AddDate(10, 0, 0)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              notAfter,
		IsCA:                  !o.NotCA,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if o.NotCA {
		tpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca := CA{Cert: cert, CertFile: filepath.Join(dir, "ca.crt"), KeyFile: filepath.Join(dir, "ca.key"), Pool: x509.NewCertPool()}
	ca.Pool.AddCert(cert)
	if err := os.WriteFile(ca.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca.KeyFile, pem.EncodeToMemory(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

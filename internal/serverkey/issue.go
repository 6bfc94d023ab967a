package serverkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// IssueCertificate makes a fresh TLS certificate for host signed by the
// certificate authority in caCertFile and caKeyFile (PEM; the key in PKCS #1,
// PKCS #8 or SEC 1 form). It is for deployments that hand every server a CA
// instead of a certificate, as Complement does: the certificate and its key
// live in memory only, so each start issues a new one and nothing stale is
// left on disk. It is valid until the CA itself expires, at most five
// years, and is served with the CA's chain after it.
func IssueCertificate(caCertFile, caKeyFile, host string) (tls.Certificate, error) {
	ca, err := tls.LoadX509KeyPair(caCertFile, caKeyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_cert: %w", err)
	}
	caLeaf, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_cert %s: %w", caCertFile, err)
	}
	// x509.CreateCertificate signs with any parent; a client would then
	// reject the chain, so say so at start instead.
	if !caLeaf.BasicConstraintsValid || !caLeaf.IsCA {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_cert %s: not a CA certificate (no basicConstraints CA:TRUE)", caCertFile)
	}
	if caLeaf.KeyUsage != 0 && caLeaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_cert %s: its key usage does not allow signing certificates", caCertFile)
	}
	if time.Now().After(caLeaf.NotAfter) {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_cert %s: expired on %s", caCertFile, caLeaf.NotAfter.Format(time.RFC3339))
	}
	signer, ok := ca.PrivateKey.(crypto.Signer)
	if !ok {
		return tls.Certificate{}, fmt.Errorf("federation.tls_ca_key %s: unsupported key type %T", caKeyFile, ca.PrivateKey)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	notAfter := time.Now().AddDate(5, 0, 0)
	if caLeaf.NotAfter.Before(notAfter) {
		notAfter = caLeaf.NotAfter
	}
	tpl, err := serverTemplate(host, notAfter)
	if err != nil {
		return tls.Certificate{}, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, caLeaf, &key.PublicKey, signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue a certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: append([][]byte{der}, ca.Certificate...), PrivateKey: key, Leaf: leaf}, nil
}

// Package serverkey loads or makes the server's ed25519 signing key and its
// federation TLS certificate.
package serverkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// Key is a signing key and its id (ed25519:<version>).
type Key struct {
	ID      gomatrixserverlib.KeyID
	Private ed25519.PrivateKey
}

// Public returns the public half.
func (k Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// Generate makes a new key with a random version.
func Generate() (Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, err
	}
	v := make([]byte, 4)
	if _, err := rand.Read(v); err != nil {
		return Key{}, err
	}
	version := "a_" + strings.NewReplacer("+", "", "/", "").Replace(base64.RawStdEncoding.EncodeToString(v))
	return Key{ID: gomatrixserverlib.KeyID("ed25519:" + version), Private: priv}, nil
}

// Marshal encodes k in Synapse's signing key format, one line:
// "ed25519 <version> <unpadded base64 seed>", so keys move between Synapse
// and Weft unchanged.
func (k Key) Marshal() []byte {
	version := strings.TrimPrefix(string(k.ID), "ed25519:")
	return []byte(fmt.Sprintf("ed25519 %s %s\n", version, base64.RawStdEncoding.EncodeToString(k.Private.Seed())))
}

// Parse decodes the first key of a file in Synapse's format.
func Parse(data []byte) (Key, error) {
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Fields(line)
		if len(parts) != 3 || parts[0] != "ed25519" {
			return Key{}, errors.New(`expected "ed25519 <version> <base64 seed>"`)
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(parts[2], "="))
		if err != nil || len(seed) != ed25519.SeedSize {
			return Key{}, errors.New("the seed is not 32 bytes of unpadded base64")
		}
		return Key{ID: gomatrixserverlib.KeyID("ed25519:" + parts[1]), Private: ed25519.NewKeyFromSeed(seed)}, nil
	}
	return Key{}, errors.New("no key in file")
}

// LoadOrGenerate reads the key at path; when no file exists there, it makes
// one and writes it (mode 0600), so the key survives restarts.
func LoadOrGenerate(path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := Parse(data)
		if err != nil {
			return Key{}, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("signing key: %w", err)
	}
	k, err := Generate()
	if err != nil {
		return Key{}, err
	}
	if err := WriteNew(path, k); err != nil {
		return Key{}, err
	}
	return k, nil
}

// WriteNew writes k to path, refusing to overwrite an existing key.
func WriteNew(path string, k Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("signing key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	if _, err := f.Write(k.Marshal()); err != nil {
		f.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	return f.Close()
}

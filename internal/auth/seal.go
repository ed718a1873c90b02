package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
)

// Sealer seals SigV4 secrets for storage with AES-256-GCM under a
// key-encryption key that never enters the store: whoever reads the keys
// bucket learns no credential (bearer secrets are stored only as hashes). The
// key's ID is the additional data, so a sealed secret cannot be moved to
// another key's record.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns a Sealer for a 32-byte key-encryption key.
func NewSealer(kek []byte) (*Sealer, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("key-encryption key is %d bytes, want 32", len(kek))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts secret for the key id.
func (s *Sealer) Seal(id, secret string) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(secret)+s.aead.Overhead())
	rand.Read(nonce)
	return base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte(secret), []byte(id)))
}

// Open decrypts what Seal made for id.
func (s *Sealer) Open(id, sealed string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(b) < s.aead.NonceSize() {
		return "", errors.New("open sealed secret: malformed")
	}
	n := s.aead.NonceSize()
	out, err := s.aead.Open(nil, b[:n], b[n:], []byte(id))
	if err != nil {
		return "", fmt.Errorf("open sealed secret of key %s: %w (is this the key-encryption key it was sealed with?)", id, err)
	}
	return string(out), nil
}

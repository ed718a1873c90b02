// Package auth guards ebb's HTTP API with bearer API keys. Only hashes of keys
// are kept; the secret is shown once, when it is made. Keys are held in memory
// so that checking one never touches the store on the request path.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	"sync"
)

// KeyPrefix starts every ebb API key, so that leaked keys are easy to spot.
const KeyPrefix = "ebb_"

// NewKey returns a new random secret key and its hash.
func NewKey() (secret, hash string) {
	var b [24]byte
	rand.Read(b[:])
	secret = KeyPrefix + hex.EncodeToString(b[:])
	return secret, Hash(secret)
}

// Hash is the hex sha256 of a key: what is stored and compared.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// IsLoopback reports whether a listen address only accepts local connections.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Keys is the set of valid key hashes.
type Keys struct {
	mu     sync.RWMutex // guards hashes
	hashes [][sha256.Size]byte
}

// Add allows the key with this hex hash.
func (k *Keys) Add(hexHash string) {
	b, err := hex.DecodeString(hexHash)
	if err != nil || len(b) != sha256.Size {
		return
	}
	var h [sha256.Size]byte
	copy(h[:], b)
	k.mu.Lock()
	k.hashes = append(k.hashes, h)
	k.mu.Unlock()
}

// Remove revokes the key with this hex hash.
func (k *Keys) Remove(hexHash string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, h := range k.hashes {
		if hex.EncodeToString(h[:]) == hexHash {
			k.hashes = append(k.hashes[:i], k.hashes[i+1:]...)
			return
		}
	}
}

// Len is the number of keys.
func (k *Keys) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.hashes)
}

// Valid reports whether secret is a known key. It compares against every key
// in constant time, so timing says nothing about which bytes matched.
func (k *Keys) Valid(secret string) bool {
	h := sha256.Sum256([]byte(secret))
	k.mu.RLock()
	defer k.mu.RUnlock()
	ok := 0
	for i := range k.hashes {
		ok |= subtle.ConstantTimeCompare(h[:], k.hashes[i][:])
	}
	return ok == 1
}

// Middleware rejects requests without a valid "Authorization: Bearer KEY"
// (or, for AWS SDK-free tools, "X-Api-Key: KEY") with 401. Paths in open are
// served without a key.
func (k *Keys) Middleware(next http.Handler, open ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range open {
			if r.URL.Path == p {
				next.ServeHTTP(w, r)
				return
			}
		}
		secret := r.Header.Get("X-Api-Key")
		if a := r.Header.Get("Authorization"); a != "" {
			if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
				secret = strings.TrimSpace(a[7:])
			}
		}
		if secret == "" || !k.Valid(secret) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ebb"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"errorType":"Unauthorized","errorMessage":"a valid API key is required (Authorization: Bearer KEY)"}` + "\n"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

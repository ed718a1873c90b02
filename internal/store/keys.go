package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrKeyIDInUse is returned (wrapped) by PutKey when another key already has
// the same ID (the first 8 hex of its hash): IDs are how keys are listed and
// revoked, so they must be unique. The caller should draw a new secret.
var ErrKeyIDInUse = errors.New("key id is already in use")

// keyIDLen is the length of a Key.ID: the first 8 hex of the secret's hash.
const keyIDLen = 8

// Key is an API key as stored: everything but the secret, which is never
// stored; the bucket is keyed by the hex sha256 of the secret.
type Key struct {
	// ID is the first 8 hex of the hash; it names the key in listings.
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}

func keyNotFound(what string) error {
	return &notFoundError{what: "key " + what}
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// PutKey stores k under hash, the lowercase hex sha256 of the key's secret,
// creating it or replacing what was stored under the same hash. k.ID is set
// from the hash; a different non-empty k.ID is an error.
func (s *Store) PutKey(ctx context.Context, hash string, k Key) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validDigest(hash) {
		return errors.New("put key: hash is not a lowercase hex sha256")
	}
	id := hash[:keyIDLen]
	if k.ID != "" && k.ID != id {
		return fmt.Errorf("put key: id %q is not the first %d hex of the hash", k.ID, keyIDLen)
	}
	k.ID = id
	hashes, err := s.KeyHashes(ctx)
	if err != nil {
		return fmt.Errorf("put key %s: %w", id, err)
	}
	for _, h := range hashes {
		if h != hash && strings.HasPrefix(h, id) {
			return fmt.Errorf("put key %s: %w", id, ErrKeyIDInUse)
		}
	}
	data, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("put key %s: encode: %w", id, err)
	}
	if _, err := s.keys.Put(ctx, hash, data); err != nil {
		return fmt.Errorf("put key %s: %w", id, err)
	}
	return nil
}

// GetKey returns the key stored under hash; an error matching ebb.ErrNotFound
// says there is none (a malformed hash included).
func (s *Store) GetKey(ctx context.Context, hash string) (*Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if !validDigest(hash) {
		return nil, keyNotFound("with that hash")
	}
	e, err := s.keys.Get(ctx, hash)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, keyNotFound(hash[:keyIDLen])
	}
	if err != nil {
		return nil, fmt.Errorf("get key %s: %w", hash[:keyIDLen], err)
	}
	var k Key
	if err := json.Unmarshal(e.Value(), &k); err != nil {
		return nil, fmt.Errorf("get key %s: decode: %w", hash[:keyIDLen], err)
	}
	return &k, nil
}

// ListKeys returns every key, oldest first (ties by ID). An entry that cannot
// be decoded is logged and left out.
func (s *Store) ListKeys(ctx context.Context) ([]Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	entries, err := s.snapshot(ctx, s.keys, false)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	keys := make([]Key, 0, len(entries))
	for _, e := range entries {
		var k Key
		if err := json.Unmarshal(e.Value(), &k); err != nil {
			s.log.Error("skipping corrupt key entry", "key", e.Key()[:min(len(e.Key()), keyIDLen)], "err", err)
			continue
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	return keys, nil
}

// DeleteKey removes the key whose hash starts with id: its 8-hex ID, or any
// longer prefix of the hash up to the whole. An error matching ebb.ErrNotFound
// says no key matches; a prefix matching several keys is refused.
func (s *Store) DeleteKey(ctx context.Context, id string) error {
	if err := s.check(); err != nil {
		return err
	}
	if len(id) < keyIDLen || len(id) > 64 || !isHex(id) {
		return keyNotFound(fmt.Sprintf("%q", id))
	}
	hashes, err := s.KeyHashes(ctx)
	if err != nil {
		return fmt.Errorf("delete key %s: %w", id, err)
	}
	var match []string
	for _, h := range hashes {
		if strings.HasPrefix(h, id) {
			match = append(match, h)
		}
	}
	switch len(match) {
	case 0:
		return keyNotFound(id)
	case 1:
	default:
		return fmt.Errorf("delete key %s: %d keys match; give more of the hash", id, len(match))
	}
	if err := s.keys.Delete(ctx, match[0]); err != nil {
		return fmt.Errorf("delete key %s: %w", id, err)
	}
	return nil
}

// KeyHashes lists the hashes of all stored keys, for an in-memory check of
// presented keys that never touches the store on the request path.
func (s *Store) KeyHashes(ctx context.Context) ([]string, error) {
	entries, err := s.snapshot(ctx, s.keys, true)
	if err != nil {
		return nil, err
	}
	hashes := make([]string, len(entries))
	for i, e := range entries {
		hashes[i] = e.Key()
	}
	return hashes, nil
}

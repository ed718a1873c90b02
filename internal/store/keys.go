package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

// ErrKeyIDInUse is returned (wrapped) by CreateKey when a key with the same
// ID exists: IDs are how keys are listed and revoked, so they are unique.
// The caller should draw a new ID.
var ErrKeyIDInUse = errors.New("key id is already in use")

// keyIDLen is the length of a key's ID: 8 lowercase hex.
const keyIDLen = 8

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

func validKeyID(id string) bool { return len(id) == keyIDLen && isHex(id) }

// legacyKey is a key as ebb stored it before roles: under the hash of its
// secret, always an admin key.
type legacyKey struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
	Role  string `json:"role"`
}

// decodeKey reads an entry of the keys bucket: a key under its ID, or one
// stored before roles under its 64-hex hash (which reads as an admin key).
func decodeKey(kvKey string, data []byte) (ebb.Key, error) {
	var k ebb.Key
	if err := json.Unmarshal(data, &k); err != nil {
		return k, err
	}
	if len(kvKey) == 64 && k.Hash == "" {
		var old legacyKey
		json.Unmarshal(data, &old)
		k.ID, k.Hash = kvKey[:keyIDLen], kvKey
		if old.Admin || k.Role == "" {
			k.Role = ebb.RoleAdmin
		}
	}
	if !validKeyID(k.ID) || !validDigest(k.Hash) {
		return k, errors.New("malformed key record")
	}
	return k, nil
}

func checkKey(k *ebb.Key) error {
	if !validKeyID(k.ID) {
		return fmt.Errorf("key id %q is not %d lowercase hex", k.ID, keyIDLen)
	}
	if !validDigest(k.Hash) {
		return fmt.Errorf("key %s: hash is not a lowercase hex sha256", k.ID)
	}
	return nil
}

// CreateKey stores a new key under its ID; ErrKeyIDInUse if one is there.
func (s *Store) CreateKey(ctx context.Context, k ebb.Key) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := checkKey(&k); err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("create key %s: %w", k.ID, err)
	}
	for _, o := range keys {
		if o.ID == k.ID {
			return fmt.Errorf("create key %s: %w", k.ID, ErrKeyIDInUse)
		}
	}
	data, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("create key %s: encode: %w", k.ID, err)
	}
	if _, err := s.keys.Create(ctx, k.ID, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("create key %s: %w", k.ID, ErrKeyIDInUse)
		}
		return fmt.Errorf("create key %s: %w", k.ID, err)
	}
	return nil
}

// UpdateKey replaces an existing key (found by ID); ebb.ErrNotFound if it
// was revoked meanwhile, so that a late last-used write never brings a
// revoked key back. A key stored before roles moves to its ID.
func (s *Store) UpdateKey(ctx context.Context, k ebb.Key) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := checkKey(&k); err != nil {
		return fmt.Errorf("update key: %w", err)
	}
	kvKey, rev, err := s.findKey(ctx, k.ID)
	if err != nil {
		return err
	}
	data, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("update key %s: encode: %w", k.ID, err)
	}
	if kvKey == k.ID {
		if _, err := s.keys.Update(ctx, kvKey, data, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
				return keyNotFound(k.ID)
			}
			return fmt.Errorf("update key %s: %w", k.ID, err)
		}
		return nil
	}
	if _, err := s.keys.Create(ctx, k.ID, data); err != nil {
		return fmt.Errorf("update key %s: %w", k.ID, err)
	}
	if err := s.keys.Delete(ctx, kvKey); err != nil {
		return fmt.Errorf("update key %s: remove old record: %w", k.ID, err)
	}
	return nil
}

// findKey returns the bucket key and revision of the key with this ID.
func (s *Store) findKey(ctx context.Context, id string) (string, uint64, error) {
	if !validKeyID(id) {
		return "", 0, keyNotFound(fmt.Sprintf("%q", id))
	}
	e, err := s.keys.Get(ctx, id)
	if err == nil {
		return id, e.Revision(), nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", 0, fmt.Errorf("get key %s: %w", id, err)
	}
	entries, err := s.snapshot(ctx, s.keys, false)
	if err != nil {
		return "", 0, fmt.Errorf("find key %s: %w", id, err)
	}
	for _, e := range entries {
		if len(e.Key()) == 64 && strings.HasPrefix(e.Key(), id) {
			return e.Key(), e.Revision(), nil
		}
	}
	return "", 0, keyNotFound(id)
}

// GetKey returns the key with this ID; an error matching ebb.ErrNotFound
// says there is none.
func (s *Store) GetKey(ctx context.Context, id string) (*ebb.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	kvKey, _, err := s.findKey(ctx, id)
	if err != nil {
		return nil, err
	}
	e, err := s.keys.Get(ctx, kvKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, keyNotFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("get key %s: %w", id, err)
	}
	k, err := decodeKey(kvKey, e.Value())
	if err != nil {
		return nil, fmt.Errorf("get key %s: decode: %w", id, err)
	}
	return &k, nil
}

// ListKeys returns every key, oldest first (ties by ID). An entry that cannot
// be decoded is logged and left out.
func (s *Store) ListKeys(ctx context.Context) ([]ebb.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	entries, err := s.snapshot(ctx, s.keys, false)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	keys := make([]ebb.Key, 0, len(entries))
	for _, e := range entries {
		k, err := decodeKey(e.Key(), e.Value())
		if err != nil {
			s.log.Error("skipping corrupt key entry", "key", e.Key()[:min(len(e.Key()), keyIDLen)], "err", err)
			continue
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b ebb.Key) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	return keys, nil
}

// DeleteKey removes the key with this ID; an error matching ebb.ErrNotFound
// says there is none.
func (s *Store) DeleteKey(ctx context.Context, id string) error {
	if err := s.check(); err != nil {
		return err
	}
	kvKey, _, err := s.findKey(ctx, id)
	if err != nil {
		return err
	}
	if err := s.keys.Delete(ctx, kvKey); err != nil {
		return fmt.Errorf("delete key %s: %w", id, err)
	}
	return nil
}

// KeyEvent is a change to the keys bucket, seen by WatchKeys.
type KeyEvent struct {
	ID  string
	Key *ebb.Key // nil when the key was deleted
}

// WatchKeys reports changes to the keys bucket made after the call, so that a
// node learns at once of keys created, rotated or revoked through another.
// It closes the channel when ctx ends or the store closes.
func (s *Store) WatchKeys(ctx context.Context) (<-chan KeyEvent, error) {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	w, err := s.keys.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch keys: %w", err)
	}
	out := make(chan KeyEvent, 16)
	s.watchers.Add(1)
	go pump(s, ctx, w, out, func(e jetstream.KeyValueEntry) (KeyEvent, bool) {
		if e == nil {
			return KeyEvent{}, false
		}
		ev := KeyEvent{ID: e.Key()}
		if len(ev.ID) == 64 {
			ev.ID = ev.ID[:keyIDLen]
		}
		if e.Operation() == jetstream.KeyValuePut {
			k, err := decodeKey(e.Key(), e.Value())
			if err != nil {
				s.log.Error("skipping corrupt key entry", "key", ev.ID, "err", err)
				return KeyEvent{}, false
			}
			ev.ID, ev.Key = k.ID, &k
		}
		return ev, true
	})
	return out, nil
}

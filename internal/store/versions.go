package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

// A function's kept versions live in their own bucket, one record per
// version (NAME.N): the registry entry (ebb_functions) stays the newest
// version, which is what schedules, events and async settings follow.

func versionKey(name string, v int) string { return name + "." + strconv.Itoa(v) }

// PutVersion keeps fn as version fn.Version of its function. Versions are
// immutable: putting one that exists is refused.
func (s *Store) PutVersion(ctx context.Context, fn *ebb.Function) error {
	if err := s.check(); err != nil {
		return err
	}
	if fn == nil || fn.Version < 1 || !validName(fn.Spec.Name) || !validDigest(fn.Digest) {
		return errors.New("put version: not a valid function version")
	}
	data, err := json.Marshal(fn)
	if err != nil {
		return fmt.Errorf("put version %s: encode: %w", fn.Spec.Name, err)
	}
	if _, err := s.kept.Create(ctx, versionKey(fn.Spec.Name, fn.Version), data); err != nil {
		return fmt.Errorf("put version %s %d: %w", fn.Spec.Name, fn.Version, err)
	}
	return nil
}

// ListVersions returns name's kept versions, oldest first.
func (s *Store) ListVersions(ctx context.Context, name string) ([]*ebb.Function, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if !validName(name) {
		return nil, nil
	}
	return s.listVersions(ctx, name+".*")
}

// ListAllVersions returns every kept version of every function, by name
// and then version.
func (s *Store) ListAllVersions(ctx context.Context) ([]*ebb.Function, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.listVersions(ctx, ">")
}

func (s *Store) listVersions(ctx context.Context, filter string) ([]*ebb.Function, error) {
	entries, err := s.snapshotOf(ctx, s.kept, filter, false)
	if err != nil {
		return nil, fmt.Errorf("list versions: %w", err)
	}
	out := make([]*ebb.Function, 0, len(entries))
	for _, e := range entries {
		fn, err := decodeFunction(e.Value())
		if err != nil {
			s.log.Error("skipping corrupt version record", "key", e.Key(), "err", err)
			continue
		}
		out = append(out, fn)
	}
	slices.SortFunc(out, func(a, b *ebb.Function) int {
		if c := strings.Compare(a.Spec.Name, b.Spec.Name); c != 0 {
			return c
		}
		return a.Version - b.Version
	})
	return out, nil
}

// DeleteVersion removes version v of name; ebb.ErrNotFound when it is not
// kept.
func (s *Store) DeleteVersion(ctx context.Context, name string, v int) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validName(name) {
		return functionNotFound(name)
	}
	key := versionKey(name, v)
	if _, err := s.kept.Get(ctx, key); errors.Is(err, jetstream.ErrKeyNotFound) {
		return &notFoundError{what: fmt.Sprintf("version %d of %q", v, name)}
	} else if err != nil {
		return fmt.Errorf("delete version %s %d: %w", name, v, err)
	}
	if err := s.kept.Purge(ctx, key); err != nil {
		return fmt.Errorf("delete version %s %d: %w", name, v, err)
	}
	return nil
}

// DeleteVersions removes every kept version of name and its routes, as
// when the function is removed.
func (s *Store) DeleteVersions(ctx context.Context, name string) error {
	vs, err := s.ListVersions(ctx, name)
	if err != nil {
		return err
	}
	for _, fn := range vs {
		if err := s.kept.Purge(ctx, versionKey(name, fn.Version)); err != nil {
			return fmt.Errorf("delete versions of %s: %w", name, err)
		}
	}
	if err := s.traffic.Purge(ctx, name); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete routes of %s: %w", name, err)
	}
	return nil
}

// GetTraffic returns name's routes and aliases; the zero Traffic (route to
// the newest version) when none were ever set.
func (s *Store) GetTraffic(ctx context.Context, name string) (ebb.Traffic, error) {
	t, _, err := s.getTraffic(ctx, name)
	return t, err
}

func (s *Store) getTraffic(ctx context.Context, name string) (ebb.Traffic, uint64, error) {
	var t ebb.Traffic
	if err := s.check(); err != nil {
		return t, 0, err
	}
	if !validName(name) {
		return t, 0, functionNotFound(name)
	}
	e, err := s.traffic.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return t, 0, nil
	}
	if err != nil {
		return t, 0, fmt.Errorf("get routes of %s: %w", name, err)
	}
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		return t, 0, fmt.Errorf("get routes of %s: decode: %w", name, err)
	}
	return t, e.Revision(), nil
}

// UpdateTraffic changes name's routes with change, by compare-and-set: a
// change made meanwhile on another node is read again and change runs on
// it. An error from change leaves the routes as they were.
func (s *Store) UpdateTraffic(ctx context.Context, name string, change func(*ebb.Traffic) error) (ebb.Traffic, error) {
	for {
		if err := ctx.Err(); err != nil {
			return ebb.Traffic{}, err
		}
		t, rev, err := s.getTraffic(ctx, name)
		if err != nil {
			return t, err
		}
		if err := change(&t); err != nil {
			return t, err
		}
		data, err := json.Marshal(&t)
		if err != nil {
			return t, fmt.Errorf("put routes of %s: encode: %w", name, err)
		}
		if rev == 0 {
			_, err = s.traffic.Create(ctx, name, data)
		} else {
			_, err = s.traffic.Update(ctx, name, data, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return t, fmt.Errorf("put routes of %s: %w", name, err)
		}
		return t, nil
	}
}

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

// RouteEvent is a change to a function's routes, or the removal of one of
// its kept versions, seen by WatchRoutes.
type RouteEvent struct {
	Name string
	// Removed, when not 0, is a version of Name whose record was removed;
	// otherwise Traffic is Name's routes as they were set.
	Removed int
	Traffic ebb.Traffic
}

// WatchRoutes reports the routes of every function and the removal of
// kept versions, so that a node can follow changes made through another:
// first the routes each function has now and the versions removed before
// (as far as their markers are kept), then every change as it happens,
// until ctx ends or the store closes; then it closes the channel. A new
// version, and routes removed with their function, are not reported: the
// registry (WatchFunctions) says those. A consumer that stops reading
// stalls only its own watch.
func (s *Store) WatchRoutes(ctx context.Context) (<-chan RouteEvent, error) {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	tw, err := s.traffic.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch routes: %w", err)
	}
	vw, err := s.kept.WatchAll(ctx)
	if err != nil {
		_ = tw.Stop()
		drain(tw)
		return nil, fmt.Errorf("watch versions: %w", err)
	}
	routes, removed, out := make(chan RouteEvent, 16), make(chan RouteEvent, 16), make(chan RouteEvent, 16)
	s.watchers.Add(3)
	go pump(s, ctx, tw, routes, func(e jetstream.KeyValueEntry) (RouteEvent, bool) {
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			return RouteEvent{}, false
		}
		ev := RouteEvent{Name: e.Key()}
		if err := json.Unmarshal(e.Value(), &ev.Traffic); err != nil {
			s.log.Error("skipping corrupt routes", "function", e.Key(), "err", err)
			return RouteEvent{}, false
		}
		return ev, true
	})
	go pump(s, ctx, vw, removed, func(e jetstream.KeyValueEntry) (RouteEvent, bool) {
		if e == nil || e.Operation() == jetstream.KeyValuePut {
			return RouteEvent{}, false
		}
		name, n, ok := parseVersionKey(e.Key())
		return RouteEvent{Name: name, Removed: n}, ok
	})
	go s.merge(ctx, out, routes, removed)
	return out, nil
}

// merge sends what a and b carry to out until both are closed, ctx ends or
// the store closes; then it closes out. The caller has done
// s.watchers.Add(1) for it.
func (s *Store) merge(ctx context.Context, out chan<- RouteEvent, a, b <-chan RouteEvent) {
	defer s.watchers.Done()
	defer close(out)
	for a != nil || b != nil {
		var ev RouteEvent
		var ok bool
		select {
		case ev, ok = <-a:
			if !ok {
				a = nil
				continue
			}
		case ev, ok = <-b:
			if !ok {
				b = nil
				continue
			}
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}

// parseVersionKey splits a version record's key, NAME.N.
func parseVersionKey(key string) (string, int, bool) {
	i := strings.LastIndexByte(key, '.')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(key[i+1:])
	if err != nil || n < 1 || versionKey(key[:i], n) != key {
		return "", 0, false
	}
	return key[:i], n, true
}

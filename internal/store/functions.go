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

// FunctionEvent is one change to the function registry.
type FunctionEvent struct {
	Name string
	// Function is the registry entry after the change; nil on delete.
	Function *ebb.Function
}

// notFoundError names what is missing while matching ebb.ErrNotFound, whose
// own text speaks only of functions.
type notFoundError struct{ what string }

func (e *notFoundError) Error() string        { return e.what + " not found" }
func (e *notFoundError) Is(target error) bool { return target == ebb.ErrNotFound }

func functionNotFound(name string) error {
	return &notFoundError{what: "function " + strconv.Quote(name)}
}

// validName reports whether name can be a function name. It asks ebb.Spec so
// that the rule has one home; the name is the first field Validate checks.
func validName(name string) bool {
	spec := ebb.Spec{Name: name}
	err := spec.Validate()
	var fe *ebb.FieldError
	return !(errors.As(err, &fe) && fe.Field == "name")
}

// PutFunction stores fn as the registry entry for fn.Spec.Name, replacing any
// previous one. fn must be valid: a valid spec, a version from 1 and a sha256
// digest, because every node that loads the registry trusts it.
func (s *Store) PutFunction(ctx context.Context, fn *ebb.Function) error {
	if err := s.check(); err != nil {
		return err
	}
	if fn == nil {
		return errors.New("put function: nil function")
	}
	if err := fn.Spec.Validate(); err != nil {
		return fmt.Errorf("put function: %w", err)
	}
	if fn.Version < 1 {
		return fmt.Errorf("put function %s: version %d is not positive", fn.Spec.Name, fn.Version)
	}
	if !validDigest(fn.Digest) {
		return fmt.Errorf("put function %s: digest %q is not a hex sha256", fn.Spec.Name, fn.Digest)
	}
	data, err := json.Marshal(fn)
	if err != nil {
		return fmt.Errorf("put function %s: encode: %w", fn.Spec.Name, err)
	}
	if _, err := s.fns.Put(ctx, fn.Spec.Name, data); err != nil {
		return fmt.Errorf("put function %s: %w", fn.Spec.Name, err)
	}
	return nil
}

// GetFunction returns the registry entry for name, or an error matching
// ebb.ErrNotFound when there is none.
func (s *Store) GetFunction(ctx context.Context, name string) (*ebb.Function, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if !validName(name) {
		return nil, functionNotFound(name)
	}
	e, err := s.fns.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, functionNotFound(name)
	}
	if err != nil {
		return nil, fmt.Errorf("get function %s: %w", name, err)
	}
	fn, err := decodeFunction(e.Value())
	if err != nil {
		return nil, fmt.Errorf("get function %s: %w", name, err)
	}
	return fn, nil
}

func decodeFunction(data []byte) (*ebb.Function, error) {
	var fn ebb.Function
	if err := json.Unmarshal(data, &fn); err != nil {
		return nil, fmt.Errorf("decode registry entry: %w", err)
	}
	return &fn, nil
}

// ListFunctions returns every registered function, sorted by name. An entry
// that cannot be decoded is logged and left out rather than hiding the rest.
func (s *Store) ListFunctions(ctx context.Context) ([]*ebb.Function, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	entries, err := s.snapshot(ctx, s.fns, false)
	if err != nil {
		return nil, fmt.Errorf("list functions: %w", err)
	}
	fns := make([]*ebb.Function, 0, len(entries))
	for _, e := range entries {
		fn, err := decodeFunction(e.Value())
		if err != nil {
			s.log.Error("skipping corrupt registry entry", "function", e.Key(), "err", err)
			continue
		}
		fns = append(fns, fn)
	}
	slices.SortFunc(fns, func(a, b *ebb.Function) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	return fns, nil
}

// DeleteFunction removes name from the registry; an error matching
// ebb.ErrNotFound says there was nothing to remove. Its version counter and
// bundle are kept: numbers are never reused, and bundles are shared by digest.
func (s *Store) DeleteFunction(ctx context.Context, name string) error {
	if err := s.check(); err != nil {
		return err
	}
	if !validName(name) {
		return functionNotFound(name)
	}
	for {
		e, err := s.fns.Get(ctx, name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return functionNotFound(name)
		}
		if err != nil {
			return fmt.Errorf("delete function %s: %w", name, err)
		}
		// Conditional on the revision read, so that of two concurrent
		// deletes exactly one succeeds and the other sees ErrNotFound.
		err = s.fns.Delete(ctx, name, jetstream.LastRevision(e.Revision()))
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete function %s: %w", name, err)
		}
		return nil
	}
}

// NextVersion allocates the next version number for name: 1, 2, 3 … Numbers
// are never reused, even after DeleteFunction, and concurrent callers (on any
// node) never get the same one: the counter advances by compare-and-set.
func (s *Store) NextVersion(ctx context.Context, name string) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if !validName(name) {
		return 0, fmt.Errorf("next version: invalid function name %q", name)
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("next version %s: %w", name, err)
		}
		e, err := s.versions.Get(ctx, name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			_, err = s.versions.Create(ctx, name, []byte("1"))
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("next version %s: %w", name, err)
			}
			return 1, nil
		}
		if err != nil {
			return 0, fmt.Errorf("next version %s: %w", name, err)
		}
		cur, err := strconv.Atoi(string(e.Value()))
		if err != nil || cur < 1 {
			return 0, fmt.Errorf("next version %s: corrupt counter %q", name, e.Value())
		}
		next := cur + 1
		_, err = s.versions.Update(ctx, name, []byte(strconv.Itoa(next)), e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("next version %s: %w", name, err)
		}
		return next, nil
	}
}

// WatchFunctions reports the registry and its changes until ctx ends or the
// store closes, then closes the channel. It starts with one event per function
// registered now, then one per put or delete in the order they happened, so
// that a node can build and keep a cache from it alone, with no gap between a
// listing and a watch. The registry keeps the last 16 revisions of each
// function: a consumer that falls further behind than that on one function
// skips to its newer revisions, but always ends at its latest state. A
// consumer that stops reading stalls only its own watch.
func (s *Store) WatchFunctions(ctx context.Context) (<-chan FunctionEvent, error) {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	w, err := s.fns.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch functions: %w", err)
	}
	out := make(chan FunctionEvent, 16)
	s.watchers.Add(1)
	go s.watch(ctx, w, out)
	return out, nil
}

func (s *Store) watch(ctx context.Context, w jetstream.KeyWatcher, out chan<- FunctionEvent) {
	// Until the library's nil marker, entries are the current state, in
	// which a delete marker is a function removed before the watch began:
	// not news to a consumer building its view from this channel, unless
	// this watch already reported the function as present.
	initial := true
	reported := make(map[string]bool)
	pump(s, ctx, w, out, func(e jetstream.KeyValueEntry) (FunctionEvent, bool) {
		if e == nil {
			initial, reported = false, nil
			return FunctionEvent{}, false
		}
		isPut := e.Operation() == jetstream.KeyValuePut
		if initial {
			if !isPut && !reported[e.Key()] {
				return FunctionEvent{}, false
			}
			reported[e.Key()] = isPut
		}
		ev := FunctionEvent{Name: e.Key()}
		if isPut {
			fn, err := decodeFunction(e.Value())
			if err != nil {
				s.log.Error("skipping corrupt registry entry", "function", e.Key(), "err", err)
				return FunctionEvent{}, false
			}
			ev.Function = fn
		}
		return ev, true
	})
}

// pump sends what conv makes of each entry of w (nil: the end of the
// initial values) to out, when conv says to, until ctx ends, the store
// closes or w ends; then it stops w and closes out. A consumer that stops
// reading stalls only its own watch. The caller has done s.watchers.Add(1).
func pump[T any](s *Store, ctx context.Context, w jetstream.KeyWatcher, out chan<- T, conv func(jetstream.KeyValueEntry) (T, bool)) {
	defer s.watchers.Done()
	defer close(out)
	defer func() {
		_ = w.Stop()
		drain(w)
	}()
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
			if !ok {
				return
			}
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
		ev, send := conv(e)
		if !send {
			continue
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

// drain empties a stopped watcher so that the library's delivery goroutine,
// which may be blocked handing us an entry, can finish and close the channel.
func drain(w jetstream.KeyWatcher) {
	for range w.Updates() {
	}
}

// snapshot returns the current entries of kv (with values unless metaOnly),
// leaving out deleted keys.
func (s *Store) snapshot(ctx context.Context, kv jetstream.KeyValue, metaOnly bool) ([]jetstream.KeyValueEntry, error) {
	return s.snapshotOf(ctx, kv, ">", metaOnly)
}

// snapshotOf is snapshot for the keys that match filter (NATS subject
// wildcards: ">" is every key).
func (s *Store) snapshotOf(ctx context.Context, kv jetstream.KeyValue, filter string, metaOnly bool) ([]jetstream.KeyValueEntry, error) {
	opts := []jetstream.WatchOpt{jetstream.IgnoreDeletes()}
	if metaOnly {
		opts = append(opts, jetstream.MetaOnly())
	}
	w, err := kv.Watch(ctx, filter, opts...)
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = w.Stop()
		drain(w)
	}()
	var entries []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				if err := s.check(); err != nil {
					return nil, err
				}
				return nil, errors.New("watch ended before the initial values")
			}
			if e == nil {
				return entries, nil
			}
			entries = append(entries, e)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

package platform

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/metrics"
	"github.com/ebb-run/ebb/internal/shadow"
)

// This file keeps a function's versions and routes in memory: every kept
// version (its code stays unpacked), which of them have a pool, and the
// compiled routes that pick a version for each request.

// function is one deployed function: its kept versions and where its
// traffic goes. It is changed only under Platform.mu (held for writing) and
// read under it (held for reading); the control plane's changes are also
// serialised by Platform.deployMu.
type function struct {
	name     string
	versions map[int]*version
	latest   *version // the newest kept version: the registry entry
	traffic  ebb.Traffic
	route    target            // unqualified requests
	aliases  map[string]target // NAME:alias
	limiter  *rate.Limiter     // the newest spec's rate_limit; nil for none
	// shadow is the shadow run under way, nil when none; lastShadow the
	// one before, whose report stays readable after it stopped.
	shadow, lastShadow *shadow.Run
}

// target is a compiled route: one version that takes everything (the common
// case, which draws nothing), or a split drawn per request.
type target struct {
	single *version
	split  ebb.Split
}

// version is one kept version. Its pool (dep) exists only while it takes
// traffic: it is made when the version is routed or first addressed, and
// drained when it stops being routed.
type version struct {
	fn      *ebb.Function
	codeDir string
	mu      sync.Mutex // serialises making and retiring the pool
	dep     atomic.Pointer[deployment]
	gone    bool // removed (under mu): no pool is made any more
	stats   versionStats
}

// versionStats are a version's counters, kept across its pools.
type versionStats struct {
	invocations, errors, coldStarts atomic.Uint64
	latency                         metrics.Latency
	series                          *metrics.Version // the same in /metrics, with a version label
}

// compile rebuilds f's routes from f.traffic.
func (f *function) compile() {
	r := f.traffic.Route
	if len(r) == 0 && f.latest != nil {
		r = ebb.Split{{Version: f.latest.fn.Version, Percent: 100}}
	}
	f.route = f.target(r)
	f.aliases = make(map[string]target, len(f.traffic.Aliases))
	for _, a := range f.traffic.Aliases {
		f.aliases[a.Name] = f.target(a.Split)
	}
	// A shadow run starts afresh whenever its configuration changes.
	switch sc := f.traffic.Shadow; {
	case sc == nil && f.shadow != nil:
		f.lastShadow, f.shadow = f.shadow, nil
	case sc != nil && (f.shadow == nil || f.shadow.Config() != *sc):
		if f.shadow != nil {
			f.lastShadow = f.shadow
		}
		f.shadow = shadow.NewRun(*sc, time.Now(), maxMirrorsInFlight)
	}
}

// maxMirrorsInFlight bounds a shadow run's mirrored requests in flight: past
// it, requests are not mirrored (and counted as dropped), so that a slow
// shadow cannot pile up work on the node.
const maxMirrorsInFlight = 256

func (f *function) target(s ebb.Split) target {
	if v := s.Single(); v != 0 {
		if ver := f.versions[v]; ver != nil {
			return target{single: ver}
		}
	}
	return target{split: s}
}

func (f *function) pickTarget(t *target, key string) *version {
	if t.single != nil {
		return t.single
	}
	if len(t.split) == 0 {
		return nil
	}
	return f.versions[t.split.Pick(key, rand.Uint32())]
}

// targetOf returns the route that qualifier names ("" for the function's
// own), or nil when it names none; a version number names itself.
func (f *function) pick(qualifier, key string) *version {
	switch qualifier {
	case "":
		return f.pickTarget(&f.route, key)
	case "latest", "$LATEST":
		return f.latest
	}
	if qualifier[0] >= '0' && qualifier[0] <= '9' {
		n, err := strconv.Atoi(qualifier)
		if err != nil {
			return nil
		}
		return f.versions[n]
	}
	if t, ok := f.aliases[qualifier]; ok {
		return f.pickTarget(&t, key)
	}
	return nil
}

// routed returns the versions that f's routes and aliases send traffic to.
func (f *function) routed() map[int]bool {
	out := map[int]bool{}
	if f.route.single != nil {
		out[f.route.single.fn.Version] = true
	}
	for _, w := range f.route.split {
		out[w.Version] = true
	}
	for _, v := range f.traffic.Versions() {
		out[v] = true
	}
	return out
}

// qualifierNotFound is a qualifier that names no version or alias.
func qualifierNotFound(name, qualifier string) error {
	return &ebb.NotFoundError{Message: fmt.Sprintf("function %q has no version or alias %q", name, qualifier)}
}

// resolve picks the version that serves one request to t.
func (p *Platform) resolve(t gateway.Target) (*version, error) {
	v, _, err := p.resolveShadow(t)
	return v, err
}

// resolveShadow is resolve that also returns the function's shadow run for
// an unqualified request (nil when none), read under the same lock.
func (p *Platform) resolveShadow(t gateway.Target) (*version, *shadow.Run, error) {
	p.mu.RLock()
	f := p.fns[t.Name]
	var v *version
	var run *shadow.Run
	if f != nil {
		v = f.pick(t.Qualifier, t.Key)
		if t.Qualifier == "" {
			run = f.shadow
		}
	}
	p.mu.RUnlock()
	if f == nil {
		return nil, nil, ebb.ErrNotFound
	}
	if v == nil {
		return nil, nil, qualifierNotFound(t.Name, t.Qualifier)
	}
	return v, run, nil
}

// newVersion is a kept version, without a pool yet.
func (p *Platform) newVersion(fn *ebb.Function, codeDir string) *version {
	v := &version{fn: fn, codeDir: codeDir}
	v.stats.series = p.metrics.ForVersion(fn.Spec.Name, fn.Version)
	return v
}

// activate returns v's pool, making it when v has none.
func (p *Platform) activate(v *version) (*deployment, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if d := v.dep.Load(); d != nil {
		return d, nil
	}
	if v.gone {
		return nil, ebb.ErrDraining // the caller looks again
	}
	d, err := p.newDeployment(v.fn, v.codeDir)
	if err != nil {
		return nil, fmt.Errorf("start pool of %s version %d: %w", v.fn.Spec.Name, v.fn.Version, err)
	}
	d.ver = v
	v.dep.Store(d)
	return d, nil
}

// retire drains v's pool, if it has one; with gone, v never gets another.
func (p *Platform) retire(v *version, gone bool) {
	v.mu.Lock()
	d := v.dep.Swap(nil)
	if gone {
		v.gone = true
	}
	v.mu.Unlock()
	if d != nil {
		p.drain(d)
	}
}

// syncPools gives every routed version of f a pool and drains the pools of
// the others: a version that takes no traffic has no process.
func (p *Platform) syncPools(f *function) {
	p.mu.RLock()
	routed := f.routed()
	vs := make([]*version, 0, len(f.versions))
	for _, v := range f.versions {
		vs = append(vs, v)
	}
	p.mu.RUnlock()
	for _, v := range vs {
		if routed[v.fn.Version] {
			if _, err := p.activate(v); err != nil {
				p.log.Error("start routed version", "function", f.name, "version", v.fn.Version, "err", err)
			}
			continue
		}
		p.retire(v, false)
	}
}

// install puts version fn (with its pool d, if made) and the routes tr in
// place, and brings the pools in line with the routes.
func (p *Platform) install(fn *ebb.Function, codeDir string, d *deployment, tr ebb.Traffic) {
	v := p.newVersion(fn, codeDir)
	if d != nil {
		d.ver = v
		v.dep.Store(d)
	}
	p.mu.Lock()
	f := p.fns[fn.Spec.Name]
	if f == nil {
		f = &function{name: fn.Spec.Name, versions: map[int]*version{}}
		p.fns[fn.Spec.Name] = f
	}
	f.versions[fn.Version] = v
	if f.latest == nil || fn.Version > f.latest.fn.Version {
		f.latest = v
		f.limiter = newLimiter(&fn.Spec)
	}
	f.traffic = tr
	f.compile()
	p.mu.Unlock()
	p.syncPools(f)
}

// deployTraffic is where a new version's traffic goes: all of it (a plain
// deploy), a share (canary), or none. A function's first version takes all
// of it whatever was asked: there is nothing else to serve.
func deployTraffic(t *ebb.Traffic, f *function, v int, opt api.DeployOptions) {
	route := t.Route
	if len(route) == 0 && f != nil && f.latest != nil {
		route = ebb.Split{{Version: f.latest.fn.Version, Percent: 100}}
	}
	switch {
	case len(route) == 0:
		t.SetRoute(ebb.Split{{Version: v, Percent: 100}})
	case opt.NoTraffic:
		t.Route = route
	case opt.Canary != nil:
		t.SetRoute(route.Canary(v, *opt.Canary))
	default:
		t.SetRoute(ebb.Split{{Version: v, Percent: 100}})
	}
}

// sameRuntime refuses a split whose versions differ in runtime: the edge
// treats a request by its function's runtime (an http function's request is
// proxied, an exec function's is an event) before it picks a version.
func sameRuntime(f *function, s ebb.Split) error {
	var first *ebb.Function
	for _, w := range s {
		v := f.versions[w.Version]
		if v == nil {
			continue
		}
		if first == nil {
			first = v.fn
			continue
		}
		if v.fn.Spec.Runtime != first.Spec.Runtime {
			return &api.BadRequest{Err: fmt.Errorf("versions %d (%s) and %d (%s) cannot share traffic: their runtimes differ",
				first.Version, first.Spec.Runtime, v.fn.Version, v.fn.Spec.Runtime)}
		}
	}
	return nil
}

// changeTraffic applies change to name's routes, in the store and then here.
func (p *Platform) changeTraffic(ctx context.Context, name string, change func(f *function, t *ebb.Traffic) error) (*api.Versions, error) {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	p.mu.RLock()
	f := p.fns[name]
	p.mu.RUnlock()
	if f == nil {
		return nil, ebb.ErrNotFound
	}
	tr, err := p.store.UpdateTraffic(ctx, name, func(t *ebb.Traffic) error {
		if len(t.Route) == 0 {
			t.Route = ebb.Split{{Version: f.latest.fn.Version, Percent: 100}}
		}
		if err := change(f, t); err != nil {
			return err
		}
		if err := sameRuntime(f, t.Route); err != nil {
			return err
		}
		if t.Shadow != nil && len(t.Route) > 0 {
			if err := sameRuntime(f, ebb.Split{t.Route[0], {Version: t.Shadow.Version}}); err != nil {
				return err
			}
		}
		for _, a := range t.Aliases {
			if err := sameRuntime(f, a.Split); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	f.traffic = tr
	f.compile()
	p.mu.Unlock()
	p.syncPools(f)
	return p.Versions(ctx, name)
}

// with returns a copy of f's versions with fn among them, for checks.
func (f *function) with(fn *ebb.Function) *function {
	probe := &function{name: f.name, versions: map[int]*version{fn.Version: {fn: fn}}}
	for n, v := range f.versions {
		probe.versions[n] = v
	}
	return probe
}

// exists says whether f keeps version n (for Split.Validate).
func (f *function) exists(n int) bool { return f.versions[n] != nil }

func badSplit(err error) error { return &api.BadRequest{Err: err} }

// SetRoute implements api.Platform: explicit shares of unqualified traffic.
func (p *Platform) SetRoute(ctx context.Context, name string, s ebb.Split) (*api.Versions, error) {
	return p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		s, err := s.Validate(f.exists)
		if err != nil {
			return badSplit(err)
		}
		t.SetRoute(s)
		return nil
	})
}

// Promote implements api.Platform: all unqualified traffic to the newest
// version.
func (p *Platform) Promote(ctx context.Context, name string) (*api.Versions, error) {
	return p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		t.SetRoute(ebb.Split{{Version: f.latest.fn.Version, Percent: 100}})
		return nil
	})
}

// Rollback implements api.Platform: all unqualified traffic back to the
// version that had all of it before.
func (p *Platform) Rollback(ctx context.Context, name string) (*api.Versions, error) {
	return p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		if t.Rollback == 0 {
			return &api.Conflict{Err: fmt.Errorf("function %q has no earlier route to roll back to", name)}
		}
		if !f.exists(t.Rollback) {
			return &api.Conflict{Err: fmt.Errorf("version %d, which had the traffic before, was removed", t.Rollback)}
		}
		t.SetRoute(ebb.Split{{Version: t.Rollback, Percent: 100}})
		return nil
	})
}

// SetAlias implements api.Platform: alias → s (made or changed).
func (p *Platform) SetAlias(ctx context.Context, name, alias string, s ebb.Split) (*api.Versions, error) {
	if err := ebb.ValidAlias(alias); err != nil {
		return nil, err
	}
	return p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		s, err := s.Validate(f.exists)
		if err != nil {
			return badSplit(err)
		}
		if a := t.Alias(alias); a != nil {
			a.Split = s
			return nil
		}
		if len(t.Aliases) >= maxAliases {
			return badSplit(fmt.Errorf("function %q has %d aliases, the most it may have", name, maxAliases))
		}
		t.Aliases = append(t.Aliases, ebb.Alias{Name: alias, Split: s})
		slices.SortFunc(t.Aliases, func(a, b ebb.Alias) int {
			if a.Name < b.Name {
				return -1
			}
			return 1
		})
		return nil
	})
}

// maxAliases bounds a function's aliases.
const maxAliases = 100

// RemoveAlias implements api.Platform.
func (p *Platform) RemoveAlias(ctx context.Context, name, alias string) (*api.Versions, error) {
	return p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		i := slices.IndexFunc(t.Aliases, func(a ebb.Alias) bool { return a.Name == alias })
		if i < 0 {
			return &ebb.NotFoundError{Message: fmt.Sprintf("function %q has no alias %q", name, alias)}
		}
		t.Aliases = slices.Delete(t.Aliases, i, i+1)
		return nil
	})
}

// SetShadow implements api.Platform: mirror a share of unqualified requests
// to version sc.Version, comparing its answers with the primary's.
func (p *Platform) SetShadow(ctx context.Context, name string, sc ebb.Shadow) (*shadow.Report, error) {
	_, err := p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		if err := sc.Validate(f.exists); err != nil {
			return badSplit(err)
		}
		t.Shadow = &sc
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p.ShadowReport(ctx, name)
}

// StopShadow implements api.Platform; the run's report stays readable.
func (p *Platform) StopShadow(ctx context.Context, name string) (*shadow.Report, error) {
	_, err := p.changeTraffic(ctx, name, func(f *function, t *ebb.Traffic) error {
		if t.Shadow == nil {
			return &ebb.NotFoundError{Message: fmt.Sprintf("function %q has no shadow run", name)}
		}
		t.Shadow = nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p.ShadowReport(ctx, name)
}

// ShadowReport implements api.Platform: the run under way, or the last one.
func (p *Platform) ShadowReport(ctx context.Context, name string) (*shadow.Report, error) {
	p.mu.RLock()
	f := p.fns[name]
	var run *shadow.Run
	active := false
	if f != nil {
		run, active = f.shadow, f.shadow != nil
		if run == nil {
			run = f.lastShadow
		}
	}
	p.mu.RUnlock()
	switch {
	case f == nil:
		return nil, ebb.ErrNotFound
	case run == nil:
		return nil, &ebb.NotFoundError{Message: fmt.Sprintf("function %q has had no shadow run since ebb started", name)}
	}
	rep := run.Report(active)
	rep.OutputPSI = p.shadowPSI(f, run)
	return &rep, nil
}

// mirror sends a copy of a request that primary answered with answer (in
// took) to the shadow run's version, when the run picks it, and compares
// the two answers. It returns at once: the shadow runs on its own, and its
// answer, latency and failures never reach the caller.
func (p *Platform) mirror(run *shadow.Run, name string, primary *deployment, requestID string, payload, answer []byte, took time.Duration) {
	cfg := run.Config()
	if primary.fn.Version == cfg.Version || !run.Pick(rand.Uint32()) || !run.Begin() {
		return
	}
	answer = slices.Clone(answer)
	go func() {
		defer run.End()
		t := gateway.Target{Name: name, Qualifier: strconv.Itoa(cfg.Version)}
		start := time.Now()
		res, err := p.Invoke(ebb.WithTrigger(p.ctx, ebb.TriggerShadow), t, gateway.NewRequestID(), payload)
		var body []byte
		if res != nil {
			body = res.Body
		}
		if p.ctx.Err() != nil {
			return // ebb is stopping: not the shadow's failure
		}
		run.Record(requestID, answer, took, body, time.Since(start), err)
	}()
}

// RemoveVersion implements api.Platform: version n goes, unless a route or
// an alias still sends it traffic, or it is the function's only version.
func (p *Platform) RemoveVersion(ctx context.Context, name string, n int) error {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	p.mu.RLock()
	f := p.fns[name]
	var v *version
	var uses string
	var others []*version
	if f != nil {
		v = f.versions[n]
		uses = f.traffic.Uses(n)
		if len(f.traffic.Route) == 0 && f.latest == v {
			uses = "the function's route (100%)"
		}
		for _, o := range f.versions {
			if o != v {
				others = append(others, o)
			}
		}
	}
	p.mu.RUnlock()
	switch {
	case f == nil:
		return ebb.ErrNotFound
	case v == nil:
		return &ebb.NotFoundError{Message: fmt.Sprintf("function %q has no version %d", name, n)}
	case uses != "":
		return &api.Conflict{Err: fmt.Errorf("version %d of %q takes traffic from %s; route it elsewhere first", n, name, uses)}
	case len(others) == 0:
		return &api.Conflict{Err: fmt.Errorf("version %d is the only version of %q; remove the function instead (ebb rm %s)", n, name, name)}
	}
	// The registry entry is the newest version: removing that one makes
	// the one before it the newest.
	if f.latest == v {
		newest := slices.MaxFunc(others, func(a, b *version) int { return a.fn.Version - b.fn.Version })
		if err := p.store.PutFunction(ctx, newest.fn); err != nil {
			return fmt.Errorf("update registry: %w", err)
		}
	}
	if err := p.store.DeleteVersion(ctx, name, n); err != nil {
		return err
	}
	p.mu.Lock()
	delete(f.versions, n)
	if f.latest == v {
		f.latest = f.newest()
		f.limiter = newLimiter(&f.latest.fn.Spec)
	}
	f.compile()
	p.mu.Unlock()
	p.retireVersions(name, []*version{v})
	return nil
}

// newest is f's newest kept version.
func (f *function) newest() *version {
	var latest *version
	for _, v := range f.versions {
		if latest == nil || v.fn.Version > latest.fn.Version {
			latest = v
		}
	}
	return latest
}

// retireVersions ends versions vs of name, removed from their function
// already: their pools drain, their series go, and their code goes with
// the next collection.
func (p *Platform) retireVersions(name string, vs []*version) {
	for _, v := range vs {
		p.retire(v, true)
		p.metrics.ForgetVersion(name, v.fn.Version)
	}
	if len(vs) > 0 {
		p.collectSoon()
	}
}

// Versions implements api.Platform: name's kept versions and routes.
func (p *Platform) Versions(ctx context.Context, name string) (*api.Versions, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	f := p.fns[name]
	if f == nil {
		return nil, ebb.ErrNotFound
	}
	out := &api.Versions{Name: name, Latest: f.latest.fn.Version, Route: f.traffic.Route, Rollback: f.traffic.Rollback,
		Aliases: slices.Clone(f.traffic.Aliases), Versions: []api.VersionInfo{}, Shadow: f.traffic.Shadow}
	if len(out.Route) == 0 {
		out.Route = ebb.Split{{Version: f.latest.fn.Version, Percent: 100}}
	}
	if out.Aliases == nil {
		out.Aliases = []ebb.Alias{}
	}
	nums := make([]int, 0, len(f.versions))
	for n := range f.versions {
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for _, n := range nums {
		v := f.versions[n]
		vi := api.VersionInfo{Version: n, Runtime: v.fn.Spec.Runtime, Digest: v.fn.Digest, Size: v.fn.Size, DeployedAt: v.fn.CreatedAt,
			Aliases: []string{}, Active: v.dep.Load() != nil}
		for _, w := range out.Route {
			if w.Version == n {
				vi.Percent = w.Percent
			}
		}
		for _, a := range f.traffic.Aliases {
			if a.Split.Has(n) {
				vi.Aliases = append(vi.Aliases, a.Name)
			}
		}
		v.stats.fill(&vi)
		out.Versions = append(out.Versions, vi)
	}
	return out, nil
}

func (s *versionStats) fill(vi *api.VersionInfo) {
	vi.Invocations, vi.Errors, vi.ColdStarts = s.invocations.Load(), s.errors.Load(), s.coldStarts.Load()
	vi.P50MS, vi.P99MS = s.latency.QuantileMS(0.5), s.latency.QuantileMS(0.99)
}

// record counts one request to the version: an invocation when it was
// admitted (ran), an error whether or not it was.
func (s *versionStats) record(dur time.Duration, admitted, cold, failed bool) {
	if failed {
		s.errors.Add(1)
	}
	if s.series != nil {
		s.series.Record(dur, admitted, cold, failed)
	}
	if !admitted {
		return
	}
	s.invocations.Add(1)
	if cold {
		s.coldStarts.Add(1)
	}
	s.latency.Observe(dur)
}

// restoreFunction brings back name's kept versions and routes; fn is its
// registry entry (the newest version). A registry written before versions
// were kept has no version records: its entry becomes version record one.
func (p *Platform) restoreFunction(ctx context.Context, fn *ebb.Function) error {
	name := fn.Spec.Name
	vs, err := p.store.ListVersions(ctx, name)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(vs, func(v *ebb.Function) bool { return v.Version == fn.Version }) {
		if err := p.store.PutVersion(ctx, fn); err != nil {
			return fmt.Errorf("keep version %d: %w", fn.Version, err)
		}
		vs = append(vs, fn)
	}
	tr, err := p.store.GetTraffic(ctx, name)
	if err != nil {
		return err
	}
	f := &function{name: name, versions: map[int]*version{}, traffic: tr}
	for _, vf := range vs {
		codeDir, err := p.ensureBundle(ctx, vf.Digest)
		if err != nil {
			// One broken version must not keep the others down.
			p.log.Error("restore version", "function", name, "version", vf.Version, "err", err)
			continue
		}
		p.internModel(vf, codeDir)
		v := p.newVersion(vf, codeDir)
		f.versions[vf.Version] = v
		if f.latest == nil || vf.Version > f.latest.fn.Version {
			f.latest = v
		}
	}
	if f.latest == nil {
		return errors.New("no version could be restored")
	}
	f.limiter = newLimiter(&f.latest.fn.Spec)
	f.compile()
	p.mu.Lock()
	p.fns[name] = f
	p.mu.Unlock()
	p.syncPools(f)
	return nil
}

package platform

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/manifest"
)

// Deploy deploys a version that takes all of the function's traffic.
func (p *Platform) Deploy(ctx context.Context, name string, body io.Reader) (*ebb.Function, error) {
	return p.DeployVersion(ctx, name, body, api.DeployOptions{})
}

// DeployVersion implements api.Platform: it validates the bundle and its
// manifest, stores both as a new immutable version, and routes traffic to
// it as opt says (all of it by default). A version that loses its traffic
// drains: its in-flight requests finish, new ones go to the new route.
func (p *Platform) DeployVersion(ctx context.Context, name string, body io.Reader, opt api.DeployOptions) (*ebb.Function, error) {
	if opt.Canary != nil && (*opt.Canary < 0 || *opt.Canary > 100) {
		return nil, &api.BadRequest{Err: fmt.Errorf("canary share %d%% is not 0 to 100", *opt.Canary)}
	}
	// Spool to disk while hashing: the bundle is read three times (manifest,
	// unpack, store) and may be large.
	f, err := os.CreateTemp(filepath.Join(p.cfg.DataDir, "tmp"), "upload-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("spool bundle: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), body)
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if size == 0 {
		return nil, &api.BadRequest{Err: errors.New("the bundle is empty; send a tar.gz of the function directory")}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind bundle: %w", err)
	}
	raw, err := bundle.ReadFile(f, manifest.FileName, manifest.MaxSize)
	if err != nil {
		return nil, &api.BadRequest{Err: err}
	}
	spec, err := manifest.Parse(raw)
	if err != nil {
		return nil, &api.BadRequest{Err: err}
	}
	if spec.Name != name {
		return nil, &api.BadRequest{Err: fmt.Errorf("%s: name: %q does not match the URL's function name %q", manifest.FileName, spec.Name, name)}
	}
	if err := p.checkDestinations(ctx, spec); err != nil {
		return nil, err
	}
	// From here the digest is pinned: the collector leaves its directory
	// and stored object alone until this deploy has swapped in or failed.
	p.pin(digest)
	defer p.unpin(digest)
	committed := false
	defer func() {
		if !committed {
			p.dropUnused(digest)
		}
	}()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind bundle: %w", err)
	}
	codeDir, err := p.unpack(f, digest, func(dir string) error { return checkEntrypoint(spec, dir) })
	if err != nil {
		return nil, err
	}
	if spec.Runtime == ebb.RuntimePython {
		p.compilePython(ctx, spec, codeDir)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind bundle: %w", err)
	}
	if err := p.store.PutBundle(ctx, digest, f); err != nil {
		return nil, fmt.Errorf("store bundle: %w", err)
	}

	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	version, err := p.store.NextVersion(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("allocate version: %w", err)
	}
	fn := &ebb.Function{Spec: *spec, Version: version, Digest: digest, Size: size, CreatedAt: p.cfg.Now().UTC()}
	p.mu.RLock()
	cur := p.fns[name]
	p.mu.RUnlock()
	// The new version's traffic, worked out on the routes as stored.
	var tr ebb.Traffic
	var trErr error
	change := func(t *ebb.Traffic) error {
		deployTraffic(t, cur, version, opt)
		if cur != nil {
			// The runtime check needs the new version among the others.
			return sameRuntime(cur.with(fn), t.Route)
		}
		return nil
	}
	if cur != nil {
		// Checked before anything is stored, so that a refused canary
		// leaves no version behind.
		t, err := p.store.GetTraffic(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := change(&t); err != nil {
			return nil, err
		}
	}
	// A version that takes traffic gets its pool now, so that a bundle
	// that cannot start is refused before it is stored.
	p.internModel(fn, codeDir)
	var d *deployment
	if cur == nil || !opt.NoTraffic && (opt.Canary == nil || *opt.Canary > 0) {
		if d, err = p.newDeployment(fn, codeDir); err != nil {
			return nil, err
		}
	}
	closeNew := func() {
		if d != nil {
			d.pool.Close(ctx)
			d.starter.Close()
		}
	}
	if err := p.store.PutVersion(ctx, fn); err != nil {
		closeNew()
		return nil, fmt.Errorf("keep version: %w", err)
	}
	if tr, trErr = p.store.UpdateTraffic(ctx, name, change); trErr != nil {
		closeNew()
		_ = p.store.DeleteVersion(ctx, name, version)
		return nil, trErr
	}
	if err := p.store.PutFunction(ctx, fn); err != nil {
		closeNew()
		return nil, fmt.Errorf("store function: %w", err)
	}
	committed = true
	p.install(fn, codeDir, d, tr)
	return fn, nil
}

// drain lets an old version finish in the background.
func (p *Platform) drain(d *deployment) {
	p.mu.Lock()
	p.draining[d] = struct{}{}
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.DrainTimeout)
		defer cancel()
		if d.keeper != nil {
			d.keeper.Remove()
		}
		if err := d.pool.Drain(ctx); err != nil {
			p.log.Warn("drain old version", "function", d.fn.Spec.Name, "version", d.fn.Version, "err", err)
		}
		d.starter.Close()
		d.prewarmHold.Close()
		p.mu.Lock()
		delete(p.draining, d)
		p.mu.Unlock()
		p.releaseUIDIfGone(d.fn.Spec.Name)
		p.collect(p.ctx)
	}()
}

// unpack makes the bundle's directory, DATA/bundles/DIGEST, cached by
// content hash. A bundle is unpacked into a staging directory under
// DATA/tmp, checked there by check (when not nil), and only then renamed
// into place: a refused or failed unpack leaves nothing behind. A directory
// already in place is checked as it is.
func (p *Platform) unpack(r io.Reader, digest string, check func(dir string) error) (string, error) {
	dir := filepath.Join(p.cfg.DataDir, "bundles", digest)
	if _, err := os.Stat(dir); err == nil {
		if check != nil {
			if err := check(dir); err != nil {
				return "", &api.BadRequest{Err: err}
			}
		}
		return dir, nil
	}
	stage, err := os.MkdirTemp(filepath.Join(p.cfg.DataDir, "tmp"), "stage-*")
	if err != nil {
		return "", fmt.Errorf("make staging dir: %w", err)
	}
	defer os.RemoveAll(stage)
	code := filepath.Join(stage, "code")
	if err := bundle.Unpack(r, code, bundle.Limits{MaxBytes: p.cfg.MaxUnpackedBytes}); err != nil {
		switch {
		case errors.Is(err, bundle.ErrTooLarge):
			return "", fmt.Errorf("%w: %w", ebb.ErrPayloadTooLarge, err)
		case errors.Is(err, bundle.ErrInvalid):
			return "", &api.BadRequest{Err: err}
		}
		return "", fmt.Errorf("unpack bundle: %w", err)
	}
	if check != nil {
		if err := check(code); err != nil {
			return "", &api.BadRequest{Err: err}
		}
	}
	if err := os.Rename(code, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return dir, nil // another deploy of the same content got there first
		}
		return "", fmt.Errorf("commit bundle dir: %w", err)
	}
	return dir, nil
}

// ensureBundle returns the local directory of a stored bundle, fetching it
// from the store when the local cache does not have it (a new node, a wiped
// cache).
func (p *Platform) ensureBundle(ctx context.Context, digest string) (string, error) {
	dir := filepath.Join(p.cfg.DataDir, "bundles", digest)
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	f, err := os.CreateTemp(filepath.Join(p.cfg.DataDir, "tmp"), "fetch-*.tar.gz")
	if err != nil {
		return "", fmt.Errorf("spool bundle: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := p.store.GetBundle(ctx, digest, f); err != nil {
		return "", fmt.Errorf("fetch bundle %s: %w", digest, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	return p.unpack(f, digest, nil)
}

// checkDestinations refuses a spec whose async destinations lead back to the
// function through other functions' destinations (a → b → a): each outcome
// would make another job without end. The registry is read as it is now; the
// hop count that jobs carry (queue.MaxHops) stops what a race with another
// deploy lets through.
func (p *Platform) checkDestinations(ctx context.Context, spec *ebb.Spec) error {
	if spec.Async == nil || (spec.Async.OnSuccess == "" && spec.Async.OnFailure == "") {
		return nil
	}
	fns, err := p.store.ListFunctions(ctx)
	if err != nil {
		return fmt.Errorf("check async destinations: %w", err)
	}
	next := map[string][]string{}
	for _, fn := range fns {
		next[fn.Spec.Name] = functionDestinations(&fn.Spec)
	}
	next[spec.Name] = functionDestinations(spec)
	for _, field := range []struct{ name, target string }{{"on_success", spec.Async.OnSuccess}, {"on_failure", spec.Async.OnFailure}} {
		if field.target == "" || ebb.IsWebhook(field.target) {
			continue
		}
		if path := pathTo(next, field.target, spec.Name); path != nil {
			return &api.BadRequest{Err: fmt.Errorf("%s: async.%s: %s leads back to %s (%s), a loop of jobs without end",
				manifest.FileName, field.name, field.target, spec.Name, strings.Join(append([]string{spec.Name}, path...), " → "))}
		}
	}
	return nil
}

// functionDestinations returns the functions that s's outcomes go to.
func functionDestinations(s *ebb.Spec) []string {
	if s.Async == nil {
		return nil
	}
	var out []string
	for _, d := range []string{s.Async.OnSuccess, s.Async.OnFailure} {
		if d != "" && !ebb.IsWebhook(d) {
			out = append(out, d)
		}
	}
	return out
}

// pathTo returns a path of destinations from `from` to `to` (both included),
// or nil if there is none.
func pathTo(next map[string][]string, from, to string) []string {
	seen := map[string]bool{}
	var walk func(n string) []string
	walk = func(n string) []string {
		if n == to {
			return []string{n}
		}
		if seen[n] {
			return nil
		}
		seen[n] = true
		for _, m := range next[n] {
			if rest := walk(m); rest != nil {
				return append([]string{n}, rest...)
			}
		}
		return nil
	}
	return walk(from)
}

// checkEntrypoint refuses at deploy what could only fail at every cold start.
func checkEntrypoint(spec *ebb.Spec, codeDir string) error {
	switch spec.Runtime {
	case ebb.RuntimeExec, ebb.RuntimeHTTP:
		args := strings.Fields(spec.Handler)
		if _, err := instance.ResolveCommand(codeDir, args[0]); err != nil {
			var ie *ebb.InitError
			if errors.As(err, &ie) {
				return fmt.Errorf("%s: handler: %s", manifest.FileName, ie.Message)
			}
			return err
		}
	case ebb.RuntimePython:
		mod := spec.Handler[:strings.LastIndexByte(spec.Handler, '.')]
		rel := strings.ReplaceAll(mod, ".", "/")
		for _, c := range []string{rel + ".py", rel + "/__init__.py", rel} {
			if _, err := os.Stat(filepath.Join(codeDir, c)); err == nil {
				return nil
			}
		}
		return fmt.Errorf("%s: handler: module %q is not in the bundle (looked for %s.py)", manifest.FileName, mod, rel)
	case ebb.RuntimeONNX:
		// The model is read by ebb's own process, outside any sandbox: it
		// must be a regular file inside the bundle, whatever links lead to it.
		real, err := bundle.Resolve(codeDir, spec.Handler)
		if err != nil {
			return fmt.Errorf("%s: handler: model file %q is not in the bundle", manifest.FileName, spec.Handler)
		}
		if fi, err := os.Lstat(real); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: handler: model file %q is not a regular file in the bundle", manifest.FileName, spec.Handler)
		}
	}
	return nil
}

// compilePython writes the bundle's bytecode once, so that no instance pays
// for compiling at start. Errors are the function's (a syntax error shows at
// init, as in Lambda), so they are only logged.
func (p *Platform) compilePython(ctx context.Context, spec *ebb.Spec, codeDir string) {
	py := spec.Python
	if py == "" {
		py = p.instCfg.Python
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-m", "compileall", "-q", "-j", "0", codeDir).CombinedOutput()
	if err != nil {
		p.log.Info("python bytecode compile reported errors", "function", spec.Name, "err", err, "output", string(out))
	}
}

// List implements api.Platform.
func (p *Platform) List(ctx context.Context) ([]api.FunctionStatus, error) {
	p.mu.RLock()
	names := make([]string, 0, len(p.fns))
	for n := range p.fns {
		names = append(names, n)
	}
	p.mu.RUnlock()
	sort.Strings(names)
	out := make([]api.FunctionStatus, 0, len(names))
	for _, n := range names {
		st, err := p.Status(ctx, n)
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, *st)
	}
	return out, nil
}

// Status implements api.Platform: the newest version's spec, the routes,
// every version's counters, and the instances of every version's pool.
func (p *Platform) Status(ctx context.Context, name string) (*api.FunctionStatus, error) {
	vs, err := p.Versions(ctx, name)
	if err != nil {
		return nil, err
	}
	p.mu.RLock()
	f := p.fns[name]
	if f == nil {
		p.mu.RUnlock()
		return nil, ebb.ErrNotFound
	}
	fn := f.latest.fn
	var deps []*deployment
	for _, v := range f.versions {
		if d := v.dep.Load(); d != nil {
			deps = append(deps, d)
		}
	}
	p.mu.RUnlock()
	slices.SortFunc(deps, func(a, b *deployment) int { return b.fn.Version - a.fn.Version })
	st := &api.FunctionStatus{Name: name, Version: fn.Version, Runtime: fn.Spec.Runtime, Digest: fn.Digest, Size: fn.Size,
		DeployedAt: fn.CreatedAt, URL: p.cfg.BaseURL + "/v1/functions/" + name + "/invoke", FunctionURL: p.cfg.BaseURL + "/fn/" + name + "/",
		Spec: api.SpecOf(&fn.Spec), Instances: []api.InstanceStatus{}, Route: vs.Route, Aliases: vs.Aliases, Versions: vs.Versions}
	for _, vi := range vs.Versions {
		st.Invocations += vi.Invocations
		st.ColdStarts += vi.ColdStarts
		st.Errors += vi.Errors
	}
	for i, d := range deps {
		ps := d.pool.Stats()
		st.Waiting += ps.Waiting
		for _, in := range ps.Instances {
			st.InFlight += in.InFlight
			st.Instances = append(st.Instances, api.InstanceStatus{ID: in.ID, Version: d.fn.Version, Phase: string(in.Phase),
				InFlight: in.InFlight, StartedAt: in.StartedAt, LastUsed: in.LastUsed, Requests: in.Leases, Pid: instancePid(d, in.ID)})
		}
		if i > 0 {
			continue
		}
		// The newest pool's processes speak for the function.
		st.Zygote = zygoteStatus(d)
		if sb := d.starter.Sandbox(); sb != nil {
			st.Sandbox.UID, st.Sandbox.Network, st.Sandbox.PastaPID = sb.UID, sb.Network, sb.PastaPID
		}
		if sp := d.starter.Spare(); sp != nil {
			st.Spare = &api.SpareStatus{PID: sp.Pid, Since: sp.Since, RSS: sp.RSS, PSS: sp.PSS}
		}
		st.Warm = warmStatus(d.starter.Warm())
		st.KeepAlive = p.keepAliveStatus(d, ps)
	}
	st.Sandbox.Mode = p.SandboxMode()
	p.mu.RLock()
	for od := range p.draining {
		if od.fn.Spec.Name == name {
			st.Draining = append(st.Draining, od.fn.Version)
			for _, in := range od.pool.Stats().Instances {
				st.Instances = append(st.Instances, api.InstanceStatus{ID: in.ID, Version: od.fn.Version, Phase: string(in.Phase),
					InFlight: in.InFlight, StartedAt: in.StartedAt, LastUsed: in.LastUsed, Requests: in.Leases, Pid: instancePid(od, in.ID)})
			}
		}
	}
	p.mu.RUnlock()
	sort.Ints(st.Draining)
	st.Draining = slices.Compact(st.Draining)
	return st, nil
}

// instancePid is the host pid of instance id's function process (under a
// sandbox, not bwrap's), 0 while it starts or once gone.
func instancePid(d *deployment, id string) int {
	if in, ok := d.pool.Instance(id); ok && in != nil {
		return in.FunctionPid()
	}
	return 0
}

// Remove implements api.Platform: the function stops taking requests, the
// instances of every version stop, and it is deleted from the registry with
// its versions and routes.
func (p *Platform) Remove(ctx context.Context, name string) error {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	p.mu.Lock()
	f := p.fns[name]
	delete(p.fns, name)
	p.mu.Unlock()
	if f == nil {
		return ebb.ErrNotFound
	}
	if err := p.store.DeleteFunction(ctx, name); err != nil && !errors.Is(err, ebb.ErrNotFound) {
		return fmt.Errorf("delete function: %w", err)
	}
	if err := p.store.DeleteVersions(ctx, name); err != nil {
		return fmt.Errorf("delete versions: %w", err)
	}
	p.forgetFunction(name, f)
	return nil
}

// forgetFunction retires every version of a function already out of the
// registry and drops what the node kept of it: its series, summaries, logs,
// usage sweeps and uid. Removal here and a removal followed from another
// node (cluster.go) end the same way.
func (p *Platform) forgetFunction(name string, f *function) {
	for _, v := range f.versions {
		p.retire(v, true)
	}
	p.metrics.Forget(name)
	p.keepStats.Forget(name)
	p.mon.Forget(name)
	p.logs.Forget(name)
	p.usage.Forget(name)
	p.releaseUIDIfGone(name)
	p.collectSoon()
}

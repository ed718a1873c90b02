// Package platform assembles ebb: the store, the process manager, one
// dispatch pool per deployed function version, the gateway, the management
// API, auth and metrics. It is the composition root that `ebb serve` and the
// end-to-end tests share, and it implements what the gateway and the API call
// (invoking, proxying, deploying) on top of the packages that own each job.
package platform

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/h1"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/keepalive"
	"github.com/ebb-run/ebb/internal/keepalive/live"
	"github.com/ebb-run/ebb/internal/logbuf"
	"github.com/ebb-run/ebb/internal/metrics"
	"github.com/ebb-run/ebb/internal/monitor"
	"github.com/ebb-run/ebb/internal/onnx"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/route"
	"github.com/ebb-run/ebb/internal/sandbox"
	"github.com/ebb-run/ebb/internal/store"
	"github.com/ebb-run/ebb/internal/usage"
)

// Config configures a platform.
type Config struct {
	DataDir string // required: JetStream, bundles, instance dirs
	NATSURL string // external NATS; empty = embedded
	// NATSReplicas is the replication factor of the buckets and streams
	// made on a NATS cluster, external or of embedded servers (1 to 5);
	// default 1.
	NATSReplicas int
	// ClusterRoutes, ClusterListen and ClusterName, without NATSURL, make
	// the embedded NATS server join those of other nodes in one JetStream
	// cluster (see store.Config), under the name Node; NATSReplicas may
	// then be more than 1.
	ClusterRoutes              []string
	ClusterListen, ClusterName string
	// Node names this node among the nodes sharing NATS (a KV key:
	// cluster.ValidName); default "local". Version is ebb's, for its
	// heartbeat.
	Node, Version string
	// RequireAuth makes every request but /healthz (and public function
	// URLs) carry an API key. main sets it whenever ebb listens beyond
	// loopback.
	RequireAuth bool
	// LoopbackHosts admits requests whose Host is a loopback name or
	// address (main sets it when ebb listens on loopback); AllowedHosts
	// admits more. Other hosts get 421, which defeats DNS rebinding. With
	// neither, any Host is admitted.
	LoopbackHosts bool
	AllowedHosts  []string
	// CORSOrigins are the browser origins ebb answers CORS for; none by
	// default.
	CORSOrigins []string
	// AuditRetention is how long audit records are kept; default 90 days.
	AuditRetention time.Duration
	MaxSyncPayload int64 // default 6 MiB
	MaxBundleBytes int64 // default 1 GiB
	// MaxUnpackedBytes bounds a bundle's unpacked size; default 2 GiB.
	MaxUnpackedBytes int64
	// GCGrace is how old an unreferenced stored bundle must be before the
	// collector deletes it (another node may be between storing a bundle
	// and registering its version); default 15 min.
	GCGrace     time.Duration
	BaseURL     string
	Python      string // default python for python functions
	Executable  string // the ebb binary, for onnx instances
	ONNXLibrary string
	CgroupMode  string // auto, v1, v2, none
	// InstanceDir holds each instance's working and scratch directories;
	// default DataDir/instances. A tmpfs here makes starts faster (directory
	// creation and removal are on every cold start's path).
	InstanceDir string
	LogLines    int // lines of output kept per function; default 10,000
	// LogBufferBytes bounds the output kept per function; default 8 MiB.
	LogBufferBytes int64
	// DrainTimeout bounds how long an old version may finish its requests
	// after a redeploy or removal (default 15 min, the longest timeout).
	DrainTimeout time.Duration
	// ZygoteKeepAlive is how long an unused python zygote or onnx spare
	// process stays (default 3 × the function's idle_timeout, at least 1m).
	ZygoteKeepAlive time.Duration
	// WarmMemory is the node's budget for warm capacity in bytes: what
	// python zygotes (with their spare child), onnx spare processes and
	// spare sandboxes may hold ahead of need, together, by PSS; 0 means
	// instance.MinWarmMemory, negative none.
	WarmMemory int64
	// WarmMax caps the holders of warm capacity; 0 means
	// instance.DefaultWarmMax, negative none.
	WarmMax int
	// KeepAlive is the keep-alive of functions whose manifest gives none
	// (neither keep_alive nor idle_timeout): "" keeps each at its
	// idle_timeout (the default), ebb.KeepAliveAdaptive runs Adaptive on
	// its traffic, "fixed:D" keeps each warm D after a call.
	KeepAlive string
	// Adaptive is the policy that keep_alive: adaptive runs; nil means
	// keepalive.DefaultHybrid().
	Adaptive keepalive.Policy
	// Sandbox confines every function process (sandbox.Config; its Mode
	// defaults to auto, its ViewDir to one derived from DataDir).
	Sandbox sandbox.Config
	// Async tunes asynchronous invocations, schedules and events.
	Async AsyncOptions
	// HTTP bounds what clients can hold of the edge: read, write and
	// keep-alive timeouts, the connection limit (see h1.Config).
	HTTP   h1.Config
	Logger *slog.Logger
	// InvocationLog, when set, receives the log lines of warm successful
	// invocations directly (the same JSON shape as Logger's lines, written
	// without slog's per-line cost); it should be Logger's own writer.
	InvocationLog io.Writer
	// UsageRetention is how long invocation records are kept; default 90
	// days (minute rollups are kept at least 396 days).
	UsageRetention time.Duration
	// NodeMemoryMiB and NodeCPUs describe the machine, for cost reports;
	// 0 leaves them unknown.
	NodeMemoryMiB int64
	NodeCPUs      int
	// NodeCostPerHour is what the machine costs an hour (USD), to price
	// its share in GET /v1/functions/{name}/cost; 0 leaves it out.
	NodeCostPerHour float64
	// IdleSampleEvery is how often idle warm capacity is measured for the
	// usage record; default 10s.
	IdleSampleEvery time.Duration
	// TracerProvider, when set, makes a span of every invocation (see
	// trace.go); nil records none, at no cost, while a caller's W3C trace
	// context still reaches the function. Close shuts it down (flushing
	// what it holds) when it has a Shutdown(context.Context) error method,
	// as the SDK's has.
	TracerProvider trace.TracerProvider
	// Now is injected for tests of time-dependent behaviour.
	Now func() time.Time
	// Monitor sizes the input and prediction summaries (monitor.Config).
	Monitor monitor.Config
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("platform config: DataDir is required")
	}
	if c.MaxSyncPayload <= 0 {
		c.MaxSyncPayload = 6 << 20
	}
	if c.MaxBundleBytes <= 0 {
		c.MaxBundleBytes = 1 << 30
	}
	if c.MaxUnpackedBytes <= 0 {
		c.MaxUnpackedBytes = 2 << 30
	}
	if c.GCGrace <= 0 {
		c.GCGrace = 15 * time.Minute
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = ebb.MaxTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.CgroupMode == "" {
		c.CgroupMode = "auto"
	}
	if c.IdleSampleEvery <= 0 {
		c.IdleSampleEvery = 10 * time.Second
	}
	if c.KeepAlive != "" {
		ka, _, err := ebb.ParseKeepAlive(c.KeepAlive)
		if err != nil {
			return fmt.Errorf("platform config: keep-alive %w", err)
		}
		c.KeepAlive = ka
	}
	if c.Adaptive == nil {
		c.Adaptive = keepalive.DefaultHybrid()
	}
	if c.UsageRetention < 0 {
		return errors.New("platform config: usage retention must not be negative")
	}
	if c.HTTP.Logger == nil {
		c.HTTP.Logger = c.Logger
	}
	if c.Node == "" {
		c.Node = "local"
	}
	if err := cluster.ValidName(c.Node); err != nil {
		return fmt.Errorf("platform config: %w", err)
	}
	if err := c.HTTP.Validate(); err != nil {
		return fmt.Errorf("platform config: %w", err)
	}
	return nil
}

// storeTimeout bounds one store operation of background work.
const storeTimeout = 30 * time.Second

// Platform is a running ebb.
type Platform struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	procs   *process.Manager
	sandbox *sandbox.Sandbox
	uids    *uidAllocator
	metrics *metrics.Metrics
	logs    *logbuf.Buffer
	keys    auth.Keyring
	sealer  *auth.Sealer // seals keys' SigV4 secrets (access.go)
	handler http.Handler
	instCfg instance.Config
	models  *onnx.ModelCache // onnx models by content hash, shared by bundles

	deployMu sync.Mutex // serialises deploys and removals, so versions swap in order
	keysMu   sync.Mutex // serialises key changes with the keys watch (access.go)

	// restoring is set while New restores the registry: nothing is built
	// ahead of need then (warm.go).
	restoring bool

	mu       sync.RWMutex // guards fns (and what they hold), draining and pinned
	fns      map[string]*function
	draining map[*deployment]struct{}
	pinned   map[string]int // digests of deploys in progress, with counts

	gcMu sync.Mutex // held by a garbage collection (gc.go) from its snapshot of what is kept to its end; pin waits for it

	ctx    context.Context // cancelled by Close; parent of background work
	cancel context.CancelFunc
	wg     sync.WaitGroup // drains of old versions
	seq    atomic.Uint64  // instance ids
	async  *async         // jobs, schedules and events; see async.go
	usage  *usage.Meter   // invocation records and rollups; see usage.go
	tracer trace.Tracer   // nil without Config.TracerProvider

	// mon keeps input and prediction summaries; see monitor.go.
	mon *monitor.Monitor
	// keep schedules the live keep-alive of adaptive versions; see
	// keepalive.go.
	keep      *live.Scheduler
	keepStats *metrics.KeepAlive

	// pastArrivals, while the functions are restored at start, holds each
	// function's minutes with calls in the day before (usage rollups), to
	// seed its keepers' histories (docs/keepalive.md).
	pastArrivals atomic.Pointer[map[string][]time.Time]
	// cluster is this node's heartbeat and lease; see cluster.go.
	cluster *cluster.Cluster
	// slots is cluster once it runs on a shared NATS, for the pools'
	// Limit (their loops run before it starts); nil on a lone node.
	slots atomic.Pointer[cluster.Cluster]
	// hop carries requests forwarded to other nodes (forward.go).
	hop *http.Client
}

// deployment is one function version's pool.
type deployment struct {
	fn      *ebb.Function
	ver     *version // its kept version, whose counters it adds to
	codeDir string
	pool    *dispatch.Pool[*instance.Instance]
	starter *instance.Starter
	metrics *metrics.Function
	// keeper applies the version's adaptive keep-alive; nil under a fixed
	// one (the pool's IdleTimeout).
	keeper *live.Keeper
	// prewarmHold accounts instances the keeper starts ahead of a call in
	// the warm budget; nil without a keeper.
	prewarmHold *instance.PrewarmHold
	// floor is this node's share of the version's min_instances, on a
	// node of a cluster (keepFloors).
	floor atomic.Int32
}

// New opens the store, restores every deployed function and returns a
// platform ready to serve. The admin key, when one had to be made, is
// returned once in AdminKey.
func New(ctx context.Context, cfg Config) (*Platform, string, error) {
	if err := cfg.Validate(); err != nil {
		return nil, "", err
	}
	for _, d := range []string{"bundles", "instances", "tmp", "runtime", "models"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o755); err != nil {
			return nil, "", fmt.Errorf("make data dir: %w", err)
		}
	}
	p := &Platform{cfg: cfg, log: cfg.Logger, fns: map[string]*function{}, draining: map[*deployment]struct{}{}, pinned: map[string]int{},
		models: &onnx.ModelCache{Dir: filepath.Join(cfg.DataDir, "models")}}
	logs, err := logbuf.New(logbuf.Config{MaxLines: cfg.LogLines, MaxBytes: cfg.LogBufferBytes})
	if err != nil {
		return nil, "", fmt.Errorf("platform config: %w", err)
	}
	p.logs = logs
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer(tracerName)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	sc := store.Config{DataDir: cfg.DataDir, URL: cfg.NATSURL, Replicas: cfg.NATSReplicas, Logger: cfg.Logger, AuditRetention: cfg.AuditRetention,
		UsageRetention: cfg.UsageRetention, ClusterRoutes: cfg.ClusterRoutes, ClusterListen: cfg.ClusterListen, ClusterName: cfg.ClusterName}
	if len(cfg.ClusterRoutes) > 0 {
		sc.ServerName = cfg.Node // each server of a cluster needs its own name
	}
	st, err := store.Open(ctx, sc)
	if err != nil {
		return nil, "", fmt.Errorf("open store: %w", err)
	}
	p.store = st
	p.sweepTemp() // the store holds the data dir's lock: nobody else uses it
	if cfg.InstanceDir == "" {
		cfg.InstanceDir = filepath.Join(cfg.DataDir, "instances")
	}
	// One cgroup per data directory: two ebb servers on one machine each
	// manage (and after a crash, clean up) only their own instances.
	sum := sha256.Sum256([]byte(cfg.DataDir))
	procs, err := process.NewManager(process.Config{Root: cfg.InstanceDir, CgroupName: "ebb-" + hex.EncodeToString(sum[:6]),
		CgroupMode: cfg.CgroupMode, Logger: cfg.Logger})
	if err != nil {
		st.Close()
		return nil, "", fmt.Errorf("start process manager: %w", err)
	}
	p.procs = procs
	if err := p.openSandbox(sum[:6]); err != nil {
		p.closeStores()
		return nil, "", err
	}
	p.metrics = metrics.New(p.poolStats)
	if err := p.openUsage(); err != nil {
		p.closeStores()
		return nil, "", err
	}
	if err := p.startMonitor(); err != nil {
		p.closeStores()
		return nil, "", fmt.Errorf("platform config: %w", err)
	}
	p.instCfg = instance.Config{Processes: procs, ShimDir: filepath.Join(cfg.DataDir, "runtime"), Python: cfg.Python,
		Executable: cfg.Executable, ONNXLibrary: cfg.ONNXLibrary, Logs: p.logs, Logger: cfg.Logger, ZygoteKeepAlive: cfg.ZygoteKeepAlive,
		Sandbox: p.sandbox, UIDFor: p.uids.uidFor}
	p.keepStats = p.metrics.KeepAlive()
	p.keep = live.NewScheduler(cfg.Now, p.keepStats)
	wc := warmConfig(cfg)
	wc.Priority = p.warmPriority
	p.instCfg.Warm = instance.NewWarmBudget(wc)
	p.metrics.Warm(p.warmMetrics)
	if err := p.instCfg.Validate(); err != nil {
		p.closeStores()
		return nil, "", err
	}
	adminKey, err := p.loadKeys(ctx)
	if err != nil {
		p.closeStores()
		return nil, "", err
	}
	p.keep.Start()
	used, past := p.recentUse(ctx)
	p.instCfg.Warm.SeedUse(used)
	p.pastArrivals.Store(&past)
	err = p.restore(ctx)
	p.pastArrivals.Store(nil)
	if err != nil {
		p.keep.Close()
		p.closeStores()
		return nil, "", err
	}
	p.prebuild(used)
	if err := p.startCluster(ctx); err != nil {
		p.Close(ctx)
		return nil, "", err
	}
	if err := p.startAsync(ctx); err != nil {
		p.Close(ctx)
		return nil, "", err
	}
	if err := p.buildHandler(); err != nil {
		p.Close(ctx)
		return nil, "", err
	}
	keyEvents, err := p.store.WatchKeys(p.ctx)
	if err != nil {
		p.Close(ctx)
		return nil, "", err
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.keysLoop(keyEvents)
	}()
	// What versions removed while ebb was down left behind goes now; stored
	// bundles younger than GCGrace go on a later round.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.collectLoop()
	}()
	return p, adminKey, nil
}

func (p *Platform) closeStores() {
	p.cancel()
	p.wg.Wait()
	if p.usage != nil {
		p.usage.Close(context.Background())
	}
	if p.mon != nil {
		p.mon.Close()
	}
	p.procs.Close()
	p.closeSandbox()
	p.store.Close()
}

// restore brings back every function in the registry, as after a restart:
// every kept version and the routes between them.
func (p *Platform) restore(ctx context.Context) error {
	p.restoring = true
	defer func() { p.restoring = false }()
	fns, err := p.store.ListFunctions(ctx)
	if err != nil {
		return fmt.Errorf("list functions: %w", err)
	}
	for _, fn := range fns {
		// One broken function must not keep the others down.
		if err := p.restoreFunction(ctx, fn); err != nil {
			p.log.Error("restore function", "function", fn.Spec.Name, "err", err)
			continue
		}
		p.log.Info("restored function", "function", fn.Spec.Name, "version", fn.Version)
	}
	return nil
}

// internModel links an onnx version's model into the node's model cache: one
// file per model on this node, however many bundles carry it. Failing that,
// the bundle's own copy serves. A model that is a link already was interned
// before this restart: hashing gigabytes again on every start would only
// delay it.
func (p *Platform) internModel(fn *ebb.Function, codeDir string) {
	if model, err := bundle.Resolve(codeDir, fn.Spec.Handler); fn.Spec.Runtime == ebb.RuntimeONNX && err == nil && !linked(model) {
		if _, err := p.models.Intern(p.ctx, model); err != nil {
			p.log.Warn("cache onnx model", "function", fn.Spec.Name, "err", err)
		}
	}
}

// newDeployment makes a pool for version fn, whose code is in codeDir.
func (p *Platform) newDeployment(fn *ebb.Function, codeDir string) (*deployment, error) {
	starter, err := instance.NewStarter(p.instCfg, fn, codeDir)
	if err != nil {
		return nil, err
	}
	d := &deployment{fn: fn, codeDir: codeDir, starter: starter, metrics: p.metrics.For(fn.Spec.Name)}
	s := &fn.Spec
	policy, idle := p.keepAliveOf(s)
	pc := dispatch.Config{
		Function: s.Name, Version: fn.Version,
		Concurrency: s.Concurrency, MinInstances: s.MinInstances, MaxInstances: s.MaxInstances,
		MaxQueue: s.MaxQueue, QueueTimeout: s.QueueTimeout, IdleTimeout: idle,
		Now: p.cfg.Now, Observer: p.metrics, Logger: p.log,
	}
	pc.Limit, pc.Floor = p.slotLimit(fn), p.slotFloor(d) // nil on a lone node
	if policy != nil {
		d.keeper = p.keep.AddSized(s.Name, fn.Version, policy, keepTarget{d}, idle, float64(s.MemoryMiB))
		pc.IdleDeadline = d.keeper.IdleDeadline
		d.prewarmHold = p.instCfg.Warm.NewPrewarmHold(s.Name, fn.Version, func() bool { return allIdle(d.pool.Stats()) }, func() { d.pool.StopIdleNow() })
	}
	pool, err := dispatch.NewPool(pc, starter)
	if err != nil {
		if d.keeper != nil {
			d.keeper.Remove()
		}
		d.prewarmHold.Close()
		starter.Close()
		return nil, err
	}
	d.pool = pool
	// At start, an adaptive version learns again from the calls of the day
	// before (its keeper acts on the pool, so only now).
	if past := p.pastArrivals.Load(); d.keeper != nil && past != nil {
		d.keeper.Seed((*past)[s.Name])
	}
	// A python function's zygote (or an onnx spare) is built now, so that
	// even the first request finds it ready, when the warm budget has room:
	// at a deploy only, not at a restart (warm.go).
	if !p.restoring {
		starter.Prewarm()
	}
	return d, nil
}

// linked says whether path is a file with more than one name: in a bundle's
// directory, one that ModelCache.Intern linked to its cache entry.
func linked(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink > 1
}

// recoverer turns a panic in a handler into a 500 and a log line: the server
// never dies of one request.
func recoverer(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("panic serving request", "path", r.URL.Path, "panic", fmt.Sprint(v))
				route.Write(w, route.Native, &route.Error{Status: http.StatusInternalServerError, Type: "Ebb.InternalError", Message: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// Handler serves ebb's whole HTTP API.
func (p *Platform) Handler() http.Handler { return p.handler }

// Server returns the HTTP/1.1 server for Handler, with the edge's timeouts
// and limits (Config.HTTP).
func (p *Platform) Server() *h1.Server { return &h1.Server{Handler: p.handler, Config: p.cfg.HTTP} }

// CgroupMode says how memory limits are enforced ("v2", "v1" or "none").
func (p *Platform) CgroupMode() string { return p.procs.CgroupMode() }

// Runtime implements gateway.Backend: the runtime of the version t
// resolves to. The versions a route shares traffic among have one runtime.
func (p *Platform) Runtime(t gateway.Target) (ebb.Runtime, error) {
	v, err := p.resolve(t)
	if err != nil {
		return "", err
	}
	return v.fn.Spec.Runtime, nil
}

// Close stops every instance and closes the store.
func (p *Platform) Close(ctx context.Context) error {
	// Jobs finish (or are handed back) while their functions still run.
	p.stopAsync(ctx)
	if p.cluster != nil {
		p.cluster.Close(ctx) // after the scheduler: the lease goes with it
	}
	if p.hop != nil {
		p.hop.CloseIdleConnections()
	}
	p.cancel()
	p.keep.Close() // no unload or pre-warm while the pools close
	p.mu.Lock()
	fns := p.fns
	p.fns = map[string]*function{}
	p.mu.Unlock()
	var all []*deployment
	for _, f := range fns {
		for _, v := range f.versions {
			v.mu.Lock()
			v.gone = true
			if d := v.dep.Swap(nil); d != nil {
				all = append(all, d)
			}
			v.mu.Unlock()
		}
	}
	p.mu.Lock()
	for d := range p.draining {
		all = append(all, d)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.pool.Close(ctx)
			d.starter.Close()
			d.prewarmHold.Close()
		}()
	}
	wg.Wait()
	p.wg.Wait()
	if err := p.usage.Close(ctx); err != nil {
		p.log.Warn("close usage meter", "err", err)
	}
	p.mon.Close()
	p.procs.Close()
	p.closeSandbox()
	p.shutdownTracing(ctx)
	return p.store.Close()
}

// poolStats sums each function's pools (one per version with traffic)
// for the gauges, which are per function.
func (p *Platform) poolStats() []metrics.PoolStats {
	p.mu.RLock()
	byName := map[string][]*deployment{}
	for name, f := range p.fns {
		for _, v := range f.versions {
			if d := v.dep.Load(); d != nil {
				byName[name] = append(byName[name], d)
			}
		}
		if _, ok := byName[name]; !ok {
			byName[name] = nil
		}
	}
	p.mu.RUnlock()
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]metrics.PoolStats, 0, len(names))
	for _, name := range names {
		ps := metrics.PoolStats{Function: name, Phases: map[string]int{}}
		for _, d := range byName[name] {
			st := d.pool.Stats()
			ps.Waiting += st.Waiting
			if zs := d.starter.Zygote(); zs != nil && zs.Pid != 0 {
				ps.Zygote = addMemory(ps.Zygote, zs.RSS, zs.PSS)
			}
			if sp := d.starter.Spare(); sp != nil {
				ps.Spare = addMemory(ps.Spare, sp.RSS, sp.PSS)
			}
			for _, in := range st.Instances {
				ps.Phases[string(in.Phase)]++
			}
		}
		out = append(out, ps)
	}
	return out
}

func addMemory(m *metrics.ZygoteMemory, rss, pss uint64) *metrics.ZygoteMemory {
	if m == nil {
		m = &metrics.ZygoteMemory{}
	}
	m.RSS += rss
	m.PSS += pss
	return m
}

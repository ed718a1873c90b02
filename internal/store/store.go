// Package store keeps ebb's durable state on NATS JetStream: the function
// registry and API keys in KV buckets, function bundles in an object store.
//
// By default the NATS server is embedded in the ebb process and stores
// JetStream data under the data directory, so a single binary needs nothing
// else and survives kill -9 with its state intact. Pointing Config.URL at an
// external NATS cluster makes the same code hold cluster-wide state.
//
// The warm invoke path never calls this package; it favours correctness and
// durability over latency.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

// Bucket names. They are part of the on-disk and on-cluster format: renaming
// one orphans existing data.
const (
	FunctionsBucket = "ebb_functions"
	VersionsBucket  = "ebb_versions"
	KeysBucket      = "ebb_keys"
	// FunctionVersionsBucket holds every kept version of every function
	// (key NAME.N), TrafficBucket each function's routes and aliases.
	FunctionVersionsBucket = "ebb_function_versions"
	TrafficBucket          = "ebb_traffic"
	BundlesBucket          = "ebb_bundles"
)

const (
	// lockFile is the name, under DataDir, of the file whose flock marks the
	// directory as owned by one ebb process.
	lockFile = "LOCK"
	// readyTimeout bounds how long Open waits for the embedded server; a
	// large JetStream store is recovered inside server.Start, before this.
	readyTimeout = 10 * time.Second
	// closeTimeout bounds Close as a whole: drain, then server shutdown.
	closeTimeout = 10 * time.Second
	// connectTimeout bounds one dial to an external server when ctx has no
	// earlier deadline.
	connectTimeout = 5 * time.Second
	// embeddedMaxMemory caps JetStream memory storage in the embedded server.
	// ebb keeps everything in file storage; the cap only stops a
	// memory-backed stream from growing without bound.
	embeddedMaxMemory = 512 << 20
	// functionsHistory is how many revisions of each registry entry are
	// kept; see setupBuckets.
	functionsHistory = 16
	// maxReplicas is the largest replication factor JetStream supports.
	maxReplicas = 5
)

// ErrDataDirInUse is returned (wrapped) by Open when another process holds the
// data directory's lock.
var ErrDataDirInUse = errors.New("data directory is in use by another ebb")

// Config configures a Store. The zero value is not usable: set DataDir for the
// embedded server, or URL for an external one.
type Config struct {
	// DataDir holds the embedded server's JetStream store (DataDir/jetstream)
	// and the LOCK file. Required when URL is empty; unused otherwise.
	DataDir string
	// URL is a comma-separated list of external NATS servers, e.g.
	// "nats://a:4222,nats://b:4222". Empty means embedded.
	URL string
	// Replicas is the replication factor of buckets created in external
	// mode (1 to 5); default 1. The embedded server is a single node, so it
	// must be 1 there.
	Replicas int
	// ServerName names the embedded server; default "ebb".
	ServerName string
	// Listen, for the embedded server, is host:port on which it accepts NATS
	// clients; empty means no port at all (in-process connection only). An
	// empty host means 127.0.0.1. The server has no authentication, so a
	// non-loopback host is honoured but logged as a warning.
	Listen string
	// ClusterRoutes, for the embedded server, are the cluster routes
	// (nats://HOST:PORT, see ParseRoutes) of the embedded servers of the
	// other ebb nodes: with them this one joins theirs in one JetStream
	// cluster (RAFT-replicated buckets and streams, Replicas copies) named
	// ClusterName (default "ebb"), taking routes on ClusterListen
	// (HOST:PORT, required with routes). ServerName must then be this
	// node's own. A route to this server itself is ignored, so every node
	// may be given the same list.
	ClusterRoutes []string
	ClusterListen string
	ClusterName   string
	// FormTimeout bounds how long Open waits for a cluster (of embedded
	// servers, or an external one) to elect its JetStream meta leader and
	// know enough peers to place Replicas copies; default 2 minutes.
	FormTimeout time.Duration
	// Logger receives the store's and the embedded server's logs; nil
	// discards them.
	Logger *slog.Logger
	// AuditRetention is how long audit records are kept; default 90 days.
	AuditRetention time.Duration
	// AuditMaxBytes bounds the audit stream (the oldest records go
	// first); default 256 MiB.
	AuditMaxBytes int64
	// UsageRetention is how long invocation records are kept; default 90
	// days. Minute rollups are kept at least 396 days.
	UsageRetention time.Duration
	// UsageMaxBytes bounds each usage stream; default 1 GiB.
	UsageMaxBytes int64
}

// Validate fills in defaults and reports the first invalid field.
func (c *Config) Validate() error {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.FormTimeout == 0 {
		c.FormTimeout = defaultFormTimeout
	}
	if c.FormTimeout < 0 {
		return errors.New("store config: form timeout must not be negative")
	}
	if c.ServerName == "" {
		c.ServerName = "ebb"
	}
	if c.AuditRetention == 0 {
		c.AuditRetention = 90 * 24 * time.Hour
	}
	if c.AuditMaxBytes == 0 {
		c.AuditMaxBytes = 256 << 20
	}
	if c.UsageRetention == 0 {
		c.UsageRetention = 90 * 24 * time.Hour
	}
	if c.UsageMaxBytes == 0 {
		c.UsageMaxBytes = 1 << 30
	}
	if c.UsageRetention < 0 || c.UsageMaxBytes < 0 {
		return errors.New("store config: usage retention and size must not be negative")
	}
	if c.AuditRetention < 0 || c.AuditMaxBytes < 0 {
		return errors.New("store config: audit retention and size must not be negative")
	}
	if c.Replicas < 1 || c.Replicas > maxReplicas {
		return fmt.Errorf("store config: replicas %d is out of range (1 to %d)", c.Replicas, maxReplicas)
	}
	if strings.ContainsFunc(c.ServerName, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("store config: server name %q must not contain spaces or control characters", c.ServerName)
	}
	if c.URL != "" {
		if c.Listen != "" {
			return errors.New("store config: listen applies only to the embedded server (url is set)")
		}
		for _, u := range strings.Split(c.URL, ",") {
			if strings.TrimSpace(u) == "" {
				return fmt.Errorf("store config: url %q has an empty server entry", c.URL)
			}
		}
		return nil
	}
	if c.DataDir == "" {
		return errors.New("store config: data directory is required for the embedded server")
	}
	if c.Replicas != 1 && len(c.ClusterRoutes) == 0 {
		return fmt.Errorf("store config: replicas must be 1 for the embedded server without cluster routes, not %d", c.Replicas)
	}
	if c.Listen != "" {
		if _, _, err := splitListen(c.Listen); err != nil {
			return fmt.Errorf("store config: listen: %w", err)
		}
	}
	return nil
}

// splitListen parses Listen into the server's host and port, mapping port 0
// to the server's "pick a free port" value (its own 0 means 4222).
func splitListen(listen string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", portStr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Store is ebb's state. It is safe for concurrent use.
type Store struct {
	log      *slog.Logger
	srv      *server.Server // nil in external mode
	lock     *os.File       // nil in external mode
	nc       *nats.Conn
	js       jetstream.JetStream
	shared   jetstream.JetStream // js, or js retried while a cluster forms
	fns      jetstream.KeyValue
	versions jetstream.KeyValue
	keys     jetstream.KeyValue
	kept     jetstream.KeyValue // version records, NAME.N
	traffic  jetstream.KeyValue
	bundles  jetstream.ObjectStore
	audit    jetstream.Stream
	// usage and usageMinutes are the usage streams; see usage.go.
	usage, usageMinutes jetstream.Stream

	// connClosed is closed by the connection's closed handler; Close waits
	// on it after draining.
	connClosed chan struct{}

	closed atomic.Bool
	// done is closed by Close to stop the goroutines of WatchFunctions.
	done chan struct{}
	// lifeMu guards the pairing of closed/done with watchers.Add, so that
	// Close's watchers.Wait never races a new watcher.
	lifeMu   sync.Mutex
	watchers sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	bundleLocks keyedLocks
}

// Open opens the store. With Config.URL empty it locks DataDir, starts the
// embedded NATS server with JetStream on DataDir and connects to it
// in-process; otherwise it connects to URL. It then creates or binds the
// buckets. ctx bounds connecting and bucket setup; the embedded server's own
// start (which recovers the JetStream store) is not interruptible.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	s := &Store{
		log:         log,
		connClosed:  make(chan struct{}),
		done:        make(chan struct{}),
		bundleLocks: keyedLocks{m: make(map[string]*keyedLock)},
	}
	ok := false
	defer func() {
		if !ok {
			s.abort()
		}
	}()

	if cfg.URL == "" {
		if err := s.startEmbedded(cfg); err != nil {
			return nil, err
		}
	} else if err := s.connectExternal(ctx, cfg); err != nil {
		return nil, err
	}

	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("open store: jetstream: %w", err)
	}
	s.js, s.shared = js, js
	if cfg.URL != "" || len(cfg.ClusterRoutes) > 0 {
		s.shared = &formingJS{JetStream: js, s: s, bound: cfg.FormTimeout}
	}
	formBy := time.Now().Add(cfg.FormTimeout)
	if err := s.waitFormed(ctx, cfg, formBy); err != nil {
		return nil, err
	}
	// Every setup step makes what is missing and binds what exists, so
	// that one may run again while a forming cluster refuses to place
	// replicated streams.
	if err := s.untilPlaced(ctx, cfg.Replicas, formBy, func(ctx context.Context) error {
		if err := s.setupBuckets(ctx, cfg.Replicas); err != nil {
			return err
		}
		if err := s.setupAudit(ctx, cfg); err != nil {
			return err
		}
		return s.setupUsage(ctx, cfg)
	}); err != nil {
		return nil, err
	}
	ok = true
	attrs := []any{"took", time.Since(start)}
	if s.srv != nil {
		attrs = append(attrs, "mode", "embedded", "data_dir", cfg.DataDir)
		if len(cfg.ClusterRoutes) > 0 {
			attrs = append(attrs, "cluster", cfg.ClusterName, "cluster_listen", cfg.ClusterListen, "replicas", cfg.Replicas)
		}
		if u := s.ClientURL(); u != "" {
			attrs = append(attrs, "listen", u)
		}
	} else {
		attrs = append(attrs, "mode", "external", "server", s.nc.ConnectedUrlRedacted())
	}
	log.Info("store opened", attrs...)
	return s, nil
}

func (s *Store) startEmbedded(cfg Config) error {
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("open store: data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("open store: create data directory: %w", err)
	}
	if err := s.lockDir(dir); err != nil {
		return err
	}

	opts := &server.Options{
		ServerName:             cfg.ServerName,
		DontListen:             cfg.Listen == "",
		JetStream:              true,
		StoreDir:               dir, // the server adds the "jetstream" component
		JetStreamMaxMemory:     embeddedMaxMemory,
		NoSigs:                 true, // signals belong to ebb's main, not to a library
		DisableJetStreamBanner: true,
	}
	if cfg.Listen != "" {
		host, port, _ := splitListen(cfg.Listen) // checked by Validate
		opts.Host, opts.Port = host, port
		if !isLoopback(host) {
			s.log.Warn("embedded NATS server listens beyond loopback without authentication", "listen", cfg.Listen)
		}
	}
	if len(cfg.ClusterRoutes) > 0 {
		if err := s.clusterOptions(opts, cfg); err != nil {
			return err
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("open store: configure embedded server: %w", err)
	}
	sl := &serverLogger{log: s.log.With("component", "nats")}
	srv.SetLoggerV2(sl, s.log.Enabled(context.Background(), slog.LevelDebug), false, false)
	s.srv = srv
	// Start is synchronous up to the client listener; JetStream or listener
	// failures are reported only through Fatalf, so the logger keeps them.
	srv.Start()
	if msg := sl.fatal(); msg != "" {
		return fmt.Errorf("open store: start embedded server: %s", msg)
	}
	if !srv.JetStreamEnabled() {
		return errors.New("open store: start embedded server: jetstream is not enabled")
	}
	if !srv.ReadyForConnections(readyTimeout) {
		return fmt.Errorf("open store: embedded server not ready after %s", readyTimeout)
	}
	nc, err := nats.Connect("", append(s.connOptions(cfg.ServerName), nats.InProcessServer(srv))...)
	if err != nil {
		return fmt.Errorf("open store: connect in-process: %w", err)
	}
	s.nc = nc
	return nil
}

func (s *Store) connectExternal(ctx context.Context, cfg Config) error {
	timeout := connectTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return fmt.Errorf("open store: connect %s: %w", redactURL(cfg.URL), context.DeadlineExceeded)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("open store: connect %s: %w", redactURL(cfg.URL), err)
	}
	opts := append(s.connOptions(cfg.ServerName), nats.Timeout(timeout))
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("open store: connect %s: %w", redactURL(cfg.URL), err)
	}
	s.nc = nc
	return nil
}

// redactURL hides credentials embedded in a NATS URL list before it is put in
// an error message.
func redactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if at := strings.LastIndex(p, "@"); at >= 0 {
			scheme := ""
			if j := strings.Index(p, "://"); j >= 0 && j < at {
				scheme = p[:j+3]
			}
			p = scheme + "***@" + p[at+1:]
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}

func (s *Store) connOptions(name string) []nats.Option {
	return []nats.Option{
		nats.Name(name),
		// A store outlives network blips: keep reconnecting, and let
		// JetStream calls fail on their own timeouts meanwhile.
		nats.MaxReconnects(-1),
		nats.DrainTimeout(closeTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(s.connClosed) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			s.log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				s.log.Error("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			s.log.Error("nats async error", "err", err)
		}),
	}
}

func (s *Store) setupBuckets(ctx context.Context, replicas int) error {
	// The registry keeps a short history so that a watcher that falls a
	// few changes behind on one function still sees each of them: with a
	// history of 1, a put followed quickly by a delete would drop the put
	// from the stream before a lagging watcher got it.
	kvs := []struct {
		dst     *jetstream.KeyValue
		name    string
		desc    string
		history uint8
	}{
		{&s.fns, FunctionsBucket, "ebb function registry", functionsHistory},
		{&s.versions, VersionsBucket, "ebb version counters", 1},
		{&s.keys, KeysBucket, "ebb API keys", 1},
		{&s.kept, FunctionVersionsBucket, "ebb kept function versions", 1},
		{&s.traffic, TrafficBucket, "ebb routes and aliases", 1},
	}
	for _, b := range kvs {
		kv, err := s.js.KeyValue(ctx, b.name)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      b.name,
				Description: b.desc,
				History:     b.history,
				Storage:     jetstream.FileStorage,
				Replicas:    replicas,
			})
			if errors.Is(err, jetstream.ErrBucketExists) {
				// Another node created it between our two calls.
				kv, err = s.js.KeyValue(ctx, b.name)
			}
		}
		if err != nil {
			return fmt.Errorf("open store: bucket %s: %w", b.name, err)
		}
		*b.dst = kv
	}
	obs, err := s.js.ObjectStore(ctx, BundlesBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = s.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      BundlesBucket,
			Description: "ebb function bundles by sha256",
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			obs, err = s.js.ObjectStore(ctx, BundlesBucket)
		}
	}
	if err != nil {
		return fmt.Errorf("open store: object store %s: %w", BundlesBucket, err)
	}
	s.bundles = obs
	return nil
}

// lockDir takes the exclusive flock on dir/LOCK. The kernel releases it when
// the process dies, so a kill -9 leaves no stale lock behind.
func (s *Store) lockDir(dir string) error {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open store: lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return &dirInUseError{dir: dir}
		}
		return fmt.Errorf("open store: lock %s: %w", path, err)
	}
	// The pid is only for a human looking at who holds the directory.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	s.lock = f
	return nil
}

type dirInUseError struct{ dir string }

func (e *dirInUseError) Error() string {
	return fmt.Sprintf("data directory %s is in use by another ebb", e.dir)
}

func (e *dirInUseError) Is(target error) bool { return target == ErrDataDirInUse }

// unlock releases the data directory; closing the descriptor drops the flock.
func (s *Store) unlock() {
	if s.lock != nil {
		s.lock.Close()
	}
}

// abort undoes a partial Open.
func (s *Store) abort() {
	if s.nc != nil {
		s.nc.Close()
	}
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
	s.unlock()
}

// Conn is the store's NATS connection, for packages (the queue) that share it.
func (s *Store) Conn() *nats.Conn { return s.nc }

// JetStream is the store's JetStream context, for packages that share it.
// On a cluster, its calls that make streams, buckets and consumers are
// retried while the cluster forms (formingJS).
func (s *Store) JetStream() jetstream.JetStream { return s.shared }

// ClientURL is the URL on which the embedded server accepts NATS clients, or
// "" when it listens on no port or the store is external.
func (s *Store) ClientURL() string {
	if s.srv == nil {
		return ""
	}
	if addr, ok := s.srv.Addr().(*net.TCPAddr); ok && addr != nil {
		return "nats://" + net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port))
	}
	return ""
}

// Close stops watchers, drains the connection, shuts the embedded server down
// and releases the data directory, all within a fixed deadline. If the
// server has not finished shutting down by then, Close returns an error and
// the lock is released only once it has, so that no other process can open a
// store that is still being written. Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	deadline := time.NewTimer(closeTimeout)
	defer deadline.Stop()

	s.lifeMu.Lock()
	s.closed.Store(true)
	close(s.done)
	s.lifeMu.Unlock()
	s.watchers.Wait()

	var errs []error
	if err := s.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		s.log.Warn("drain nats connection", "err", err)
	}
	select {
	case <-s.connClosed:
	case <-deadline.C:
		errs = append(errs, errors.New("close store: drain nats connection: timed out"))
		s.nc.Close()
	}

	if s.srv != nil {
		stopped := make(chan struct{})
		go func() {
			s.srv.Shutdown()
			s.srv.WaitForShutdown()
			s.unlock()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-deadline.C:
			errs = append(errs, fmt.Errorf("close store: shut down embedded server: not done after %s", closeTimeout))
		}
	}
	return errors.Join(errs...)
}

// check returns ebb.ErrClosed once Close has begun.
func (s *Store) check() error {
	if s.closed.Load() {
		return ebb.ErrClosed
	}
	return nil
}

// serverLogger adapts the embedded server's printf logger to slog. The
// server's notices are routine start-up chatter, so they go to Debug.
type serverLogger struct {
	log *slog.Logger

	mu sync.Mutex // guards lastFatal
	// lastFatal is the server's last Fatalf: with a library logger the
	// server does not exit, it returns early from Start, and Open reports it.
	lastFatal string
}

func (l *serverLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }

func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	l.mu.Lock()
	l.lastFatal = msg
	l.mu.Unlock()
}

func (l *serverLogger) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastFatal
}

// keyedLocks serialises work on one key (a bundle digest) inside this
// process while letting different keys proceed in parallel.
type keyedLocks struct {
	mu sync.Mutex // guards m and every keyedLock.refs
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{} // holds one token while the key is locked
	refs int           // holders plus waiters; the entry goes when it is 0
}

// lock waits for key until ctx ends and returns the function that unlocks it.
func (k *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

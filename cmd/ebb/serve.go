package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/h1"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/onnx"
	"github.com/ebb-run/ebb/internal/platform"
	"github.com/ebb-run/ebb/internal/sandbox"
	"github.com/ebb-run/ebb/internal/store"
	"github.com/ebb-run/ebb/internal/tracing"
)

func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	data := fs.String("data", "./ebb-data", "data directory (state, bundles, instance dirs)")
	natsURL := fs.String("nats", "", "external NATS server URLs, comma-separated (nats://a:4222,nats://b:4222), to join a cluster of ebb nodes (default: embedded NATS with JetStream in --data)")
	natsReplicas := fs.Int("nats-replicas", 1, "with --nats or --cluster-routes: copies JetStream keeps of ebb's state (registry, keys, bundles, jobs, usage), 1 to 5; 3 survives the loss of one NATS server")
	clusterRoutes := fs.String("cluster-routes", "", "cluster routes (nats://host:port, comma-separated) of the other nodes' embedded NATS: the nodes' embedded servers form one JetStream cluster themselves, with no separate nats-server (not with --nats; the same list on every node will do)")
	clusterListen := fs.String("cluster-listen", "", "with --cluster-routes: host:port on which this node's embedded NATS takes the others' routes (default: --listen's host, port 6222)")
	clusterName := fs.String("cluster-name", "", "with --cluster-routes: the cluster's name, the same on every node (default ebb)")
	nodeName := fs.String("node", "", "this node's name in the cluster (letters, digits, - _ .; default: the host name and a suffix made once and kept in --data)")
	requireAuth := fs.Bool("require-auth", false, "require API keys even on loopback (always on for other addresses)")
	maxPayload := fs.Int64("max-payload", 6<<20, "largest synchronous request payload, in bytes")
	python := fs.String("python", "/usr/bin/python3", "default Python interpreter for python functions")
	ortLib := fs.String("onnxruntime-lib", os.Getenv("EBB_ONNXRUNTIME_LIB"), "ONNX Runtime shared library for onnx functions")
	cgroup := fs.String("cgroup", "auto", "memory limits: auto, v2, v1 or none")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's net/http/pprof on this (loopback) address, for profiling ebb itself")
	warmMemory := byteSize(instance.DefaultWarmMemory(uint64(nodeMemoryMiB()) << 20))
	fs.Var(&warmMemory, "warm-memory", "node-wide budget (PSS) for warm capacity built ahead of need: python zygotes, onnx spares, spare sandboxes (default a tenth of the machine's memory, at least 256MiB)")
	warmMax := fs.Int("warm-max", instance.DefaultWarmMax, "most function versions holding warm capacity at once, node-wide; 0 for none")
	fnKeepAlive := fs.String("keep-alive", "", "keep-alive of functions whose ebb.yaml sets neither keep_alive nor idle_timeout: adaptive (learned from each function's calls, pre-warmed before predicted ones) or fixed:DURATION (default: their idle_timeout, 5m)")
	sandboxMode := fs.String("sandbox", "auto", "confine every function process: auto (wherever the host allows it, else a loud warning), on (refuse to start without) or off")
	sandboxUIDs := fs.String("sandbox-uids", sandbox.DefaultUIDs.String(), "host uids for sandboxed functions, FIRST-LAST; FIRST is the sandbox group, each function gets one of the others")
	instanceDir := fs.String("instance-dir", "", "where instances' working and scratch dirs live (default: a tmpfs under /dev/shm when there is one, else DATA/instances)")
	logBuffer, maxUnpacked := byteSize(8<<20), byteSize(2<<30)
	fs.Var(&logBuffer, "log-buffer", "output kept in memory per function for `ebb logs` (e.g. 8MiB)")
	fs.Var(&maxUnpacked, "max-unpacked", "largest unpacked size of a deployed bundle")
	maxBuckets := fs.Int("max-buckets", 100, "most buckets (/v1/buckets/NAME) there may be")
	bucketBytes, objectBytes := byteSize(1<<30), byteSize(64<<20)
	fs.Var(&bucketBytes, "max-bucket-bytes", "most bytes one bucket holds")
	fs.Var(&objectBytes, "max-object-bytes", "largest object uploaded to a bucket")
	jobRetention := fs.Duration("job-retention", 7*24*time.Hour, "how long async job records and dead letters are kept")
	recordBytes, queuedBytes := byteSize(256<<20), byteSize(1<<30)
	fs.Var(&recordBytes, "max-job-records", "most bytes of job records (and, apart, of dead letters); the oldest go first")
	fs.Var(&queuedBytes, "max-queued", "most bytes of queued async jobs; past it new ones get 429")
	readTimeout := fs.Duration("read-timeout", 30*time.Second, "longest gap between reads while a request's head or body arrives")
	writeTimeout := fs.Duration("write-timeout", 60*time.Second, "longest a response may make no progress to its client (a proxied stream's instance slot is then freed)")
	keepAlive := fs.Duration("keepalive-timeout", 75*time.Second, "how long an idle client connection is kept")
	maxConns := fs.Int("max-conns", 10000, "most client connections at once; more are answered 503 at once")
	allowedHosts := fs.String("allowed-hosts", "", "comma-separated Host names ebb answers for besides loopback names (when listening on loopback); others get 421 (\"*\": any)")
	corsOrigins := fs.String("cors-origins", "", "comma-separated browser origins allowed to call ebb (CORS; \"*\": any); none by default")
	auditRetention := fs.Duration("audit-retention", 90*24*time.Hour, "how long the audit log of control-plane actions is kept")
	nodeCost := fs.Float64("node-cost-per-hour", 0, "what this machine costs an hour (USD), to price its share in cost reports and the dashboard")
	usageRetention := fs.Duration("usage-retention", 90*24*time.Hour, "how long every invocation's usage record is kept (per-minute rollups: at least 396 days)")
	otlpEndpoint := fs.String("otlp-endpoint", "", "export OpenTelemetry spans of every invocation over OTLP/HTTP to this collector URL (e.g. http://localhost:4318); off by default")
	if err := fs.Parse(args); err != nil {
		return err
	}
	uids, err := sandbox.ParseUIDRange(*sandboxUIDs)
	if err != nil {
		return fmt.Errorf("--sandbox-uids: %w", err)
	}
	if *maxBuckets <= 0 {
		return errors.New("--max-buckets must be at least 1")
	}
	for name, d := range map[string]time.Duration{"--read-timeout": *readTimeout, "--write-timeout": *writeTimeout, "--keepalive-timeout": *keepAlive} {
		if d <= 0 {
			return fmt.Errorf("%s: must be a positive duration, got %s", name, d)
		}
	}
	if *maxConns <= 0 {
		return fmt.Errorf("--max-conns: must be positive, got %d", *maxConns)
	}
	if *auditRetention <= 0 {
		return fmt.Errorf("--audit-retention: must be a positive duration, got %s", *auditRetention)
	}
	if *nodeCost < 0 || math.IsInf(*nodeCost, 0) || math.IsNaN(*nodeCost) {
		return fmt.Errorf("--node-cost-per-hour: must be 0 or more, got %v", *nodeCost)
	}
	if *usageRetention <= 0 {
		return fmt.Errorf("--usage-retention: must be a positive duration, got %s", *usageRetention)
	}
	if *fnKeepAlive != "" {
		if _, _, err := ebb.ParseKeepAlive(*fnKeepAlive); err != nil {
			return fmt.Errorf("--keep-alive: %w", err)
		}
	}
	if *natsReplicas < 1 || *natsReplicas > 5 {
		return fmt.Errorf("--nats-replicas: must be 1 to 5, got %d", *natsReplicas)
	}
	routes, err := clusterFlags(*natsURL, *clusterRoutes, clusterListen, clusterName, *listen, *natsReplicas)
	if err != nil {
		return err
	}
	if *natsReplicas > 1 && *natsURL == "" && routes == nil {
		return errors.New("--nats-replicas: needs --nats or --cluster-routes (the embedded NATS alone is a single server)")
	}
	if *nodeName != "" {
		if err := cluster.ValidName(*nodeName); err != nil {
			return fmt.Errorf("--node: %w", err)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if os.Getenv("GOGC") == "" {
		// ebb's heap is small and its garbage is per-request: collecting
		// less often buys proxy throughput for a few MiB.
		debug.SetGCPercent(400)
	}
	logOut := newBufferedWriter(os.Stderr)
	defer logOut.Close()
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	dataDir, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	if *ortLib == "" {
		// Resolved here, where the working directory is the user's: instances
		// run in their own directories and could not find a relative default.
		if p, err := onnx.DefaultLibraryPath(); err == nil {
			*ortLib = p
		}
	}
	if *instanceDir == "" {
		*instanceDir = defaultInstanceDir(dataDir)
	}
	if *nodeName == "" {
		if *nodeName, err = defaultNodeName(dataDir); err != nil {
			return fmt.Errorf("--node: %w", err)
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	loopback := auth.IsLoopback(*listen)
	var tracer trace.TracerProvider // nil: no spans
	var tp *sdktrace.TracerProvider
	if *otlpEndpoint != "" {
		if tp, err = tracing.New(tracing.Config{Endpoint: *otlpEndpoint, Logger: log}); err != nil {
			ln.Close()
			return fmt.Errorf("--otlp-endpoint: %w", err)
		}
		tracer = tp // platform.Close shuts it down
	}
	p, adminKey, err := platform.New(ctx, platform.Config{
		DataDir: dataDir, NATSURL: *natsURL, NATSReplicas: *natsReplicas, ClusterRoutes: routes, ClusterListen: *clusterListen, ClusterName: *clusterName, Node: *nodeName, Version: ebbVersion(), RequireAuth: *requireAuth || !loopback, MaxSyncPayload: *maxPayload,
		LoopbackHosts: loopback, AllowedHosts: splitList(*allowedHosts), CORSOrigins: splitList(*corsOrigins), AuditRetention: *auditRetention,
		UsageRetention: *usageRetention, NodeMemoryMiB: nodeMemoryMiB(), NodeCPUs: runtime.NumCPU(), NodeCostPerHour: *nodeCost,
		BaseURL: "http://" + ln.Addr().String(), Python: *python, Executable: exe, ONNXLibrary: *ortLib, WarmMemory: int64(warmMemory), WarmMax: sparesOrNone(*warmMax), KeepAlive: *fnKeepAlive,
		CgroupMode: *cgroup, InstanceDir: *instanceDir, Logger: log, InvocationLog: logOut, TracerProvider: tracer,
		Sandbox:        sandbox.Config{Mode: *sandboxMode, UIDs: uids},
		LogBufferBytes: int64(logBuffer), MaxUnpackedBytes: int64(maxUnpacked),
		Async: platform.AsyncOptions{JobRetention: *jobRetention, MaxRecordBytes: int64(recordBytes), MaxQueuedBytes: int64(queuedBytes),
			MaxBuckets: *maxBuckets, MaxBucketBytes: int64(bucketBytes), MaxObjectBytes: int64(objectBytes)},
		HTTP: h1.Config{ReadTimeout: *readTimeout, WriteTimeout: *writeTimeout, KeepAliveTimeout: *keepAlive, MaxConns: *maxConns},
	})
	if err != nil {
		ln.Close()
		if tp != nil {
			tp.Shutdown(ctx)
		}
		return err
	}
	if adminKey != "" {
		// Shown once: only its hash is stored.
		fmt.Fprintf(os.Stdout, "ebb: created the admin API key (it is shown only now; store it safely):\n\n    %s\n\n", adminKey)
	}
	if *pprofAddr != "" {
		if !auth.IsLoopback(*pprofAddr) {
			p.Close(ctx)
			ln.Close()
			return errors.New("--pprof must be a loopback address: profiles reveal memory contents")
		}
		go http.ListenAndServe(*pprofAddr, nil) // the default mux, where net/http/pprof registers
	}
	srv := p.Server()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("ebb serving", "addr", ln.Addr().String(), "node", *nodeName, "data", dataDir, "auth", *requireAuth || !loopback, "cgroup", p.CgroupMode(), "sandbox", p.SandboxMode())
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	log.Info("ebb shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if cerr := p.Close(sctx); cerr != nil {
		log.Warn("close platform", "err", cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// clusterFlags checks --cluster-routes, --cluster-listen and --cluster-name
// against --nats and --nats-replicas, fills in the defaults of listen and
// name, and returns the routes (nil without --cluster-routes).
func clusterFlags(natsURL, routeList string, listen, name *string, httpListen string, replicas int) ([]string, error) {
	if routeList == "" {
		switch {
		case *listen != "":
			return nil, errors.New("--cluster-listen: needs --cluster-routes")
		case *name != "":
			return nil, errors.New("--cluster-name: needs --cluster-routes")
		}
		return nil, nil
	}
	if natsURL != "" {
		return nil, errors.New("--cluster-routes: not with --nats: with routes the nodes' embedded NATS servers form the cluster; --nats joins one run apart")
	}
	routes, err := store.ParseRoutes(routeList)
	if err != nil {
		return nil, fmt.Errorf("--cluster-routes: %w", err)
	}
	if *listen == "" {
		host, _, _ := net.SplitHostPort(httpListen)
		if host == "" {
			host = "0.0.0.0"
		}
		*listen = net.JoinHostPort(host, "6222")
	}
	if err := store.ValidClusterListen(*listen); err != nil {
		return nil, fmt.Errorf("--cluster-listen: %w", err)
	}
	if *name == "" {
		*name = store.DefaultClusterName
	}
	if err := store.ValidClusterName(*name); err != nil {
		return nil, fmt.Errorf("--cluster-name: %w", err)
	}
	if replicas > len(routes)+1 {
		return nil, fmt.Errorf("--nats-replicas: %d copies need %d servers, and --cluster-routes names %d routes (at most %d servers with this one)",
			replicas, replicas, len(routes), len(routes)+1)
	}
	return routes, nil
}

// defaultInstanceDir puts instance directories on /dev/shm when it is a
// writable tmpfs: making and removing them is on every cold start's path, and
// on a slow disk that costs milliseconds. The name is derived from the data
// directory so that two ebb servers never share one.
func defaultInstanceDir(dataDir string) string {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != tmpfsMagic || syscall.Access("/dev/shm", 2) != nil {
		return filepath.Join(dataDir, "instances")
	}
	sum := sha256.Sum256([]byte(dataDir))
	return filepath.Join("/dev/shm", "ebb-"+hex.EncodeToString(sum[:6]))
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// sparesOrNone maps --warm-max 0 ("none") to the platform's negative.
func sparesOrNone(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// nodeMemoryMiB is the machine's memory, for cost reports; 0 if unknown.
func nodeMemoryMiB() int64 {
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit) >> 20
}

// nodeFile, under the data directory, keeps the node name made up when
// --node is not given, so that a node keeps its name across restarts.
const nodeFile = "node-name"

// defaultNodeName is the name kept in dataDir, or a new one made of the host
// name and a random suffix (two nodes on one host differ), kept there.
func defaultNodeName(dataDir string) (string, error) {
	path := filepath.Join(dataDir, nodeFile)
	if b, err := os.ReadFile(path); err == nil {
		name := strings.TrimSpace(string(b))
		if err := cluster.ValidName(name); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		return name, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, host)
	if len(host) > 40 {
		host = host[:40]
	}
	if host == "" {
		host = "ebb"
	}
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", err
	}
	name := host + "-" + hex.EncodeToString(suffix[:])
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep node name: %w", err)
	}
	return name, nil
}

// ebbVersion is the module version ebb was built at, for its heartbeat.
func ebbVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

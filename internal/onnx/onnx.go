// Package onnx is ebb's onnx runtime: it serves one ONNX model over the Open
// Inference Protocol (v2 REST, as KServe and Triton speak it) with ONNX
// Runtime, loaded from its C library through github.com/yalue/onnxruntime_go.
//
// An onnx function's instance is a child process (`ebb onnx-serve`) whose
// whole job is a Server: ebb proxies /v2/... requests to it like it proxies
// an http function, and gets crash isolation, the memory limit and scale to
// zero from the process boundary. Inside the process one ONNX Runtime session
// is shared by all requests, and when the model's first dimension is dynamic
// and the manifest asks for it, requests that arrive together are stacked
// into one batch, run once, and split back.
package onnx

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// GraphOptimization is ONNX Runtime's graph optimisation level.
type GraphOptimization string

const (
	OptimizeAll      GraphOptimization = "all"
	OptimizeExtended GraphOptimization = "extended"
	OptimizeBasic    GraphOptimization = "basic"
	OptimizeDisabled GraphOptimization = "disabled"
)

func (g GraphOptimization) ort() ort.GraphOptimizationLevel {
	switch g {
	case OptimizeDisabled:
		return ort.GraphOptimizationLevelDisableAll
	case OptimizeBasic:
		return ort.GraphOptimizationLevelEnableBasic
	case OptimizeExtended:
		return ort.GraphOptimizationLevelEnableExtended
	}
	return ort.GraphOptimizationLevelEnableAll
}

// Defaults and limits of Config.
const (
	DefaultMaxBodyBytes = 64 << 20
	MaxBatchSizeLimit   = 4096
	MaxDelayLimit       = time.Second
	maxThreads          = 1024
)

// Config configures a Server.
type Config struct {
	// ModelPath is the .onnx file to serve.
	ModelPath string
	// ModelName is the model's name in /v2/models/{name}: the function's
	// name.
	ModelName string
	// LibraryPath is libonnxruntime.so; empty means DefaultLibraryPath.
	LibraryPath string
	// IntraOpThreads sizes ONNX Runtime's pool; 0 means the CPUs this
	// instance may use (runtime.NumCPU capped by its cgroup CPU quota).
	IntraOpThreads int
	// MaxConcurrentRuns bounds how many model runs execute at once; 0 means
	// one per CPU the instance may use. Small runs use one thread however
	// many the pool has, so a run per CPU keeps every core busy, while more
	// would only contend (unfairly: p99 latency explodes). Requests beyond
	// it wait in arrival order.
	MaxConcurrentRuns int
	// GraphOptimization defaults to OptimizeAll.
	GraphOptimization GraphOptimization
	// Spinning lets ONNX Runtime's idle pool threads spin for work. It cuts
	// latency a little and burns CPU that the instance pays for and that
	// HTTP handling needs, so it is off unless asked for.
	Spinning bool
	// MaxBatchSize is the most rows a dynamic batch holds; 0 or 1 turns
	// batching off.
	MaxBatchSize int
	// MaxDelay is how long the first request of a batch may wait for
	// others. A batch starts as soon as it is full; with 0 it starts at once
	// with whatever requests are already queued, which still batches under
	// load because requests queue while a batch runs.
	MaxDelay time.Duration
	// MaxBodyBytes bounds a request body (default 64 MiB); larger ones get
	// 413.
	MaxBodyBytes int64
	// SpawnedAt is when the parent started this process, if it said so; it
	// lets Timings report how long the process took to start.
	SpawnedAt time.Time
	// Spare says the process was started ahead of need and loads the model
	// only now: its process start and library init were paid before the
	// request that waits for the model (logged, for the cold-start split).
	Spare bool
	// Logger receives load and shutdown events; nil discards them.
	Logger *slog.Logger
}

// Validate fills defaults and reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.ModelPath == "":
		return errors.New("onnx config: ModelPath is required")
	case c.ModelName == "":
		return errors.New("onnx config: ModelName is required")
	case strings.ContainsAny(c.ModelName, "/?#% \t\n"):
		return fmt.Errorf("onnx config: ModelName %q cannot appear in a URL path", c.ModelName)
	case c.IntraOpThreads < 0 || c.IntraOpThreads > maxThreads:
		return fmt.Errorf("onnx config: IntraOpThreads %d is out of range (0 to %d)", c.IntraOpThreads, maxThreads)
	case c.MaxConcurrentRuns < 0 || c.MaxConcurrentRuns > maxThreads:
		return fmt.Errorf("onnx config: MaxConcurrentRuns %d is out of range (0 to %d)", c.MaxConcurrentRuns, maxThreads)
	case c.MaxBatchSize < 0 || c.MaxBatchSize > MaxBatchSizeLimit:
		return fmt.Errorf("onnx config: MaxBatchSize %d is out of range (0 to %d)", c.MaxBatchSize, MaxBatchSizeLimit)
	case c.MaxDelay < 0 || c.MaxDelay > MaxDelayLimit:
		return fmt.Errorf("onnx config: MaxDelay %s is out of range (0 to %s)", c.MaxDelay, MaxDelayLimit)
	case c.MaxBodyBytes < 0:
		return errors.New("onnx config: MaxBodyBytes must not be negative")
	}
	switch c.GraphOptimization {
	case "":
		c.GraphOptimization = OptimizeAll
	case OptimizeAll, OptimizeExtended, OptimizeBasic, OptimizeDisabled:
	default:
		return fmt.Errorf("onnx config: GraphOptimization %q is not one of all, extended, basic, disabled", c.GraphOptimization)
	}
	if c.IntraOpThreads == 0 {
		c.IntraOpThreads = defaultThreads()
	}
	if c.MaxConcurrentRuns == 0 {
		c.MaxConcurrentRuns = defaultThreads()
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// LoadTimings splits the cold start of a Server.
type LoadTimings struct {
	// ProcessStart is from Config.SpawnedAt to the start of library
	// initialisation; 0 when SpawnedAt is unknown.
	ProcessStart time.Duration
	// LibraryInit is loading libonnxruntime and creating its environment
	// (paid once per process).
	LibraryInit time.Duration
	// ModelRead is mapping, hashing and parsing the model file.
	ModelRead time.Duration
	// SessionCreate is ONNX Runtime building the session: graph
	// optimisation, kernel selection, weight pre-packing.
	SessionCreate time.Duration
}

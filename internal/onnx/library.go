package onnx

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// LibraryEnv names the environment variable that points at the ONNX Runtime
// shared library when no path is configured.
const LibraryEnv = "EBB_ONNXRUNTIME_LIB"

// defaultLibraryRel is where scripts/fetch-onnxruntime.sh installs the
// library, relative to the repository (or release) root.
var defaultLibraryRel = filepath.Join(".cache", "onnxruntime", "lib", "libonnxruntime.so.1")

// ErrLibraryNotFound is returned when no ONNX Runtime library can be found;
// its message says how to install one.
var ErrLibraryNotFound = errors.New("onnx runtime library not found")

// libraryHelp is appended to every "library missing" error: the user's next
// step, in one line.
const libraryHelp = "install it with scripts/fetch-onnxruntime.sh (ONNX Runtime 1.24.x from the npm package onnxruntime-node), " +
	"or point " + LibraryEnv + " (or the --onnxruntime-lib flag) at libonnxruntime.so.1"

// DefaultLibraryPath finds the ONNX Runtime library: $EBB_ONNXRUNTIME_LIB if
// set, else .cache/onnxruntime/lib/libonnxruntime.so.1 next to the running
// executable, else the same path under the current directory. The error wraps
// ErrLibraryNotFound and lists where it looked.
func DefaultLibraryPath() (string, error) {
	if p := os.Getenv(LibraryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v; %s", ErrLibraryNotFound, LibraryEnv, p, err, libraryHelp)
		}
		return p, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			tried = append(tried, filepath.Join(filepath.Dir(exe), defaultLibraryRel))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		tried = append(tried, filepath.Join(wd, defaultLibraryRel))
	}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (looked in %s and $%s); %s", ErrLibraryNotFound, strings.Join(tried, ", "), LibraryEnv, libraryHelp)
}

// The ONNX Runtime environment is per process and cannot be re-created with
// another library, so InitLibrary records what it did.
var lib struct {
	mu        sync.Mutex // guards the fields below
	path      string     // library loaded; "" before the first success
	version   string
	initStart time.Time
	initTime  time.Duration
}

// InitLibrary loads the ONNX Runtime shared library at path (empty means
// DefaultLibraryPath) and creates the process's ONNX Runtime environment.
// Only the first successful call does work: later calls with the same path
// (or an empty one) return nil, with another path an error.
func InitLibrary(path string) error {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	if lib.path != "" {
		if path == "" || sameFile(path, lib.path) {
			return nil
		}
		return fmt.Errorf("init onnx runtime: already initialised with %s, not %s", lib.path, path)
	}
	if path == "" {
		p, err := DefaultLibraryPath()
		if err != nil {
			return err
		}
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%w: %v; %s", ErrLibraryNotFound, err, libraryHelp)
	}
	start := time.Now()
	ort.SetSharedLibraryPath(path)
	// Warnings only: ONNX Runtime's info level logs every session creation
	// to stderr, which is the function's log stream.
	if err := ort.InitializeEnvironment(ort.WithLogLevelWarning()); err != nil {
		return fmt.Errorf("init onnx runtime from %s: %w (ebb needs ONNX Runtime 1.24 or newer; %s)", path, err, libraryHelp)
	}
	lib.initStart, lib.initTime = start, time.Since(start)
	lib.path = path
	lib.version = ort.GetVersion()
	return nil
}

// LibraryVersion is the version of the loaded ONNX Runtime ("" before
// InitLibrary succeeds).
func LibraryVersion() string {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	return lib.version
}

func libraryInitTimes() (time.Time, time.Duration) {
	lib.mu.Lock()
	defer lib.mu.Unlock()
	return lib.initStart, lib.initTime
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// cgroupCPUFiles are read to find the CPU quota of the instance. Tests
// substitute them.
var cgroupCPUFiles = struct{ v2, v1Quota, v1Period string }{
	v2:       "/sys/fs/cgroup/cpu.max",
	v1Quota:  "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
	v1Period: "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
}

// defaultThreads is runtime.NumCPU capped by the cgroup CPU quota: ONNX
// Runtime sizes its pool by the cores it sees, and an instance limited to
// 1.5 CPUs that runs 16 threads spends its quota on contention.
func defaultThreads() int {
	n := runtime.NumCPU()
	if q, ok := cgroupCPUQuota(); ok {
		n = min(n, max(1, int(math.Ceil(q))))
	}
	return max(n, 1)
}

// cgroupCPUQuota returns the CPU quota in cores, if one is set and readable.
func cgroupCPUQuota() (float64, bool) {
	if b, err := os.ReadFile(cgroupCPUFiles.v2); err == nil {
		return parseCPUMax(string(b))
	}
	q, errQ := os.ReadFile(cgroupCPUFiles.v1Quota)
	p, errP := os.ReadFile(cgroupCPUFiles.v1Period)
	if errQ != nil || errP != nil {
		return 0, false
	}
	return parseCPUMax(strings.TrimSpace(string(q)) + " " + strings.TrimSpace(string(p)))
}

// parseCPUMax parses "QUOTA PERIOD" (cgroup v2 cpu.max; v1 files joined). A
// quota of "max" or a negative one means no limit.
func parseCPUMax(s string) (float64, bool) {
	f := strings.Fields(s)
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	q, err1 := strconv.ParseFloat(f[0], 64)
	p, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return q / p, true
}

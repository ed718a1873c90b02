package pyruntime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/runtimeapi"
)

// testZygote is a real zygote process and ebb's end of its channel.
type testZygote struct {
	z        *Zygote
	cmd      *exec.Cmd
	root     string // the task directory
	shimDir  string
	stderr   *ebbtest.Buffer
	mu       sync.Mutex // guards exits
	exits    map[int]syscall.WaitStatus
	children []int // namespace pids forked, killed at cleanup
}

type zygoteOpts struct {
	preload  []string
	newPidNS bool   // run the zygote as pid 1 of a new pid namespace
	program  []byte // zygote.py to run; nil means ZygoteProgram
}

// startZygote runs a zygote for handler over files, the way the instance
// package does, and waits until it is ready. It works from tb so that
// benchmarks can use it.
func startZygote(tb testing.TB, files map[string]string, handler string, o zygoteOpts) *testZygote {
	tb.Helper()
	if _, err := os.Stat(DefaultPython); err != nil {
		tb.Skipf("no %s: %v", DefaultPython, err)
	}
	root := tb.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	shimDir := tb.TempDir()
	path, err := WriteZygote(shimDir)
	if err != nil {
		tb.Fatalf("WriteZygote: %v", err)
	}
	if o.program != nil {
		if err := os.WriteFile(path, o.program, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	ours, theirs, err := ControlPair()
	if err != nil {
		tb.Fatal(err)
	}
	tz := &testZygote{root: root, shimDir: shimDir, stderr: &ebbtest.Buffer{}, exits: map[int]syscall.WaitStatus{}}
	z, err := NewZygote(ours, func(pid int, ws syscall.WaitStatus) {
		tz.mu.Lock()
		tz.exits[pid] = ws
		tz.mu.Unlock()
	})
	if err != nil {
		tb.Fatal(err)
	}
	tz.z = z
	argv := ZygoteCommand("", path)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = root
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "_HANDLER=" + handler, "LAMBDA_TASK_ROOT=" + root,
		"EBB_PRELOAD=" + strings.Join(o.preload, ",")}, ZygoteThreadEnv...)
	cmd.Stdout, cmd.Stderr = tz.stderr, tz.stderr
	cmd.ExtraFiles = []*os.File{theirs}
	if o.newPidNS {
		if os.Geteuid() != 0 {
			tb.Skip("a new pid namespace needs root")
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		z.Close()
		if o.newPidNS && errors.Is(err, syscall.EPERM) {
			tb.Skipf("no new pid namespace here: %v", err)
		}
		tb.Fatalf("start zygote: %v", err)
	}
	tz.cmd = cmd
	tb.Cleanup(func() {
		z.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("zygote output:\n%s", tz.stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	info, err := z.WaitReady(ctx)
	if err != nil {
		tb.Fatalf("zygote WaitReady: %v\n%s", err, tz.stderr.String())
	}
	if info.Threads != "" {
		tb.Fatalf("zygote has threads: %s", info.Threads)
	}
	return tz
}

// child is one forked instance with its Runtime API server.
type child struct {
	srv            *runtimeapi.Server
	pid            int // as the zygote sees it
	stdout, stderr *ebbtest.Buffer
}

type forkOpts struct {
	env         map[string]string
	cgroupFiles []*os.File
	hello       *os.File
}

// fork forks one child serving a fresh runtime API server; it does not wait
// for it to be ready.
func (tz *testZygote) fork(tb testing.TB, o forkOpts) *child {
	tb.Helper()
	srv, err := runtimeapi.New(runtimeapi.Config{FunctionName: "py"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { srv.Close() })
	env := map[string]string{"PATH": "/usr/bin:/bin", "AWS_LAMBDA_RUNTIME_API": srv.Addr(), "_HANDLER": "x.y",
		"LAMBDA_TASK_ROOT": tz.root, "AWS_LAMBDA_FUNCTION_NAME": "py"}
	for k, v := range o.env {
		env[k] = v
	}
	c := &child{srv: srv, stdout: &ebbtest.Buffer{}, stderr: &ebbtest.Buffer{}}
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	go io.Copy(c.stdout, outR)
	go io.Copy(c.stderr, errR)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pid, err := tz.z.Fork(ctx, ForkRequest{Env: env, Dir: tz.root, CgroupFiles: o.cgroupFiles, Hello: o.hello, Stdout: outW, Stderr: errW})
	outW.Close()
	errW.Close()
	if err != nil {
		tb.Fatalf("Fork: %v", err)
	}
	c.pid = pid
	tz.children = append(tz.children, pid)
	return c
}

func waitReady(tb testing.TB, c *child) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.srv.WaitReady(ctx); err != nil {
		tb.Fatalf("child WaitReady: %v\nstderr: %s", err, c.stderr.String())
	}
}

func invokeChild(tb testing.TB, c *child, id, payload string) []byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.srv.Invoke(ctx, runtimeapi.Request{ID: id, Payload: []byte(payload)})
	if err != nil {
		tb.Fatalf("Invoke: %v\nstderr: %s", err, c.stderr.String())
	}
	return out
}

// nsPids returns the NSpid line of /proc/PID/status: the pid in each pid
// namespace from the reader's down to the process's own.
func nsPids(tb testing.TB, pid int) []int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			var out []int
			for _, f := range strings.Fields(rest) {
				n, _ := strconv.Atoi(f)
				out = append(out, n)
			}
			return out
		}
	}
	tb.Fatalf("/proc/%d/status has no NSpid", pid)
	return nil
}

const echoPy = `
import os

calls = []

def handler(event, context):
    calls.append(context.aws_request_id)
    if isinstance(event, dict) and event.get("fail"):
        raise ValueError("warmup\nwent wrong")
    if isinstance(event, dict) and event.get("print"):
        print("priming", event["print"])
    return {"calls": calls, "pid": os.getpid(), "warmup_env": os.environ.get("EBB_WARMUP"), "event": event}
`

// TestZygoteHelloAndCgroupFiles forks children with cgroup.procs
// descriptors and a hello socket, plainly and from a zygote in a pid
// namespace of its own: the child writes "0" through each descriptor, and
// ReadHello returns its pid as this process sees it while Fork returns the
// namespace's.
func TestZygoteHelloAndCgroupFiles(t *testing.T) {
	for _, newNS := range []bool{false, true} {
		t.Run(map[bool]string{false: "same pid namespace", true: "new pid namespace"}[newNS], func(t *testing.T) {
			tz := startZygote(t, map[string]string{"app.py": echoPy}, "app.handler", zygoteOpts{newPidNS: newNS})
			// Pipes stand in for cgroup.procs: they show what the child
			// writes, and that it closes them.
			r1, w1, _ := os.Pipe()
			r2, w2, _ := os.Pipe()
			ours, theirs, err := HelloPair()
			if err != nil {
				t.Fatal(err)
			}
			defer ours.Close()
			c := tz.fork(t, forkOpts{cgroupFiles: []*os.File{w1, w2}, hello: theirs})
			w1.Close()
			w2.Close()
			theirs.Close()
			for i, r := range []*os.File{r1, r2} {
				b, err := io.ReadAll(r) // EOF: the child and the zygote closed their copies
				if err != nil || string(b) != "0" {
					t.Errorf("cgroup file %d got %q, %v; want \"0\"", i, b, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			host, err := ReadHello(ctx, ours)
			if err != nil {
				t.Fatalf("ReadHello: %v", err)
			}
			ns := nsPids(t, host)
			if ns[0] != host || ns[len(ns)-1] != c.pid {
				t.Errorf("NSpid of %d = %v; want %d first and the fork's pid %d last", host, ns, host, c.pid)
			}
			if newNS && (len(ns) != 2 || host == c.pid) {
				t.Errorf("NSpid = %v, fork pid %d, hello pid %d; want two namespaces and different pids", ns, c.pid, host)
			}
			waitReady(t, c)
			var got struct{ Pid int }
			if err := json.Unmarshal(invokeChild(t, c, "r1", `{}`), &got); err != nil || got.Pid != c.pid {
				t.Errorf("child says pid %d (%v), want the namespace pid %d", got.Pid, err, c.pid)
			}
		})
	}
}

// TestReadHelloEndsWithoutHello: a dead child (EOF) and a cancelled wait
// both end ReadHello with an error.
func TestReadHelloEndsWithoutHello(t *testing.T) {
	ours, theirs, err := HelloPair()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := ReadHello(ctx, ours); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ReadHello with nobody there = %v, want context.DeadlineExceeded", err)
	}
	theirs.Close()
	if _, err := ReadHello(context.Background(), ours); err == nil {
		t.Errorf("ReadHello after the other end closed = nil error, want one")
	}
}

// TestZygoteCgroupFilesRealCgroup puts a child into a real cgroup through a
// descriptor opened here.
func TestZygoteCgroupFilesRealCgroup(t *testing.T) {
	var dir string
	for _, base := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		d := filepath.Join(base, fmt.Sprintf("ebb-pyruntime-test-%d", os.Getpid()))
		if err := os.Mkdir(d, 0o755); err == nil {
			if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
				dir = d
				break
			}
			os.Remove(d)
		}
	}
	if dir == "" {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "no writable cgroup hierarchy")
	}
	tz := startZygote(t, map[string]string{"app.py": echoPy}, "app.handler", zygoteOpts{})
	t.Cleanup(func() {
		for _, pid := range tz.children {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for i := 0; i < 100 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	files, err := OpenCgroupProcs([]string{filepath.Join(dir, "cgroup.procs")})
	if err != nil {
		t.Fatal(err)
	}
	c := tz.fork(t, forkOpts{cgroupFiles: files})
	for _, f := range files {
		f.Close()
	}
	waitReady(t, c)
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if !strings.Contains("\n"+string(b), "\n"+strconv.Itoa(c.pid)+"\n") {
		t.Errorf("%s/cgroup.procs = %q, want the child %d", dir, b, c.pid)
	}
}

// TestZygoteRefusesWrongDescriptorCount: a request whose descriptors do not
// match what it announces is refused, not half-applied.
func TestZygoteRefusesWrongDescriptorCount(t *testing.T) {
	tz := startZygote(t, map[string]string{"app.py": echoPy}, "app.handler", zygoteOpts{})
	_, w, _ := os.Pipe()
	defer w.Close()
	body := []byte(`{"op":"fork","tag":999,"dir":"/","cgroup_fds":2}`)
	if _, _, err := tz.z.conn.WriteMsgUnix(body, syscall.UnixRights(int(w.Fd()), int(w.Fd()), int(w.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	// The zygote still serves well-formed requests afterwards.
	c := tz.fork(t, forkOpts{})
	waitReady(t, c)
}

// TestWarmupForkedChild: a child forked with EBB_WARMUP runs the handler
// once with it before its first poll, and user code no longer sees it.
func TestWarmupForkedChild(t *testing.T) {
	tz := startZygote(t, map[string]string{"app.py": echoPy}, "app.handler", zygoteOpts{})
	c := tz.fork(t, forkOpts{env: map[string]string{"EBB_WARMUP": `{"print":"hi"}`}})
	waitReady(t, c)
	// Printed before the first poll, so before ready; it reaches the
	// buffer through a pipe and a copier, which may lag behind.
	c.stdout.WaitFor("priming hi\n", 10*time.Second)
	if out := c.stdout.String(); out != "priming hi\n" {
		t.Errorf("stdout at ready = %q, want the warmup's line", out)
	}
	var got struct {
		Calls     []string
		WarmupEnv *string `json:"warmup_env"`
	}
	if err := json.Unmarshal(invokeChild(t, c, "r1", `{}`), &got); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Calls, ",") != "warmup,r1" || got.WarmupEnv != nil {
		t.Errorf("calls = %q, EBB_WARMUP = %v; want [warmup r1] and unset", got.Calls, got.WarmupEnv)
	}
	// Without the variable, nothing runs ahead.
	c2 := tz.fork(t, forkOpts{})
	waitReady(t, c2)
	if err := json.Unmarshal(invokeChild(t, c2, "r2", `{}`), &got); err != nil || strings.Join(got.Calls, ",") != "r2" {
		t.Errorf("calls without warmup = %q (%v), want [r2]", got.Calls, err)
	}
}

// TestWarmupFreshInterpreter: the same for a python instance started
// without the zygote; a failing warmup is one [WARN] line and the instance
// serves on.
func TestWarmupFreshInterpreter(t *testing.T) {
	for _, tc := range []struct {
		name, warmup, wantCalls, wantStderr string
	}{
		{"ok", `{"x":1}`, "warmup,r1", ""},
		{"handler raises", `{"fail":true}`, "warmup,r1", "[WARN] warmup: ValueError: warmup went wrong\n"},
		{"not json", `{nope`, "r1", "[WARN] warmup: JSONDecodeError: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := startWith(t, map[string]string{"app.py": echoPy}, "app.handler", runtimeapi.Config{}, "EBB_WARMUP="+tc.warmup)
			if err := in.srv.WaitReady(timeout(t)); err != nil {
				t.Fatalf("WaitReady: %v", err)
			}
			// The warning was written before ready, but reaches the buffer
			// through a pipe and a copier, which may lag behind.
			if tc.wantStderr != "" {
				in.stderr.WaitFor("\n", 10*time.Second)
			}
			out, err := in.invoke(t, "r1", `{}`)
			if err != nil {
				t.Fatalf("Invoke: %v", err)
			}
			stderr := in.stderr.String()
			if tc.wantStderr == "" && stderr != "" || !strings.HasPrefix(stderr, tc.wantStderr) || strings.Count(stderr, "\n") > 1 {
				t.Errorf("stderr = %q, want one line starting %q (or none)", stderr, tc.wantStderr)
			}
			var got struct {
				Calls     []string
				WarmupEnv *string `json:"warmup_env"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.Calls, ",") != tc.wantCalls || got.WarmupEnv != nil {
				t.Errorf("calls = %q, EBB_WARMUP = %v; want %s and unset", got.Calls, got.WarmupEnv, tc.wantCalls)
			}
		})
	}
}

// TestNothingWrittenNextToShim: the shim's directory will be a read-only
// mount, so neither the zygote nor a fresh interpreter may write there
// (__pycache__ in particular).
func TestNothingWrittenNextToShim(t *testing.T) {
	tz := startZygote(t, map[string]string{"app.py": echoPy}, "app.handler", zygoteOpts{})
	c := tz.fork(t, forkOpts{})
	waitReady(t, c)
	invokeChild(t, c, "r1", `{}`)
	entries, _ := os.ReadDir(tz.shimDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != ShimName+","+ZygoteName {
		t.Errorf("shim dir holds %q, want only the shim and the zygote", names)
	}
}

// TestZygoteFreezesBeforeFork: the objects alive at the end of the imports
// are frozen, so a child's collections do not visit them.
func TestZygoteFreezesBeforeFork(t *testing.T) {
	files := map[string]string{"app.py": "import gc\n\ndef handler(event, context):\n    return gc.get_freeze_count()\n"}
	tz := startZygote(t, files, "app.handler", zygoteOpts{})
	c := tz.fork(t, forkOpts{})
	waitReady(t, c)
	n, err := strconv.Atoi(string(invokeChild(t, c, "r1", `{}`)))
	if err != nil || n < 1000 {
		t.Errorf("gc.get_freeze_count() in a child = %d (%v), want the zygote's objects (thousands)", n, err)
	}
}

// modelPy is a handler with numpy and sklearn at module scope, as a typical
// python function has them.
const modelPy = `
import gc
import resource
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(0)
X = rng.normal(size=(500, 20))
model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))

def handler(event, context):
    if event.get("collect"):
        gc.collect()  # what a long-lived instance does now and then
    t0, f0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = np.asarray(event["features"], dtype=float)
    p = model.predict_proba(x)[:, 1].tolist()
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return {"p": p, "ms": (time.perf_counter() - t0) * 1000, "faults": f1 - f0}
`

var (
	modelEvent = `{"features": [[` + strings.TrimSuffix(strings.Repeat("0.5,", 20), ",") + `]]}`
	// collectEvent also runs a full collection in the child first: the
	// collection of the oldest generation is what walks (and without
	// gc.freeze copies) the objects shared with the zygote.
	collectEvent = strings.Replace(modelEvent, "{", `{"collect": true, `, 1)
)

func needModules(tb testing.TB) {
	tb.Helper()
	if err := exec.Command(DefaultPython, "-c", "import numpy, sklearn").Run(); err != nil {
		tb.Skipf("%s lacks numpy or sklearn: %v", DefaultPython, err)
	}
}

// minorFaults is field 10 of /proc/PID/stat.
func minorFaults(tb testing.TB, pid int) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, _ := strconv.Atoi(f[7]) // fields from 3 (state) on
	return n
}

// pssKiB is the Pss line of /proc/PID/smaps_rollup.
func pssKiB(tb testing.TB, pid int) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	tb.Fatalf("no Pss in /proc/%d/smaps_rollup", pid)
	return 0
}

// BenchmarkForkFirstCall measures the first request of a freshly forked
// child (numpy and sklearn at module scope): as forked, and primed with
// EBB_WARMUP before its first poll. ms/first and faults/first are that
// request's latency (through the Runtime API) and the child's minor page
// faults during it; ms/second is the next request, for reference. The
// handler-* metrics are the same measured inside the handler, without the
// Runtime API's round trip and the machine's scheduling noise around it.
//
//	go test -run XXX -bench ForkFirstCall -benchtime 20x ./internal/pyruntime
func BenchmarkForkFirstCall(b *testing.B) {
	needModules(b)
	tz := startZygote(b, map[string]string{"app.py": modelPy}, "app.handler", zygoteOpts{preload: []string{"numpy", "sklearn"}})
	for _, primed := range []bool{false, true} {
		b.Run(map[bool]string{false: "as-forked", true: "primed"}[primed], func(b *testing.B) {
			env := map[string]string{}
			if primed {
				env["EBB_WARMUP"] = modelEvent
			}
			var first, second time.Duration
			var faults int
			var inFirst, inSecond struct{ ms, faults float64 }
			inHandler := func(out []byte, acc *struct{ ms, faults float64 }) {
				var r struct{ Ms, Faults float64 }
				if err := json.Unmarshal(out, &r); err != nil {
					b.Fatal(err)
				}
				acc.ms += r.Ms
				acc.faults += r.Faults
			}
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				c := tz.fork(b, forkOpts{env: env})
				waitReady(b, c)
				time.Sleep(5 * time.Millisecond) // the poll is in; let the child settle in its read
				f0 := minorFaults(b, c.pid)
				t0 := time.Now()
				out := invokeChild(b, c, "first", modelEvent)
				first += time.Since(t0)
				faults += minorFaults(b, c.pid) - f0
				inHandler(out, &inFirst)
				t1 := time.Now()
				out = invokeChild(b, c, "second", modelEvent)
				second += time.Since(t1)
				inHandler(out, &inSecond)
				syscall.Kill(c.pid, syscall.SIGKILL)
				c.srv.Close()
			}
			b.ReportMetric(float64(first.Microseconds())/1000/float64(b.N), "ms/first")
			b.ReportMetric(float64(faults)/float64(b.N), "faults/first")
			b.ReportMetric(float64(second.Microseconds())/1000/float64(b.N), "ms/second")
			n := float64(b.N)
			b.ReportMetric(inFirst.ms/n, "handler-ms/first")
			b.ReportMetric(inFirst.faults/n, "handler-faults/first")
			b.ReportMetric(inSecond.ms/n, "handler-ms/second")
			b.ReportMetric(inSecond.faults/n, "handler-faults/second")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkForkPSS measures the proportional set size of a zygote with one
// child and with eight (numpy and sklearn at module scope, each child has
// served one request and then one that runs a full gc.collect() first), with
// the zygote's gc.freeze and without it. It runs
// once whatever b.N is.
//
//	go test -run XXX -bench ForkPSS -benchtime 1x ./internal/pyruntime
func BenchmarkForkPSS(b *testing.B) {
	needModules(b)
	for _, freeze := range []bool{true, false} {
		b.Run(map[bool]string{true: "gc.freeze", false: "no-freeze"}[freeze], func(b *testing.B) {
			prog := ZygoteProgram
			if !freeze {
				prog = bytes.Replace(prog, []byte("    gc.freeze()\n"), []byte("    pass\n"), 1)
				if bytes.Equal(prog, ZygoteProgram) {
					b.Fatal("gc.freeze() not found in zygote.py")
				}
			}
			tz := startZygote(b, map[string]string{"app.py": modelPy}, "app.handler", zygoteOpts{preload: []string{"numpy", "sklearn"}, program: prog})
			var kids []*child
			total := func() (all, children int) {
				all = pssKiB(b, tz.cmd.Process.Pid)
				for _, c := range kids {
					p := pssKiB(b, c.pid)
					all += p
					children += p
				}
				return all, children
			}
			grow := func(n int) {
				for len(kids) < n {
					c := tz.fork(b, forkOpts{})
					waitReady(b, c)
					invokeChild(b, c, "r", modelEvent)
					kids = append(kids, c)
				}
				for _, c := range kids {
					invokeChild(b, c, "again", collectEvent)
				}
			}
			grow(1)
			all1, kid1 := total()
			grow(8)
			all8, kid8 := total()
			for _, c := range kids {
				syscall.Kill(c.pid, syscall.SIGKILL)
			}
			b.ReportMetric(float64(all1)/1024, "MiB-pss-1")
			b.ReportMetric(float64(all8)/1024, "MiB-pss-8")
			b.ReportMetric(float64(kid1)/1024, "MiB-child-1")
			b.ReportMetric(float64(kid8-kid1)/7/1024, "MiB/extra-child")
			b.ReportMetric(0, "ns/op")
		})
	}
}

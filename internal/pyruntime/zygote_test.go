package pyruntime

import (
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

	"github.com/ebb-run/ebb/internal/runtimeapi"
)

// testZygote is a real zygote process and ebb's end of its channel.
type testZygote struct {
	z        *Zygote
	cmd      *exec.Cmd
	root     string // the task directory
	shimDir  string
	stderr   *syncBuffer
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
	tz := &testZygote{root: root, shimDir: shimDir, stderr: &syncBuffer{}, exits: map[int]syscall.WaitStatus{}}
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
	stdout, stderr *syncBuffer
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
	c := &child{srv: srv, stdout: &syncBuffer{}, stderr: &syncBuffer{}}
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
		t.Skip("no writable cgroup hierarchy")
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
	// Printed before the first poll, so before ready.
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
			stderr := in.stderr.String()
			if tc.wantStderr == "" && stderr != "" || !strings.HasPrefix(stderr, tc.wantStderr) || strings.Count(stderr, "\n") > 1 {
				t.Errorf("stderr at ready = %q, want one line starting %q (or none)", stderr, tc.wantStderr)
			}
			out, err := in.invoke(t, "r1", `{}`)
			if err != nil {
				t.Fatalf("Invoke: %v", err)
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

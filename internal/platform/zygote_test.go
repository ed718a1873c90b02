package platform

import (
	"context"
	"fmt"
	"os"
	"path"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/sandbox"
)

// forkProbe reports what a forked instance inherited.
const forkProbe = `
import os, random, time
try:
    import numpy
except ImportError:
    numpy = None
zygote_pid = os.getpid()

def handler(event, context):
    if event.get("alloc_mib"):
        hog = bytearray(event["alloc_mib"] << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("hold"):
        # a test's gate: a file in the code directory (see env.newGate)
        while not os.path.exists(os.path.join(os.environ["LAMBDA_TASK_ROOT"], event["hold"])):
            time.sleep(0.005)
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass
    return {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
            "imported_in": zygote_pid, "rand": random.random(),
            "np": float(numpy.random.random()) if numpy else None,
            "fds": fds, "cgroup": open("/proc/self/cgroup").read(), "cwd": os.getcwd(),
            "tmp": os.environ.get("TMPDIR", ""), "stream": context.log_stream_name}
`

func zygoteOf(t *testing.T, e *env, name string) *api.ZygoteStatus {
	t.Helper()
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		t.Fatalf("status %s: %v", name, err)
	}
	return st.Zygote
}

func waitSpare(t *testing.T, e *env, name string) *api.ZygoteStatus {
	t.Helper()
	var zs *api.ZygoteStatus
	waitFor(t, "the zygote and its spare", 30*time.Second, func() bool {
		zs = zygoteOf(t, e, name)
		return zs != nil && zs.Spare
	})
	return zs
}

func memoryCgroup(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && (f[1] == "memory" || (f[0] == "0" && f[1] == "")) {
			return f[2]
		}
	}
	return ""
}

func TestZygoteForkedInstancesAreIsolated(t *testing.T) {
	needPython(t)
	e := start(t, "")
	e.deploy(fnDir(t, "name: zfork\nruntime: python\nhandler: app.handler\nmax_instances: 4\npreload: [json]\n", map[string]string{"app.py": forkProbe}))
	zs := waitSpare(t, e, "zfork")
	// The zygote as the host sees it; its children report pids of the
	// sandbox's pid namespace, which they share with it.
	zygote := readHostProc(zs.PID)
	if zygote == nil {
		t.Fatalf("zygote pid %d from status: no such process", zs.PID)
	}
	if e.sandboxed() && (len(zygote.nspid) < 2 || zygote.uid == 0) {
		t.Fatalf("zygote %+v: want a sandboxed process, not bwrap's or the host's", zygote)
	}
	e.checkCgroup(zygote)
	// Three requests in flight at once, held until all three are, so that
	// each has an instance of its own (a sleep only made that likely).
	gate := e.newGate("zfork")
	var held []<-chan string
	for range 3 {
		held = append(held, e.goInvoke("zfork", `{"hold":"`+gate.path+`"}`))
	}
	e.waitStatus("zfork", "3 requests in flight", func(st api.FunctionStatus) bool { return st.InFlight == 3 })
	gate.open()
	var replies []map[string]any
	for _, r := range held {
		got := <-r
		code, body, _ := strings.Cut(got, " ")
		if code != "200" {
			t.Fatalf("held request = %s, want 200", got)
		}
		replies = append(replies, decode(t, body))
	}

	seen := map[string]map[string]bool{"pid": {}, "rand": {}, "np": {}, "socket": {}, "cgroup": {}, "cwd": {}, "host pid": {}}
	for _, m := range replies {
		pid := m["pid"].(float64)
		if m["ppid"] != float64(zygote.inner()) || m["imported_in"] != float64(zygote.inner()) {
			t.Errorf("ppid %v, module imported in %v; want both the zygote %d (%d on the host)", m["ppid"], m["imported_in"], zygote.inner(), zs.PID)
		}
		if m["sid"] != pid || m["pgid"] != pid {
			t.Errorf("sid %v pgid %v, want its own session and group %v", m["sid"], m["pgid"], pid)
		}
		// The host's view of the instance: its status pid is the child
		// of that zygote that reported pid, in the zygote's namespace.
		var proc *hostProc
		for _, h := range e.instanceProcs("zfork") {
			if h.pidNS == zygote.pidNS && h.inner() == int(pid) {
				proc = h
			}
		}
		if proc == nil || proc.ppid != zs.PID || proc.uid != zygote.uid {
			t.Fatalf("instance %v: host process %+v, want a child of the zygote %d reported in status", pid, proc, zs.PID)
		}
		seen["host pid"][fmt.Sprint(proc.pid)] = true
		// Its cgroup, from the host (inside, a cgroup namespace hides
		// the path): its own, next to the zygote's.
		cg := proc.cgroup
		if zygote.cgroup != "" && (cg == "" || cg == zygote.cgroup || path.Dir(cg) != path.Dir(zygote.cgroup)) {
			t.Errorf("instance cgroup %q, zygote cgroup %q: want its own next to it", cg, zygote.cgroup)
		}
		if e.sandboxed() {
			// No host directories: the code at /var/task, and /tmp is
			// the sandbox's (shared with the zygote's other children;
			// docs/sandbox.md, Known limits).
			if m["cwd"] != "/var/task" || m["tmp"] != "/tmp" {
				t.Errorf("cwd %v tmp %v: want /var/task and the sandbox's /tmp", m["cwd"], m["tmp"])
			}
		} else if !strings.Contains(m["tmp"].(string), "/instances/") || !strings.HasPrefix(m["cwd"].(string), strings.TrimSuffix(m["tmp"].(string), "/tmp")) {
			t.Errorf("cwd %v tmp %v: want the instance's own directories", m["cwd"], m["tmp"])
		}
		sockets := 0
		for fd, target := range m["fds"].(map[string]any) {
			switch {
			case fd == "0" || fd == "1" || fd == "2":
			case strings.HasPrefix(target.(string), "socket:"):
				sockets++
				seen["socket"][target.(string)] = true
			case strings.HasPrefix(target.(string), "/proc/"):
				// the directory listdir read
			default:
				t.Errorf("inherited fd %s -> %s", fd, target)
			}
		}
		if sockets != 1 {
			t.Errorf("%d sockets open, want only its Runtime API connection: %v", sockets, m["fds"])
		}
		for _, k := range []string{"pid", "rand", "np", "cgroup", "cwd"} {
			v := fmt.Sprint(m[k])
			switch {
			case k == "cgroup":
				v = cg
				if cg == "" {
					continue // no cgroups
				}
			case k == "np" && m[k] == nil:
				continue // numpy not installed
			case k == "cwd" && e.sandboxed():
				continue // /var/task, the same read-only code for all
			}
			if seen[k][v] {
				t.Errorf("%s %s is shared between instances", k, v)
			}
			seen[k][v] = true
		}
	}
	if len(seen["host pid"]) != len(replies) {
		t.Errorf("host pids %v: want one per instance", seen["host pid"])
	}
	if len(seen["socket"]) != len(replies) {
		t.Errorf("sockets %v shared between instances", seen["socket"])
	}
	if st := zygoteOf(t, e, "zfork"); st == nil || st.PSS == 0 || st.Children < 3 {
		t.Errorf("zygote status = %+v, want its memory and >= 3 children", st)
	}
	if _, metrics, _ := e.do("GET", "/metrics", "", nil); !strings.Contains(metrics, `ebb_zygote_memory_bytes{function="zfork",kind="pss"}`) {
		t.Errorf("no zygote memory gauge in /metrics")
	}
	if !strings.Contains(e.logText(), `"fork_to_ready_ms"`) {
		t.Errorf("no cold-start breakdown in the invocation log")
	}
}

func TestZygoteMemoryLimitHolds(t *testing.T) {
	needPython(t)
	e := start(t, "")
	if e.p.CgroupMode() == "none" {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireCgroups, "no cgroups: memory limits are not enforced")
	}
	e.deploy(fnDir(t, "name: zmem\nruntime: python\nhandler: app.handler\nmemory: 64\n", map[string]string{"app.py": forkProbe}))
	waitSpare(t, e, "zmem")
	// A forked child over its limit is killed by the OOM killer, and ebb
	// says so exactly as for a fresh process (see TestMemoryLimit).
	code, body, _ := e.invoke("zmem", `{"alloc_mib": 200}`)
	if code != 502 {
		t.Fatalf("allocating 200 MiB under a 64 MiB limit = %d %s, want 502", code, body)
	}
	if m := decode(t, body); m["errorType"] != "Runtime.OutOfMemory" {
		t.Errorf("over the limit: body = %v, want errorType Runtime.OutOfMemory", m)
	}
	// The zygote is charged to its own cgroup and survives a child's OOM.
	if code, body, _ := e.invoke("zmem", `{}`); code != 200 {
		t.Errorf("after an OOM = %d %s", code, body)
	}
}

func TestZygoteDeathIsRebuilt(t *testing.T) {
	needPython(t)
	e := start(t, "")
	e.deploy(fnDir(t, "name: zdie\nruntime: python\nhandler: app.handler\n", map[string]string{"app.py": forkProbe}))
	zs := waitSpare(t, e, "zdie")
	first := decode(t, mustInvoke(t, e, "zdie", `{}`))
	// The zygote and the instance as the host sees them: their pids
	// inside a sandbox can come again in the next one.
	zygote := readHostProc(zs.PID)
	if zygote == nil || int(first["ppid"].(float64)) != zygote.inner() {
		t.Fatalf("zygote %d from status: %+v, the instance's parent is %v", zs.PID, zygote, first["ppid"])
	}
	inst := e.instanceProc("zdie", int(first["pid"].(float64)))
	if inst.ppid != zs.PID {
		t.Fatalf("instance %+v: want a child of the zygote %d", inst, zs.PID)
	}
	// The python process itself, not a sandbox's bwrap above it.
	if err := syscall.Kill(zs.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Its children die with it (parent-death signal; sandboxed, their
	// pid namespace ends with it); the next cold start builds a new
	// zygote.
	waitFor(t, "the old instance to be gone", 10*time.Second, func() bool { return e.instances("zdie") == 0 })
	e.checkGone(inst, nil, "after the zygote died")
	m := decode(t, mustInvoke(t, e, "zdie", `{}`))
	now := e.instanceProc("zdie", int(m["pid"].(float64)))
	if now.ppid == zs.PID || now.pid == inst.pid || (e.sandboxed() && now.pidNS == zygote.pidNS) {
		t.Errorf("served by %+v after the zygote %d (%+v) died, want a child of a new one", now, zs.PID, zygote)
	}
	if st := zygoteOf(t, e, "zdie"); st == nil || st.PID == zs.PID || st.PID != now.ppid {
		t.Errorf("zygote after rebuild = %+v, want a new one that forked %d", st, now.pid)
	}
}

// freshParent is the parent a fresh interpreter sees: ebb, or in the
// sandbox none (it is its own pid namespace's init).
func freshParent(e *env) int {
	if e.p.SandboxMode() == sandbox.ModeOn {
		return 0
	}
	return os.Getpid()
}

func mustInvoke(t *testing.T, e *env, name, payload string) string {
	t.Helper()
	code, body, _ := e.invoke(name, payload)
	if code != 200 {
		t.Fatalf("invoke %s = %d %s", name, code, body)
	}
	return body
}

func TestZygoteInitErrors(t *testing.T) {
	needPython(t)
	e := start(t, "")
	cases := []struct {
		name, app, manifest, want string
	}{
		{"zraise", "raise RuntimeError('model file is corrupt')\n", "", "Runtime.ImportModuleError"},
		{"zmissing", "x = 1\n", "", "Runtime.HandlerNotFound"},
		{"zsyntax", "def handler(:\n", "", "Runtime.UserCodeSyntaxError"},
		{"zpreload", "def handler(e, c):\n    return 1\n", "preload: [no_such_library]\n", "Runtime.ImportModuleError"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.deploy(fnDir(t, "name: "+c.name+"\nruntime: python\nhandler: app.handler\n"+c.manifest, map[string]string{"app.py": c.app}))
			t0 := time.Now()
			code, body, _ := e.invoke(c.name, `{}`)
			if code != 502 || decode(t, body)["errorType"] != c.want {
				t.Errorf("invoke = %d %s, want 502 %s", code, body, c.want)
			}
			if d := time.Since(t0); d > 10*time.Second {
				t.Errorf("init error took %s to report", d)
			}
		})
	}
}

func TestZygoteOptOut(t *testing.T) {
	needPython(t)
	e := start(t, "")
	e.deploy(fnDir(t, "name: zoff\nruntime: python\nhandler: app.handler\nzygote: false\n", map[string]string{"app.py": forkProbe}))
	m := decode(t, mustInvoke(t, e, "zoff", `{}`))
	if m["ppid"] != float64(freshParent(e)) || m["imported_in"] != m["pid"] {
		t.Errorf("opted-out instance: ppid %v (ebb is %d), imported in %v; want a fresh interpreter", m["ppid"], os.Getpid(), m["imported_in"])
	}
	if zs := zygoteOf(t, e, "zoff"); zs != nil {
		t.Errorf("zygote = %+v for an opted-out function", zs)
	}
}

func TestZygoteWithThreadsFallsBack(t *testing.T) {
	needPython(t)
	e := start(t, "")
	threads := "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True, name='poller').start()\n"
	e.deploy(fnDir(t, "name: zthr\nruntime: python\nhandler: app.handler\npreload: [spawner]\n",
		map[string]string{"app.py": forkProbe, "spawner.py": threads}))
	m := decode(t, mustInvoke(t, e, "zthr", `{}`))
	if m["ppid"] != float64(freshParent(e)) {
		t.Errorf("instance parent %v, want ebb %d (a fresh spawn)", m["ppid"], os.Getpid())
	}
	zs := zygoteOf(t, e, "zthr")
	if zs == nil || !strings.Contains(zs.Fallback, "poller") {
		t.Errorf("zygote status = %+v, want a fallback naming the thread", zs)
	}
	if !strings.Contains(e.logText(), "python zygote disabled") {
		t.Errorf("fallback not logged")
	}
}

func TestZygoteKeepAlive(t *testing.T) {
	needPython(t)
	// The keep-alive runs from the zygote's start: it must outlast building the
	// zygote (over 400 ms under -race on a loaded machine), or the zygote
	// retires before the test sees it.
	e := start(t, "", func(c *Config) { c.ZygoteKeepAlive = 3 * time.Second })
	e.deploy(fnDir(t, "name: zidle\nruntime: python\nhandler: app.handler\nidle_timeout: 100ms\n", map[string]string{"app.py": forkProbe}))
	zs := waitSpare(t, e, "zidle")
	mustInvoke(t, e, "zidle", `{}`)
	// The instance goes idle and stops, then the zygote and its spare.
	waitFor(t, "the zygote to retire", 20*time.Second, func() bool { return zygoteOf(t, e, "zidle") == nil })
	waitFor(t, "the retired zygote to exit", 10*time.Second, func() bool { return syscall.Kill(zs.PID, 0) != nil })
	m := decode(t, mustInvoke(t, e, "zidle", `{}`))
	if m["ppid"] == float64(zs.PID) || m["ppid"] == float64(os.Getpid()) {
		t.Errorf("after retirement served by a child of %v; want a new zygote", m["ppid"])
	}
}

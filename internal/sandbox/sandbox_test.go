package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elastic/go-seccomp-bpf/arch"
)

// requireSandbox skips when the host genuinely cannot sandbox, unless
// EBB_REQUIRE_SANDBOX=1 (CI), where that is a failure.
func requireSandbox(t testing.TB, needPasta bool) {
	t.Helper()
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "not root"
	case lookPath("bwrap") == "":
		why = "bwrap not installed (bubblewrap)"
	case needPasta && lookPath("pasta") == "":
		why = "pasta not installed (passt)"
	case needPasta && lookPath("ip") == "":
		why = "ip not installed (iproute2), needed to build the test's outside host"
	}
	if why == "" {
		return
	}
	if os.Getenv("EBB_REQUIRE_SANDBOX") == "1" {
		t.Fatalf("sandbox required (EBB_REQUIRE_SANDBOX=1) but %s", why)
	}
	t.Skip(why)
}

func lookPath(name string) string {
	p, _ := exec.LookPath(name)
	return p
}

func newSandbox(t testing.TB, cfg Config) *Sandbox {
	t.Helper()
	cfg.Mode = ModeOn
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newNetns(t testing.TB, s *Sandbox, outbound bool) *Netns {
	t.Helper()
	ns, err := s.NewNetns(context.Background(), outbound)
	if err != nil {
		t.Fatalf("NewNetns(outbound=%v): %v", outbound, err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// codeDir is a directory the function uid can read: t.TempDir's parent is
// 0700 root.
func codeDir(t testing.TB, files map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

const testUID = 300123

// start starts spec in ns the way the process manager will: bwrap forked
// from a thread inside the namespace, as the function's uid.
func start(t testing.TB, s *Sandbox, ns *Netns, spec Spec, stdout io.Writer, extra ...*os.File) (*exec.Cmd, *Command) {
	t.Helper()
	if spec.UID == 0 {
		spec.UID, spec.GID = testUID, testUID
	}
	spec.FirstFD = 3 + len(extra)
	c, err := s.Command(spec)
	if err != nil {
		t.Fatalf("Command: %v", err)
	}
	cmd := &exec.Cmd{Path: c.Path, Args: c.Args, ExtraFiles: append(extra, c.ExtraFiles...), SysProcAttr: c.sysProcAttr()}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}
	cmd.Stdout, cmd.Stderr = stdout, stdout
	err = runInNetns(ns.File(), cmd.Start)
	c.Close()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if c.Release != nil {
			c.Release()
		}
	})
	return cmd, c
}

// run runs spec to completion and returns its combined output.
func run(t testing.TB, s *Sandbox, ns *Netns, spec Spec) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd, _ := start(t, s, ns, spec, &out)
	err := cmd.Wait()
	return out.String(), err
}

func TestSeccompTranslation(t *testing.T) {
	p, err := compileSeccomp()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.raw) == 0 || len(p.raw)%8 != 0 {
		t.Fatalf("program is %d bytes", len(p.raw))
	}
	t.Logf("seccomp: %d instructions; rules left out: %v", len(p.raw)/8, p.dropped)
}

func TestModes(t *testing.T) {
	s, err := New(Config{Mode: ModeOff})
	if err != nil || s.Enabled() || s.Mode() != ModeOff || s.Reason() == "" {
		t.Fatalf("off: %v %v %q %q", err, s.Enabled(), s.Mode(), s.Reason())
	}
	s, err = New(Config{Mode: ModeAuto, Bwrap: "/nonexistent/bwrap"})
	if err != nil || s.Enabled() || s.Reason() == "" {
		t.Fatalf("auto without bwrap: %v %v %q", err, s.Enabled(), s.Reason())
	}
	if _, err := s.Command(Spec{}); err == nil {
		t.Fatal("Command on a disabled sandbox succeeded")
	}
	if _, err := New(Config{Mode: ModeOn, Bwrap: "/nonexistent/bwrap"}); err == nil {
		t.Fatal("on without a working bwrap: no error")
	}
	if _, err := New(Config{Mode: "maybe"}); err == nil {
		t.Fatal("bad mode accepted")
	}
	if r, err := ParseUIDRange("300000-365535"); err != nil || r != DefaultUIDs {
		t.Fatalf("ParseUIDRange: %v %v", r, err)
	}
	for _, bad := range []string{"5-10", "400-300000", "2000", "300000-4294967295"} {
		if _, err := ParseUIDRange(bad); err == nil {
			t.Errorf("ParseUIDRange(%q) accepted", bad)
		}
	}
}

// isolationScript reports what a function can see and do, one "name=value"
// per line. Python because it can make raw syscalls.
const isolationScript = `
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def out(k, v): print(f"{k}={v}", flush=True)
def err_of(f):
    try:
        f(); return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def sys_errno(r):
    return "ok" if r == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
out("uid", os.getuid()); out("gid", os.getgid())
out("pids", ",".join(sorted(p for p in os.listdir("/proc") if p.isdigit())))
out("cwd", os.getcwd())
out("write_task", err_of(lambda: open("/var/task/x", "w")))
out("write_root", err_of(lambda: open("/x", "w")))
out("mkdir_root", err_of(lambda: os.mkdir("/d")))
def fill():
    with open("/tmp/big", "wb") as f:
        f.write(b"x" * 1024 * 1024)
        f.write(b"x" * 2 * 1024 * 1024)
out("write_tmp", err_of(lambda: open("/tmp/small", "w").write("hi")))
out("fill_tmp", err_of(fill))
out("shadow", err_of(lambda: open("/etc/shadow").read()))
out("sys", os.path.exists("/sys"))
out("root_dirs", ",".join(sorted(os.listdir("/"))))
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out("nnp", st["NoNewPrivs"].strip()); out("seccomp", st["Seccomp"].strip())
out("capeff", st["CapEff"].strip())
out("unshare_user", sys_errno(libc.unshare(0x10000000)))
out("unshare_net", sys_errno(libc.unshare(0x40000000)))
out("mount", sys_errno(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
out("keyctl", sys_errno(libc.syscall(NR_keyctl, 0, 0, 0, 0, 0)))   # KEYCTL_GET_KEYRING_ID
out("add_key", sys_errno(libc.syscall(NR_add_key, b"user", b"x", b"y", 1, -3)))
out("bpf", sys_errno(libc.syscall(NR_bpf, 0, 0, 0)))
out("clone3", sys_errno(libc.syscall(NR_clone3, 0, 0)))  # ENOSYS, so libc falls back to clone
out("hostname", socket.gethostname())
for host in sys.argv[1:]:
    h, p = host.rsplit(":", 1)
    fam = socket.AF_INET6 if ":" in h else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    out("connect " + host, err_of(lambda: s.connect((h.strip("[]"), int(p)))))
`

func parseFacts(t *testing.T, out string) map[string]string {
	t.Helper()
	facts := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			facts[k] = v
		}
	}
	return facts
}

func TestIsolation(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)

	// A listener ebb has on the host's loopback: the function must not
	// reach it.
	hostL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	port := strconv.Itoa(hostL.Addr().(*net.TCPAddr).Port)

	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	script := isolationScript
	for _, name := range []string{"keyctl", "add_key", "bpf", "clone3"} {
		script = strings.ReplaceAll(script, "NR_"+name, strconv.Itoa(info.SyscallNames[name]))
	}
	code := codeDir(t, map[string]string{"facts.py": script})
	out, err := run(t, s, ns, Spec{Code: code, TmpBytes: 2 << 20, Hostname: "fn",
		Argv: []string{"/usr/bin/python3", "facts.py", "127.0.0.1:" + port, "[::1]:" + port}})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	f := parseFacts(t, out)
	want := map[string]string{
		"uid": strconv.Itoa(testUID), "gid": strconv.Itoa(testUID),
		"cwd": "/var/task", "write_task": "EROFS", "write_tmp": "ok", "fill_tmp": "ENOSPC",
		"write_root": "EROFS", "mkdir_root": "EROFS",
		"shadow": "EACCES", "sys": "False",
		"nnp": "1", "seccomp": "2", "capeff": "0000000000000000",
		"unshare_user": "EPERM", "unshare_net": "EPERM", "mount": "EPERM",
		"hostname":                  "fn",
		"connect 127.0.0.1:" + port: "ECONNREFUSED",
		"connect [::1]:" + port:     "ECONNREFUSED",
		"root_dirs":                 "bin,dev,etc,lib,lib64,proc,sbin,tmp,usr,var",
	}
	if _, err := os.Lstat("/lib32"); err == nil {
		delete(want, "root_dirs") // a multilib host shows more
	}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("%s = %q, want %q", k, f[k], v)
		}
	}
	// Only the sandbox's own processes: bwrap's init and python.
	if pids := strings.Split(f["pids"], ","); len(pids) > 3 {
		t.Errorf("sees pids %v", pids)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
	// The host's listener got nothing.
	hostL.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
	if c, err := hostL.Accept(); err == nil {
		c.Close()
		t.Error("host loopback listener was reached from the sandbox")
	}
}

func TestPythonNumpySklearn(t *testing.T) {
	requireSandbox(t, false)
	if _, err := exec.Command("/usr/bin/python3", "-c", "import numpy, sklearn").CombinedOutput(); err != nil {
		if os.Getenv("EBB_REQUIRE_SANDBOX") == "1" {
			t.Fatalf("python3 with numpy and sklearn: %v", err)
		}
		t.Skip("python3 with numpy and sklearn not installed")
	}
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)
	script := `
import numpy as np
from sklearn.linear_model import LinearRegression
X = np.arange(20, dtype=float).reshape(-1, 1)
m = LinearRegression().fit(X, 3 * X[:, 0] + 2)
print("coef=%.3f intercept=%.3f dot=%.1f" % (m.coef_[0], m.intercept_, np.linalg.inv(np.eye(3) * 2).sum()))
`
	code := codeDir(t, map[string]string{"m.py": script})
	out, err := run(t, s, ns, Spec{Code: code, TmpBytes: 64 << 20, Argv: []string{"/usr/bin/python3", "m.py"}})
	if err != nil || !strings.Contains(out, "coef=3.000 intercept=2.000 dot=1.5") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
}

func TestStaticGoBinary(t *testing.T) {
	requireSandbox(t, false)
	goBin := lookPath("go")
	if goBin == "" {
		t.Skip("no go toolchain to build the test binary")
	}
	src := t.TempDir()
	prog := `package main

import (
	"fmt"
	"net"
	"os"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	sum := make([]int, 8)
	for i := range sum {
		wg.Add(1)
		go func() { defer wg.Done(); for j := 0; j < 1e6; j++ { sum[i] += j % 7 } }()
	}
	wg.Wait()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	l.Close()
	f, err := os.CreateTemp("", "x")
	if err != nil {
		fmt.Println("tmp:", err)
		os.Exit(1)
	}
	f.Close()
	fmt.Println("static ok", sum[0])
}
`
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	code := codeDir(t, nil)
	build := exec.Command(goBin, "build", "-o", filepath.Join(code, "fn"), "main.go")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)
	out, err := run(t, s, ns, Spec{Code: code, TmpBytes: 1 << 20, Argv: []string{"/var/task/fn"}})
	if err != nil || !strings.Contains(out, "static ok") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
}

// serverScript listens on 127.0.0.1:PORT inside, writes "ready", sends
// "from-fn" to the first client; then connects to 127.0.0.1:EBBPORT and
// sends "to-ebb".
const serverScript = `
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1)
print("ready", flush=True)
c, _ = srv.accept(); c.sendall(b"from-fn"); c.close()
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
s.sendall(b"to-ebb"); s.close()
`

func TestNetnsListenDial(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)
	l, err := ns.Listen("tcp", "127.0.0.1:9001")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Same port on the host: proves the listener is not in the host's
	// namespace (it would collide or be reachable there).
	if hl, err := net.Listen("tcp", "127.0.0.1:9001"); err == nil {
		hl.Close()
	} else {
		t.Logf("host port 9001 busy (%v); not a failure", err)
	}
	if _, err := ns.Listen("tcp", "localhost:1"); err == nil {
		t.Error("Listen accepted a name")
	}

	code := codeDir(t, map[string]string{"srv.py": serverScript})
	var out syncBuffer
	cmd, _ := start(t, s, ns, Spec{Code: code, Argv: []string{"/usr/bin/python3", "srv.py", "8080", "9001"}}, &out)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn net.Conn
	for {
		conn, err = ns.Dial(ctx, "tcp", "127.0.0.1:8080")
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Dial: %v (output %q)", err, out.String())
	}
	got, _ := io.ReadAll(conn)
	conn.Close()
	if string(got) != "from-fn" {
		t.Errorf("Dial read %q", got)
	}
	l.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept: %v (output %q)", err, out.String())
	}
	got, _ = io.ReadAll(c)
	c.Close()
	if string(got) != "to-ebb" {
		t.Errorf("Listen got %q", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("function: %v: %s", err, out.String())
	}
}

// A spare waits, set up, until Release: in the release shim (release.go)
// where there is one, else in bwrap. Either way the command then runs with
// the filter and no_new_privs, and without the block fd.
func TestBlockUntilRelease(t *testing.T) {
	requireSandbox(t, false)
	for _, shim := range []bool{true, false} {
		t.Run(map[bool]string{true: "shim", false: "bwrap"}[shim], func(t *testing.T) {
			s := newSandbox(t, Config{})
			if shim && s.shims == nil {
				t.Skip("no release shim on " + runtime.GOARCH)
			}
			if !shim {
				s.shims = nil
			}
			ns := newNetns(t, s, false)
			var out syncBuffer
			cmd, c := start(t, s, ns, Spec{Code: codeDir(t, nil), Block: true, Argv: []string{"/bin/sh", "-c",
				`echo ran; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; if [ -e /proc/self/fd/4 ]; then echo block-fd-open; fi; ` +
					// The shim every spare of the node runs: a function
					// must not be able to change it.
					`if [ -e /.ebb-release ] && { echo x >/.ebb-release || chmod 777 /.ebb-release || rm /.ebb-release; } 2>/dev/null; then echo shim-changed; fi`}}, &out)
			if got := slices.Contains(cmd.Args, ShimPath); got != shim {
				t.Fatalf("command %q: shim used %v, want %v", cmd.Args, got, shim)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// The event the block stands for: a process of the sandbox
			// sits in read on the block fd (after the setup, before the
			// command's exec). Until then the command must not have run or
			// exited.
			blockFD := 3 + 1 // start's FirstFD (no extra files), plus one
			for deadline := time.Now().Add(15 * time.Second); !readingFD(cmd.Process.Pid, blockFD); time.Sleep(time.Millisecond) {
				select {
				case err := <-done:
					t.Fatalf("exited before Release: %v %q", err, out.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("no process of the sandbox is reading fd %d (the block) 15s after start: %s", blockFD, out.String())
				}
			}
			if out.String() != "" {
				t.Fatalf("ran before Release: %q", out.String())
			}
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil || out.String() != "ran\nNoNewPrivs:\t1\nSeccomp:\t2\n" {
				t.Fatalf("after Release: %v %q", err, out.String())
			}
		})
	}
}

// The second and later commands must get the whole seccomp program too (a
// shared fd offset would give them an empty one, and bwrap fails), and the
// caller's own fds pass through bwrap with their numbers.
func TestSeveralCommandsAndCallerFDs(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)
	code := codeDir(t, nil)
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "caller-%d", i)
		w.Close()
		var out bytes.Buffer
		cmd, _ := start(t, s, ns, Spec{Code: code,
			Argv: []string{"/bin/sh", "-c", "cat <&4; echo; grep Seccomp: /proc/self/status"}}, &out, os.Stdin, r)
		r.Close()
		if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), fmt.Sprintf("caller-%d\nSeccomp:\t2", i)) {
			t.Fatalf("run %d: %v %q", i, err, out.String())
		}
	}
}

// syncBuffer is an output sink the test reads while exec's copier writes.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestNetnsCloseWhileDialing: the last user of a namespace may close it
// while another goroutine still dials or listens in it (a dying instance's
// readiness check). Close waits for the thread in it; later calls fail
// with ErrNetnsClosed, and nothing touches the closed fd (run with -race).
func TestNetnsCloseWhileDialing(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	ns, err := s.NewNetns(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				c, err := ns.Dial(context.Background(), "tcp", "127.0.0.1:1") // refused at once
				if err == nil {
					c.Close()
				}
				if errors.Is(err, ErrNetnsClosed) {
					return
				}
			}
		}()
	}
	ns.Close()
	wg.Wait()
	if _, err := ns.Listen("tcp", "127.0.0.1:0"); !errors.Is(err, ErrNetnsClosed) {
		t.Errorf("Listen after Close: %v, want ErrNetnsClosed", err)
	}
	if _, err := ns.Dial(context.Background(), "tcp", "127.0.0.1:1"); !errors.Is(err, ErrNetnsClosed) {
		t.Errorf("Dial after Close: %v, want ErrNetnsClosed", err)
	}
}

// readingFD says whether root or a descendant of it is blocked in read(2)
// on fd, as /proc/PID/syscall shows a sleeping task's system call and its
// first argument.
func readingFD(root, fd int) bool {
	parent := map[int]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		fields := strings.Fields(string(b[i+1:]))
		pid, _ := strconv.Atoi(strings.Split(f, "/")[2])
		if len(fields) > 1 {
			parent[pid], _ = strconv.Atoi(fields[1])
		}
	}
	want := fmt.Sprintf("%d 0x%x ", syscall.SYS_READ, fd)
	for pid := range parent {
		p := pid
		for p != root && p > 1 {
			p = parent[p]
		}
		if p != root {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid)); err == nil && strings.HasPrefix(string(b), want) {
			return true
		}
	}
	return false
}

// A dial uses sockets made inside the namespace ahead of time (in
// batches): every dial, across several batches, reaches the listener in
// the namespace and not the host's on the same port; a refused one says
// so; Close closes the sockets left over.
func TestNetnsDialPreparedSockets(t *testing.T) {
	requireSandbox(t, false)
	s := newSandbox(t, Config{})
	ns := newNetns(t, s, false)
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// The host's listener on the same port, if free there, must never
	// be reached.
	if hl, err := net.Listen("tcp", addr); err == nil {
		defer hl.Close()
		go func() {
			for {
				c, err := hl.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("host"))
				c.Close()
			}
		}()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("inside"))
			c.Close()
		}
	}()
	fds := func() int {
		es, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	for i := range 3*socketBatch + 1 {
		c, err := ns.Dial(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "inside" {
			t.Fatalf("dial %d read %q, want the namespace's listener", i, got)
		}
	}
	_, err = ns.Dial(context.Background(), "tcp", "127.0.0.1:1")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial of a closed port: %v, want connection refused", err)
	}
	before := fds()
	ns.Close()
	if after := fds(); after >= before-1 {
		t.Errorf("Close left the prepared sockets open: %d fds before, %d after", before, after)
	}
}

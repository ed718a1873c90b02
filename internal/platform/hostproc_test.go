package platform

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/sandbox"
)

// hostProc is what the host sees of one of a function's processes. A
// sandboxed function reports pids of its own pid namespace, which mean
// nothing outside it; tests find its processes from what ebb knows on the
// host instead (the pids `ebb status` gives) and tie them to what the
// function reported through NSpid.
type hostProc struct {
	pid    int    // in the host's (the test's) pid namespace
	ppid   int    // in the host's
	nspid  []int  // NSpid: the host's pid first, the innermost namespace's last
	uid    int    // real uid
	pidNS  string // /proc/PID/ns/pid
	mntNS  string // /proc/PID/ns/mnt
	cgroup string // its memory (v1) or unified (v2) cgroup directory; "" without
}

// inner is its pid in its innermost pid namespace: what it reports itself.
func (h *hostProc) inner() int { return h.nspid[len(h.nspid)-1] }

// readHostProc reads pid's view from /proc; nil when it is gone (or a zombie).
func readHostProc(pid int) *hostProc {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return nil
	}
	h := &hostProc{pid: pid}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		switch {
		case len(f) == 0:
		case k == "State" && (f[0] == "Z" || f[0] == "X"):
			return nil // exited, not yet reaped: gone but for its pid
		case k == "PPid":
			h.ppid, _ = strconv.Atoi(f[0])
		case k == "Uid":
			h.uid, _ = strconv.Atoi(f[0])
		case k == "NSpid":
			for _, s := range f {
				n, _ := strconv.Atoi(s)
				h.nspid = append(h.nspid, n)
			}
		}
	}
	if len(h.nspid) == 0 {
		return nil
	}
	h.pidNS, _ = os.Readlink(dir + "/ns/pid")
	h.mntNS, _ = os.Readlink(dir + "/ns/mnt")
	if cg, err := os.ReadFile(dir + "/cgroup"); err == nil {
		h.cgroup = cgroupDir(string(cg))
	}
	if h.pidNS == "" || h.mntNS == "" {
		return nil
	}
	return h
}

// alive says whether pid is a live (not zombie) process.
func alive(pid int) bool { return readHostProc(pid) != nil }

// cgroupDir is the host directory of the memory (v1) or unified (v2)
// cgroup that procCgroup (a /proc/PID/cgroup, read from the host) names;
// "" when there is none mounted.
func cgroupDir(procCgroup string) string {
	var v1, v2 string
	for _, line := range strings.Split(procCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		switch {
		case len(f) != 3:
		case hasOpt(f[1], "memory"):
			v1 = f[2]
		case f[0] == "0" && f[1] == "":
			v2 = f[2]
		}
	}
	if v1 != "" {
		return mountedAt(v1, func(fstype, super string) bool { return fstype == "cgroup" && hasOpt(super, "memory") })
	}
	if v2 != "" {
		return mountedAt(v2, func(fstype, _ string) bool { return fstype == "cgroup2" })
	}
	return ""
}

// mountedAt is where path p of a filesystem that is matches is mounted,
// from /proc/self/mountinfo; "" if nowhere.
func mountedAt(p string, is func(fstype, super string) bool) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if !ok || len(a) < 5 || len(b) < 3 || !is(b[0], b[2]) {
			continue
		}
		root, mnt := strings.TrimSuffix(a[3], "/"), a[4]
		if rel, ok := strings.CutPrefix(p, root); ok && (rel == "" || strings.HasPrefix(rel, "/")) {
			return filepath.Join(mnt, rel)
		}
	}
	return ""
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// sandboxed says whether e runs functions in the sandbox. With
// EBB_REQUIRE_SANDBOX=1 (CI) start already failed a test that asked for it
// and did not get it.
func (e *env) sandboxed() bool { return e.p.SandboxMode() == sandbox.ModeOn }

// instanceProcs is the host's view of name's instances, by the pid that
// `ebb status` gives for each (the function's own process, not bwrap).
func (e *env) instanceProcs(name string) map[string]*hostProc {
	e.t.Helper()
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		e.t.Fatalf("status %s: %v", name, err)
	}
	out := map[string]*hostProc{}
	for _, in := range st.Instances {
		if in.Pid == 0 {
			continue
		}
		if h := readHostProc(in.Pid); h != nil {
			out[in.ID] = h
		}
	}
	return out
}

// instanceProc finds, from the host, the process of name's instance that
// reported pid (its own view; under the sandbox a pid of its namespace):
// the one instance whose status pid has pid as its innermost NSpid. It
// checks that it is the function's confined process: sandboxed, in a pid
// namespace of its own (not the host's), as the function's uid, under a
// bwrap that ebb started; unsandboxed, pid itself.
func (e *env) instanceProc(name string, pid int) *hostProc {
	e.t.Helper()
	var found []*hostProc
	for _, h := range e.instanceProcs(name) {
		if h.inner() == pid {
			found = append(found, h)
		}
	}
	if len(found) != 1 {
		e.t.Fatalf("%s: %d instances whose status pid is %d inside, want 1", name, len(found), pid)
	}
	h := found[0]
	me := readHostProc(os.Getpid())
	if !e.sandboxed() {
		if h.pid != pid || h.pidNS != me.pidNS {
			e.t.Fatalf("%s unsandboxed: status pid %d (namespace %s), the function says %d", name, h.pid, h.pidNS, pid)
		}
		return h
	}
	st, err := e.c.Status(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(h.nspid) < 2 || h.pidNS == me.pidNS || h.mntNS == me.mntNS || h.uid != int(st.Sandbox.UID) || h.uid == 0 {
		e.t.Fatalf("%s: instance process %+v is not confined (test: %+v, function uid %d)", name, h, me, st.Sandbox.UID)
	}
	// Hold its mount namespace until the test ends: a namespace's number
	// is given to a new one once it is gone, and checkGone looks for
	// processes by that number (a zygote rebuilt in the meantime once
	// came up with the dead one's, under -race).
	if f, err := os.Open("/proc/" + strconv.Itoa(h.pid) + "/ns/mnt"); err == nil {
		if l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err == nil && l == h.mntNS {
			e.t.Cleanup(func() { f.Close() })
		} else {
			f.Close()
			e.t.Fatalf("%s: instance process %d went while the test read it", name, h.pid)
		}
	}
	return h
}

// bwrapOf checks that h's parent is a bwrap that ebb (this process)
// started, and returns it.
func (e *env) bwrapOf(h *hostProc) *hostProc {
	e.t.Helper()
	b := readHostProc(h.ppid)
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(h.ppid) + "/comm")
	if b == nil || b.ppid != os.Getpid() || strings.TrimSpace(string(comm)) != "bwrap" {
		e.t.Fatalf("parent %d of instance process %d: %+v (%q), want a bwrap started by ebb (%d)", h.ppid, h.pid, b, comm, os.Getpid())
	}
	return b
}

// checkGone checks that h, an instance's process, is gone with all that
// was its own: its cgroup; under the sandbox also the bwrap that ran it and
// its mount namespace (and so the private /tmp in it), which no process on
// the host holds any more. what names the event, for the message.
func (e *env) checkGone(h *hostProc, bwrap *hostProc, what string) {
	e.t.Helper()
	if alive(h.pid) {
		e.t.Errorf("%s: instance process %d still alive", what, h.pid)
	}
	if bwrap != nil && alive(bwrap.pid) {
		e.t.Errorf("%s: its bwrap %d still alive", what, bwrap.pid)
	}
	if h.cgroup != "" {
		if _, err := os.Stat(h.cgroup); !os.IsNotExist(err) {
			e.t.Errorf("%s: cgroup %s still there (%v)", what, h.cgroup, err)
		}
	}
	if e.sandboxed() {
		if pids := inMountNS(h.mntNS); len(pids) > 0 {
			e.t.Errorf("%s: processes %v still in the instance's mount namespace %s (its /tmp)", what, pids, h.mntNS)
		}
	}
}

// inMountNS lists the host processes in mount namespace ns.
func inMountNS(ns string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + d.Name() + "/ns/mnt"); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

// checkCgroup checks that h has a cgroup directory of its own when ebb
// runs with cgroups, and fails when cgroups are required but off.
func (e *env) checkCgroup(h *hostProc) {
	e.t.Helper()
	if e.p.CgroupMode() == "none" {
		if ebbtest.Required(ebbtest.RequireCgroups) {
			e.t.Fatalf("%s=1 but ebb runs without cgroups", ebbtest.RequireCgroups)
		}
		h.cgroup = ""
		return
	}
	if fi, err := os.Stat(h.cgroup); h.cgroup == "" || err != nil || !fi.IsDir() {
		e.t.Fatalf("instance process %d: cgroup directory %q (%v)", h.pid, h.cgroup, err)
	}
}

// counter counts executions per request id for asyncfn's "count" (the
// socket's name in the function's code). It is a unix socket the test
// serves, linked into functions' code directories: a sandboxed function
// reaches it read-only at /var/task (connecting writes nothing there),
// where it could reach no directory of the test's, and it lives across
// instances and across ebb restarts.
type counter struct {
	t    testing.TB
	ln   *net.UnixListener
	path string
	done chan struct{}

	mu    sync.Mutex
	n     map[string]int
	total int
}

// counterSock is the name functions are told to dial.
const counterSock = "count.sock"

func newCounter(t testing.TB) *counter {
	t.Helper()
	// Bound at a short path (a socket's path has 108 bytes at most), then
	// linked where functions find it.
	dir, err := os.MkdirTemp("", "cnt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &counter{t: t, path: filepath.Join(dir, "s"), done: make(chan struct{}), n: map[string]int{}}
	c.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: c.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	// Any function uid may connect.
	if err := os.Chmod(c.path, 0o666); err != nil {
		t.Fatal(err)
	}
	go c.serve()
	t.Cleanup(func() { c.ln.Close(); <-c.done })
	return c
}

func (c *counter) serve() {
	defer close(c.done)
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		rid, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil && strings.TrimSpace(rid) != "" {
			c.mu.Lock()
			c.n[strings.TrimSpace(rid)]++
			c.total++
			n := c.n[strings.TrimSpace(rid)]
			c.mu.Unlock()
			fmt.Fprintln(conn, n)
		}
		conn.Close()
	}
}

// into makes the counter reachable as counterSock in codeDir.
func (c *counter) into(codeDir string) {
	c.t.Helper()
	if err := os.Link(c.path, filepath.Join(codeDir, counterSock)); err != nil {
		c.t.Fatalf("link counter into %s: %v", codeDir, err)
	}
}

// counts returns the executions per request id and in all.
func (c *counter) counts() (map[string]int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n), c.total
}

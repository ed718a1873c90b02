package instance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/process"
	"github.com/ebb-run/ebb/internal/sandbox"
)

// listenServer is an http function: it listens on $PORT and says who it is.
const listenServer = `#!/bin/sh
exec /usr/bin/python3 -c 'import os, socket, threading
def serve(c):
    if c.recv(65536):
        body = ("uid=%d" % os.getuid()).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(8)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()'
`

// TestSandboxSpareIsClaimed: a sandboxed http function keeps a spare
// sandbox (bwrap set up, blocked before exec) after Prewarm, and a start
// claims it rather than setting up a new one; the instance it becomes runs
// as the function's uid and answers inside the version's namespace.
func TestSandboxSpareIsClaimed(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "the sandbox needs root")
	}
	if _, err := exec.LookPath("bwrap"); err != nil {
		skipOrFail(t, "no bwrap")
	}
	sb, err := sandbox.New(sandbox.Config{Mode: sandbox.ModeOn})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Close() })
	pm, err := process.NewManager(process.Config{Root: t.TempDir(), CgroupName: fmt.Sprintf("ebbtest-spare-%d", os.Getpid()), CgroupMode: process.ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	code := t.TempDir()
	if err := os.Chmod(code, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(code, "server"), []byte(listenServer), 0o755); err != nil {
		t.Fatal(err)
	}
	uid := sb.UIDs().First + 7
	fn := &ebb.Function{Spec: ebb.Spec{Name: "spare", Runtime: ebb.RuntimeHTTP, Handler: "./server", MemoryMiB: 128, Network: ebb.NetworkNone, IdleTimeout: time.Minute}, Version: 1}
	s, err := NewStarter(Config{Processes: pm, Sandbox: sb, UIDFor: func(string) (uint32, error) { return uid, nil }, ShimDir: t.TempDir()}, fn, code)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := s.launch.(*httpLauncher)
	s.Prewarm()
	deadline := time.Now().Add(30 * time.Second)
	for !l.spares.live() {
		if time.Now().After(deadline) {
			t.Fatal("no spare sandbox 30s after Prewarm")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := s.Start(ctx, "spare-1")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Kill()
	if !inst.ColdStart().Spare || inst.ID() != "spare-1" {
		t.Fatalf("cold start %+v as %q: want the spare claimed as spare-1", inst.ColdStart(), inst.ID())
	}
	c, err := inst.up.Dial(ctx)
	if err != nil {
		t.Fatalf("dial the instance in its namespace: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	if want := fmt.Sprintf("uid=%d", uid); !bytesContain(buf[:n], want) {
		t.Fatalf("answer %q: want %q", buf[:n], want)
	}
}

func bytesContain(b []byte, s string) bool { return len(s) > 0 && strings.Contains(string(b), s) }

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("EBB_REQUIRE_SANDBOX") == "1" {
		t.Fatalf("EBB_REQUIRE_SANDBOX=1 but %s", why)
	}
	t.Skip(why)
}

// TestCheckForkedRefusesForgedHellos: ebb adopts (and may later kill) the
// pid a forked child's hello claims, as root, so a pid that is not the
// child the zygote reported, or not a sandboxed process of the function,
// is refused. Here the forger claims ebb's own test process.
func TestCheckForkedRefusesForgedHellos(t *testing.T) {
	s := &Starter{}
	me := os.Getpid()
	if err := s.checkForked(me, me); err != nil {
		t.Fatalf("unsandboxed, the pid the zygote reported: %v", err)
	}
	if err := s.checkForked(me, me+1); err == nil {
		t.Fatal("a pid whose namespace pid differs from the fork's was accepted")
	}
	s.box = &box{uid: 300123}
	if err := s.checkForked(me, me); err == nil {
		t.Fatal("sandboxed, a host process outside any sandbox was accepted")
	}
	if err := s.checkForked(1<<30, 5); err == nil {
		t.Fatal("a pid that does not exist was accepted")
	}
}

// TestPastaDeathGivesANewNamespace: when a version's pasta dies, the
// namespace it served has no way out; the next instance gets a new
// namespace with a new pasta, and the old one stays for the instances in it
// until the version closes.
func TestPastaDeathGivesANewNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "the sandbox needs root")
	}
	sb, err := sandbox.New(sandbox.Config{Mode: sandbox.ModeOn})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Close() })
	if !sb.Outbound() {
		skipOrFail(t, "no pasta (passt): no outbound networking to lose")
	}
	b := &box{sb: sb, outbound: true, hostname: "pasta-death", ports: map[int]func(){}, users: map[*sandbox.Netns]int{}}
	defer b.close()
	ctx := context.Background()
	ns1, err := b.netns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b.netns(ctx); again != ns1 {
		t.Fatal("a live namespace was replaced")
	}
	pid := ns1.PastaPID()
	if pid == 0 {
		t.Fatal("outbound namespace without pasta")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	select {
	case <-ns1.PastaDone():
	case <-time.After(30 * time.Second):
		t.Fatal("pasta's death was not noticed")
	}
	ns2, err := b.netns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ns2 == ns1 || ns2.PastaPID() == 0 || ns2.PastaPID() == pid {
		t.Fatalf("after pasta died: namespace %p (pasta %d), was %p (pasta %d); want a new one with a new pasta", ns2, ns2.PastaPID(), ns1, pid)
	}
	if err := syscall.Kill(ns2.PastaPID(), 0); err != nil {
		t.Errorf("the new pasta is not running: %v", err)
	}
	b.mu.Lock()
	stale := len(b.stale)
	b.mu.Unlock()
	if stale != 1 {
		t.Errorf("%d stale namespaces kept, want the old one for its instances", stale)
	}
}

// TestBoxNamespaceGoesWithItsLastUser checks that a version's network
// namespace, and its pasta, go once nothing uses it (no process, listener
// or port): a function with nothing running must hold no network stack.
func TestBoxNamespaceGoesWithItsLastUser(t *testing.T) {
	if os.Getuid() != 0 {
		skipOrFail(t, "the sandbox needs root")
	}
	sb, err := sandbox.New(sandbox.Config{Mode: sandbox.ModeOn})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { sb.Close() })
	if !sb.Outbound() {
		skipOrFail(t, "no pasta (passt)")
	}
	b := &box{sb: sb, outbound: true, hostname: "ns-users", ports: map[int]func(){}, users: map[*sandbox.Netns]int{}}
	defer b.close()
	ctx := context.Background()
	ln, err := b.listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	port, _, err := b.reservePort(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := b.current()
	if ns == nil || ns.PastaPID() == 0 {
		t.Fatal("no namespace with pasta while in use")
	}
	ln.Close()
	if cur, _ := b.current(); cur != ns || isClosed(ns.PastaDone()) {
		t.Fatal("the namespace went while a port still used it")
	}
	b.releasePort(port)
	select {
	case <-ns.PastaDone():
	case <-time.After(30 * time.Second):
		t.Fatal("pasta still runs after the namespace's last user went")
	}
	if cur, _ := b.current(); cur != nil {
		t.Error("the unused namespace is still the version's")
	}
	ln, err = b.listen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if cur, _ := b.current(); cur == nil || cur == ns || cur.PastaPID() == 0 {
		t.Error("the next use did not make a new namespace with pasta")
	}
}

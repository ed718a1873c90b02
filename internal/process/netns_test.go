package process

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// newNetns makes a network namespace the way the sandbox does (unshare on a
// locked thread, which then returns to its own) and returns it open.
func newNetns(t *testing.T) *os.File {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root here")
	}
	type result struct {
		f   *os.File
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			c <- result{err: err}
			return
		}
		defer host.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			c <- result{err: err}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if unix.Setns(int(host.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // else the thread dies with the goroutine
		}
		c <- result{f, err}
	}()
	r := <-c
	if r.err != nil {
		t.Skipf("cannot make a network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.f.Close() })
	return r.f
}

func nsInode(t *testing.T, path string) string {
	t.Helper()
	l, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestStartInNetnsAsUser starts a process in a network namespace, under
// another uid and without directories, and checks that the next process
// started without a namespace is back in ebb's (the spawner thread left it).
func TestStartInNetnsAsUser(t *testing.T) {
	ns := newNetns(t)
	forModes(t, func(t *testing.T, mode string) {
		m := newTestManager(t, Config{CgroupMode: mode})
		out := newLineLog()
		const uid = 300321
		p := start(t, m, Spec{ID: "ns", Path: "/bin/sh", Args: []string{"-c", "readlink /proc/self/ns/net; id -u; pwd; echo \"tmp=$TMPDIR\""},
			Env: testEnv, NoDirs: true, NetNS: ns, Credential: &syscall.Credential{Uid: uid, Gid: uid},
			Stdout: out.add})
		waitDone(t, p)
		if err := p.Err(); err != nil {
			t.Fatalf("process failed: %v (output %q)", err, out.lines())
		}
		got := out.lines()
		want := []string{nsInode(t, "/proc/self/fd/"+strconv.Itoa(int(ns.Fd()))), strconv.Itoa(uid), "/", "tmp="}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("output %q, want %q", got, want)
		}
		if _, err := os.Stat(m.root + "/ns"); !os.IsNotExist(err) {
			t.Fatalf("NoDirs made an instance directory: %v", err)
		}
		// Every spawner thread must be back home: start more processes
		// than there are spawners without a namespace.
		host := nsInode(t, "/proc/self/ns/net")
		for i := range spawners + 1 {
			out := newLineLog()
			p := start(t, m, Spec{ID: "home" + strconv.Itoa(i), Path: "/bin/sh", Args: []string{"-c", "readlink /proc/self/ns/net"}, Env: testEnv, Stdout: out.add})
			waitDone(t, p)
			if got := out.lines(); len(got) != 1 || got[0] != host {
				t.Fatalf("process %d without NetNS is in %q, want ebb's %q", i, got, host)
			}
		}
	})
}

package sandbox

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test's "outside host" lives in 198.18.0.0/30 (RFC 2544 benchmarking
// range): the host end of a veth pair is 198.18.0.1, the far end, in a
// network namespace of its own, 198.18.0.2. Pasta is told to use those
// addresses (gateway 198.18.0.2) and to send only through the veth, so no
// test traffic leaves the machine.
const (
	outsideHostIP = "198.18.0.1"
	outsideIP     = "198.18.0.2"
)

// outsideHost builds the namespace and veth, serves HTTP on
// 198.18.0.2:8080 there, and returns the host-side interface name.
func outsideHost(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("ebbsbx%d", os.Getpid()%100000)
	hostIf, farIf := name+"h", name+"o"
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ip("link", "add", hostIf, "type", "veth", "peer", "name", farIf, "netns", name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	ip("addr", "add", outsideHostIP+"/30", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", name, "addr", "add", outsideIP+"/30", "dev", farIf)
	ip("-n", name, "link", "set", farIf, "up")
	ip("-n", name, "link", "set", "lo", "up")

	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var l net.Listener
	if err := runInNetns(f, func() (err error) {
		l, err = net.Listen("tcp", outsideIP+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "outside-ok") }),
		ReadTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return hostIf
}

// netScript fetches argv[1] over HTTP, then tries TCP connects to the rest.
const netScript = `
import errno, socket, sys, urllib.request
def out(k, v): print(f"{k}={v}", flush=True)
try:
    out("get", urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except Exception as e:
    r = getattr(e, "reason", e)
    out("get", errno.errorcode.get(getattr(r, "errno", None), repr(r)))
for host in sys.argv[2:]:
    h, p = host.rsplit(":", 1)
    h = h.strip("[]")
    fam = socket.AF_INET6 if ":" in h else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect((h, int(p))); out("connect " + host, "ok")
    except OSError as e:
        out("connect " + host, errno.errorcode.get(e.errno, str(e)))
`

func TestNetworkOutbound(t *testing.T) {
	requireSandbox(t, true)
	hostIf := outsideHost(t)
	s := newSandbox(t, Config{PastaArgs: []string{
		"-4", "-a", outsideHostIP, "-n", "30", "-g", outsideIP, "--outbound-if4", hostIf,
	}})

	hostL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	port := strconv.Itoa(hostL.Addr().(*net.TCPAddr).Port)
	code := codeDir(t, map[string]string{"net.py": netScript})
	argv := []string{"/usr/bin/python3", "net.py", "http://" + outsideIP + ":8080/",
		"127.0.0.1:" + port, "localhost:" + port, "[::1]:" + port,
		// The gateway pasta gives: with host mapping this would be the
		// host's loopback and reach hostL.
		outsideIP + ":" + port}

	for _, outbound := range []bool{true, false} {
		t.Run(fmt.Sprintf("outbound=%v", outbound), func(t *testing.T) {
			start := time.Now()
			ns := newNetns(t, s, outbound)
			t.Logf("NewNetns(outbound=%v): %v", outbound, time.Since(start))
			if outbound {
				t.Logf("pasta memory: %s", procMem(ns.PastaPID()))
			}
			out, err := run(t, s, ns, Spec{Code: code, Argv: argv})
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out)
			}
			f := parseFacts(t, out)
			want := map[string]string{
				"connect 127.0.0.1:" + port: "ECONNREFUSED",
				"connect localhost:" + port: "ECONNREFUSED",
				"connect [::1]:" + port:     "ECONNREFUSED",
				"get":                       "outside-ok",
			}
			if !outbound {
				want["get"] = "ENETUNREACH"
				want["connect "+outsideIP+":"+port] = "ENETUNREACH"
			} else if g := f["connect "+outsideIP+":"+port]; g == "ok" || g == "" {
				// This passt answers a refused host connect with silence
				// (a timeout) rather than a reset; either is fine, a
				// connection is not.
				t.Errorf("connect to the gateway: %q", g)
			}
			for k, v := range want {
				if f[k] != v {
					t.Errorf("%s = %q, want %q", k, f[k], v)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
			if outbound {
				t.Logf("pasta memory after traffic: %s", procMem(ns.PastaPID()))
			}
			hostL.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
			if c, err := hostL.Accept(); err == nil {
				c.Close()
				t.Error("host loopback listener was reached from the sandbox")
			}
			if outbound {
				pid := ns.PastaPID()
				ns.Close()
				select {
				case <-ns.PastaDone():
				default:
					t.Error("PastaDone not closed after Close")
				}
				if err := exec.Command("kill", "-0", strconv.Itoa(pid)).Run(); err == nil {
					if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(b), ") Z") {
						t.Errorf("pasta %d still running after Close", pid)
					}
				}
			}
		})
	}
}

// procMem is a process's RSS and PSS from smaps_rollup.
func procMem(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Rss:") || strings.HasPrefix(line, "Pss:") {
			keep = append(keep, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(keep, ", ")
}

package examples

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireSandbox skips a test that needs the sandbox where it cannot run
// (not root, no bwrap), unless EBB_REQUIRE_SANDBOX=1 (CI), where that is a
// failure.
func requireSandbox(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "the sandbox gives functions their own uid, which needs root"
	} else if _, err := exec.LookPath("bwrap"); err != nil {
		why = "no bwrap (Debian package bubblewrap)"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "no ip (Debian package iproute2) to make the outside host"
	}
	if why == "" {
		return
	}
	if os.Getenv("EBB_REQUIRE_SANDBOX") == "1" {
		t.Fatalf("EBB_REQUIRE_SANDBOX=1 but %s", why)
	}
	t.Skip(why)
}

// outsideHost is a web server in a network namespace the test makes, joined
// to the host by a veth pair in 198.18.0.0/30 (the benchmarking range): for
// a sandboxed function it is a host on the internet.
func outsideHost(t *testing.T) (addr string, port int) {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	ns, host, peer := "ebbt-"+tag, "ebbh"+tag, "ebbo"+tag
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run("addr", "add", "198.18.0.1/30", "dev", host)
	run("link", "set", host, "up")
	run("-n", ns, "addr", "add", "198.18.0.2/30", "dev", peer)
	run("-n", ns, "link", "set", peer, "up")
	run("-n", ns, "link", "set", "lo", "up")
	srv := exec.Command("ip", "netns", "exec", ns, debianPython, "-c", `
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "7"); self.end_headers(); self.wfile.write(b"outside")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("198.18.0.2", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()`)
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("start outside server: %v", err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("outside server did not say its port: %v", err)
	}
	port, err = strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("outside server port %q: %v", line, err)
	}
	// The host itself must reach it, or the test proves nothing.
	c, err := net.DialTimeout("tcp", net.JoinHostPort("198.18.0.2", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("the host cannot reach the outside server: %v", err)
	}
	c.Close()
	return "198.18.0.2", port
}

// environOf finds a host process whose environment holds needle and returns
// that environment.
func environOf(t *testing.T, needle string) map[string]string {
	t.Helper()
	paths, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), needle) {
			continue
		}
		env := map[string]string{}
		for _, kv := range strings.Split(string(b), "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		if env["AWS_LAMBDA_RUNTIME_API"] != "" {
			return env
		}
	}
	t.Fatalf("no process has %q in its environment", needle)
	return nil
}

// memoryLimitFiles returns the memory limit file of every cgroup holding a
// process whose environment contains needle, with its content.
func memoryLimitFiles(t *testing.T, needle string) map[string]string {
	t.Helper()
	out := map[string]string{}
	paths, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), needle) {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(cg), "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 {
				continue
			}
			var file string
			switch {
			case f[0] == "0" && f[1] == "":
				file = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
			case strings.Contains(","+f[1]+",", ",memory,"):
				file = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
			default:
				continue
			}
			if v, err := os.ReadFile(file); err == nil {
				out[file] = string(v)
			}
		}
	}
	if len(out) == 0 {
		t.Logf("no cgroup memory limit found for %q (no cgroups here?)", needle)
	}
	return out
}

func hostAddrs() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() && !ip.IP.IsLinkLocalUnicast() {
			out = append(out, ip.IP.String())
		}
	}
	return out
}

// TestHostileFunction deploys a function that attacks ebb, the host and a
// neighbour from inside its sandbox on a real `ebb serve --sandbox on`, and
// checks that every attack failed while ordinary work (numpy, /tmp, the
// internet with network: outbound) still succeeded.
func TestHostileFunction(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ebb; skipped with -short")
	}
	requireSandbox(t)
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("the hostile function needs %s: %v", debianPython, err)
	}
	outside, outsidePort := outsideHost(t)

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "ebb")
	goBuild(t, bin, "./cmd/ebb", nil)
	fnDir := filepath.Join(tmp, "fn")

	// The victim: hello-go with a secret in its environment.
	var sb [16]byte
	rand.Read(sb[:])
	secret := hex.EncodeToString(sb[:])
	victim := filepath.Join(fnDir, "victim")
	copyExample(t, "hello-go", victim)
	goBuild(t, filepath.Join(victim, "bootstrap"), "./examples/hello-go", []string{"CGO_ENABLED=0"}, "-tags", "lambda.norpc")
	manifest := fmt.Sprintf("name: victim\nruntime: exec\nhandler: ./bootstrap\nidle_timeout: 10m\nenv: {VICTIM_SECRET: %q}\n", secret)
	if err := os.WriteFile(filepath.Join(victim, "ebb.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	hostile := filepath.Join(fnDir, "hostile")
	copyExample(t, "testdata/hostile", hostile)
	offline := filepath.Join(fnDir, "offline")
	copyExample(t, "testdata/hostile", offline)
	m, _ := os.ReadFile(filepath.Join(offline, "ebb.yaml"))
	m = []byte(strings.Replace(string(m), "name: hostile", "name: offline", 1) + "network: none\n")
	if err := os.WriteFile(filepath.Join(offline, "ebb.yaml"), m, 0o644); err != nil {
		t.Fatal(err)
	}

	dataDir := filepath.Join(tmp, "data")
	s := startEbb(t, bin, dataDir, "--sandbox", "on")
	for _, d := range []string{victim, hostile, offline} {
		s.cli(t, "deploy", d)
	}
	if code, _, body := s.call(t, "POST", "/v1/functions/victim/invoke", `{"name":"v"}`); code != http.StatusOK {
		t.Fatalf("victim: got %d %s", code, body)
	}
	venv := environOf(t, "VICTIM_SECRET="+secret)
	port := strings.TrimPrefix(s.url, "http://127.0.0.1:")
	ebbPort, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("ebb url %s: %v", s.url, err)
	}
	// Warm the hostile function so that its cgroup exists, then aim at it.
	if code, _, body := s.call(t, "POST", "/v1/functions/hostile/invoke", `{"ebb_port": 1, "victim": "x", "victim_runtime_api": "127.0.0.1:1", "victim_key": "x", "data_dir": "/x", "ebb_pid": 1, "cgroup_limit_file": "/x"}`); code != http.StatusOK {
		t.Fatalf("hostile warm-up: got %d %s\n%s", code, body, s.stderr.String())
	}
	limits := memoryLimitFiles(t, "AWS_LAMBDA_FUNCTION_NAME=hostile\x00")
	limitFile := "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	for f := range limits {
		limitFile = f
		break
	}

	event := map[string]any{
		"ebb_port": ebbPort, "victim": "victim", "victim_runtime_api": venv["AWS_LAMBDA_RUNTIME_API"],
		"victim_key": "VICTIM_SECRET", "data_dir": dataDir, "ebb_pid": s.pid, "cgroup_limit_file": limitFile,
		"host_addrs": hostAddrs(), "outside": []any{outside, outsidePort},
	}
	payload, _ := json.Marshal(event)
	for _, fn := range []string{"hostile", "offline"} {
		t.Run(fn, func(t *testing.T) {
			code, _, body := s.call(t, "POST", "/v1/functions/"+fn+"/invoke", string(payload))
			if code != http.StatusOK {
				t.Fatalf("invoke: got %d %s\nserver log:\n%s", code, body, s.stderr.String())
			}
			var rep struct {
				UID     int `json:"uid"`
				Attacks map[string]struct {
					OK     bool   `json:"ok"`
					Result string `json:"result"`
					Error  string `json:"error"`
				} `json:"attacks"`
				Work map[string]struct {
					OK     bool   `json:"ok"`
					Result string `json:"result"`
					Error  string `json:"error"`
				} `json:"work"`
			}
			if err := json.Unmarshal([]byte(body), &rep); err != nil {
				t.Fatalf("decode %q: %v", body, err)
			}
			if len(rep.Attacks) < 20 {
				t.Fatalf("only %d attacks reported: %s", len(rep.Attacks), body)
			}
			for name, a := range rep.Attacks {
				if a.OK {
					t.Errorf("attack %q succeeded: %s", name, a.Result)
				} else {
					t.Logf("attack %q failed as it must: %s", name, a.Error)
				}
			}
			if rep.UID == 0 || rep.UID == os.Geteuid() {
				t.Errorf("function runs as uid %d; want its own unprivileged uid", rep.UID)
			}
			for _, w := range []string{"numpy", "tmp"} {
				if !rep.Work[w].OK {
					t.Errorf("%s must work inside the sandbox: %s", w, rep.Work[w].Error)
				}
			}
			out := rep.Work["outside"]
			switch fn {
			case "hostile":
				if !out.OK || !strings.Contains(out.Result, "outside") {
					t.Errorf("network: outbound must reach the outside host: %+v", out)
				}
			case "offline":
				if out.OK {
					t.Errorf("network: none reached the outside host: %s", out.Result)
				}
			}
		})
	}

	// Nothing changed outside the sandbox.
	if err := syscallKill0(s.pid); err != nil {
		t.Fatalf("ebb is gone: %v", err)
	}
	if code, _, body := s.call(t, "POST", "/v1/functions/victim/invoke", `{"name":"again"}`); code != http.StatusOK || !strings.Contains(body, "hello, again") {
		t.Errorf("victim after the attacks: got %d %s", code, body)
	}
	for f, before := range limits {
		if b, _ := os.ReadFile(f); string(b) != before {
			t.Errorf("cgroup limit %s changed from %q to %q", f, before, b)
		}
	}
	code, _, body := s.call(t, "GET", "/v1/functions", "")
	if code != http.StatusOK || !strings.Contains(body, `"victim"`) {
		t.Errorf("function list after the attacks: %d %s", code, body)
	}
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }

package main

// Issue 10's edge findings, against a real `ebb serve` over real sockets.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

const python3 = "/usr/bin/python3"

type server struct {
	bin, addr, url string
	log            *ebbtest.Buffer
	out            *ebbtest.Buffer // ebb's stdout: the admin key, when one is made
	key            string          // the key ebb deploy runs with
}

// buildEbb builds ./cmd/ebb once per test binary.
var buildEbb = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ebb-edge-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ebb")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// startServe runs `ebb serve` on a free loopback port with a fresh data dir
// and the extra flags, until the test ends.
func startServe(t *testing.T, flags ...string) *server {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs ebb serve; skipped with -short")
	}
	bin, err := buildEbb()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--listen", "127.0.0.1:0", "--data", t.TempDir(), "--warm-memory", "256MiB"}, flags...)
	sv := ebbtest.StartServe(t, bin, args...)
	return &server{bin: bin, addr: sv.Addr, url: sv.URL, log: sv.Log, out: sv.Stdout}
}

// deploy writes files (name → content) to a directory and runs `ebb deploy`.
func (s *server) deploy(t *testing.T, files map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(s.bin, "deploy", dir)
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url, "EBB_API_KEY="+s.key)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ebb deploy: %v\n%s\nserver log:\n%s", err, out, s.log)
	}
}

func (s *server) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRefusedBodyIsAnsweredNotReset: a client without Expect: 100-continue
// writes its whole over-limit body, then reads: it must read the 4xx.
func TestRefusedBodyIsAnsweredNotReset(t *testing.T) {
	s := startServe(t)
	body := bytes.Repeat([]byte("a"), 7<<20)
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{"POST", "/v1/functions/f/invoke", 413},
		{"POST", "/2015-03-31/functions/f/invocations", 413},
		{"POST", "/fn/f/x", 404},
		{"POST", "/v2/models/f/infer", 404},
		{"PUT", "/v1/functions/f", 400}, // not a tar.gz: refused at its first bytes
	} {
		t.Run(tt.path, func(t *testing.T) {
			c := s.dial(t)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", tt.method, tt.path, len(body))
			if _, err := c.Write(body); err != nil {
				t.Fatalf("write the body: %v (ebb must not reset while the client writes)", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("read the answer after writing the body: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Errorf("got %d %s, want %d", resp.StatusCode, b, tt.want)
			}
		})
	}
	t.Run("python urllib", func(t *testing.T) {
		if _, err := os.Stat(python3); err != nil {
			t.Skip(err)
		}
		script := `
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"a" * (7 << 20), method="POST")
try:
    urllib.request.urlopen(req, timeout=60)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
`
		out, err := exec.Command(python3, "-c", script, s.url+"/v1/functions/f/invoke").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "413 ") || !strings.Contains(string(out), "RequestTooLarge") {
			t.Errorf("urllib got %q (%v), want 413 RequestTooLarge", out, err)
		}
	})
}

// TestStalledBodiesAreClosed: bodies that stop arriving hold nothing past
// --read-timeout, whatever the route (a handler reading it, /healthz that
// ignores it, an unknown function).
func TestStalledBodiesAreClosed(t *testing.T) {
	s := startServe(t, "--read-timeout", "500ms")
	paths := []string{"/v1/functions/f/invoke", "/healthz", "/fn/nope/", "/2015-03-31/functions/f/invocations", "/v1/functions/x"}
	var conns []net.Conn
	for i := range 50 {
		c := s.dial(t)
		method := "POST"
		if paths[i%len(paths)] == "/v1/functions/x" {
			method = "PUT"
		}
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n{\"a\":", method, paths[i%len(paths)])
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Generous: the timeout is 500ms; a loaded machine may be slow.
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.Copy(io.Discard, c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("stalled body %d (%s) still open after 30s", i, paths[i%len(paths)])
			}
		}()
	}
	wg.Wait()
	resp, err := http.Get(s.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz after the stalls: %v %v", resp, err)
	}
	resp.Body.Close()
}

const slowServer = `
import os, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(16384):  # up to 1 GiB, far more than socket buffers
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        if self.path == "/split":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
            self.close_connection = True
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`

// TestSlowReaderDoesNotKeepTheSlot: a client that stops reading a large
// streamed response loses it after --write-timeout, and the function's only
// slot serves the next request.
func TestSlowReaderDoesNotKeepTheSlot(t *testing.T) {
	if _, err := os.Stat(python3); err != nil {
		t.Skip(err)
	}
	s := startServe(t, "--write-timeout", "1s")
	s.deploy(t, map[string]string{
		"ebb.yaml":  "name: slow\nruntime: http\nhandler: " + python3 + " server.py\nmax_instances: 1\nconcurrency: 1\ntimeout: 5m\nqueue_timeout: 60s\n",
		"server.py": slowServer,
	})
	resp, err := http.Get(s.url + "/fn/slow/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("warm-up: %v %v\n%s", resp, err, s.log)
	}
	resp.Body.Close()

	c := s.dial(t)
	io.WriteString(c, "GET /fn/slow/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("big stream: %q %v", line, err)
	}
	// Now the client reads nothing more. The one slot is the stream's until
	// ebb gives up writing to it.
	cl := &http.Client{Timeout: 90 * time.Second}
	resp, err = cl.Get(s.url + "/fn/slow/")
	if err != nil {
		t.Fatalf("second request: %v\n%s", err, s.log)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("second request: %d %q, want 200 ok", resp.StatusCode, b)
	}
}

// TestFunctionsCannotSplitResponses: issue 10's attempt, from a python
// function URL handler and from an http function, read the way a front
// proxy reads it (Transfer-Encoding wins over Content-Length; a second
// request pipelined on the same connection). The second response must be
// the real one.
func TestFunctionsCannotSplitResponses(t *testing.T) {
	if _, err := os.Stat(python3); err != nil {
		t.Skip(err)
	}
	s := startServe(t)
	s.deploy(t, map[string]string{
		"ebb.yaml": "name: split\nruntime: python\nhandler: app.handler\n",
		"app.py": `def handler(event, context):
    return {"statusCode": 200, "headers": {"Transfer-Encoding": "chunked", "X-Ok": "1"},
            "body": "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"}
`,
	})
	s.deploy(t, map[string]string{
		"ebb.yaml":  "name: splithttp\nruntime: http\nhandler: " + python3 + " server.py\n",
		"server.py": slowServer,
	})
	for _, path := range []string{"/fn/split/", "/fn/splithttp/split"} {
		t.Run(path, func(t *testing.T) {
			c := s.dial(t)
			c.SetDeadline(time.Now().Add(60 * time.Second))
			io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
			out, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			br := bufio.NewReader(bytes.NewReader(out))
			r1, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("first response: %v\n%q", err, out)
			}
			if len(r1.TransferEncoding) > 0 && r1.Header.Get("Content-Length") != "" {
				t.Errorf("first response has Content-Length and Transfer-Encoding")
			}
			if _, err := io.ReadAll(r1.Body); err != nil {
				t.Fatalf("first body: %v\n%q", err, out)
			}
			r2, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("second response: %v\n%q", err, out)
			}
			b2, _ := io.ReadAll(r2.Body)
			if !strings.Contains(string(b2), `"status":"ok"`) {
				t.Errorf("second response %d %q is not /healthz's; all bytes:\n%q", r2.StatusCode, b2, out)
			}
			if rest, _ := io.ReadAll(br); len(rest) > 0 {
				t.Errorf("bytes after the second response: %q", rest)
			}
		})
	}
}

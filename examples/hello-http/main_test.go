package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// asServerEnv makes the test binary run main() instead of the tests, so the
// process test exercises the real program without a separate go build.
const asServerEnv = "HELLO_HTTP_AS_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(asServerEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestHandler(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		ctype    string
		wantCode int
		wantBody string
		wantType string
	}{
		{name: "root", method: "GET", path: "/", wantCode: 200, wantBody: "hello", wantType: "text/plain; charset=utf-8"},
		{name: "echo json", method: "POST", path: "/echo", body: `{"x":1}`, ctype: "application/json", wantCode: 200, wantBody: `{"x":1}`, wantType: "application/json"},
		{name: "echo empty", method: "POST", path: "/echo", wantCode: 200, wantBody: "", wantType: "application/octet-stream"},
		{name: "echo binary", method: "POST", path: "/echo", body: "\x00\xff\x01", ctype: "application/octet-stream", wantCode: 200, wantBody: "\x00\xff\x01", wantType: "application/octet-stream"},
		{name: "echo too large", method: "POST", path: "/echo", body: strings.Repeat("a", maxEchoBytes+1), wantCode: 413},
		{name: "unknown path", method: "GET", path: "/nope", wantCode: 404},
		{name: "echo wrong method", method: "GET", path: "/echo", wantCode: 405},
	}
	h := newHandler()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Fatalf("status: got %d, want %d (body %.100q)", rec.Code, tt.wantCode, rec.Body.String())
			}
			if tt.wantCode != 200 {
				return
			}
			if got := rec.Body.String(); got != tt.wantBody {
				t.Errorf("body: got %q, want %q", got, tt.wantBody)
			}
			if got := rec.Header().Get("Content-Type"); got != tt.wantType {
				t.Errorf("Content-Type: got %q, want %q", got, tt.wantType)
			}
		})
	}
}

func TestListenAddr(t *testing.T) {
	tests := []struct {
		port, host, want string
	}{
		{"", "", "127.0.0.1:8080"},
		{"9000", "", "127.0.0.1:9000"},
		{"9000", "::1", "[::1]:9000"},
		{"0", "0.0.0.0", "0.0.0.0:0"},
	}
	for _, tt := range tests {
		t.Setenv("PORT", tt.port)
		t.Setenv("HOST", tt.host)
		if got := listenAddr(); got != tt.want {
			t.Errorf("listenAddr(PORT=%q HOST=%q): got %q, want %q", tt.port, tt.host, got, tt.want)
		}
	}
}

// TestProcessServesOnPortAndStopsOnSIGTERM runs the real program the way ebb's
// http runtime does: PORT in the environment, SIGTERM to scale it down.
func TestProcessServesOnPortAndStopsOnSIGTERM(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find test binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), asServerEnv+"=1", "PORT=0", "HOST=127.0.0.1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("stderr pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	defer cmd.Process.Kill()

	lines := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && lines.Scan() {
		line := lines.Text()
		if _, rest, ok := strings.Cut(line, "addr="); ok && strings.Contains(line, "msg=listening") {
			addr = strings.Fields(rest)[0]
		}
	}
	if addr == "" {
		t.Fatalf("server never logged its address (scan err %v)", lines.Err())
	}
	// Keep draining stderr so the server never blocks on a full pipe, and
	// remember whether it said it stopped cleanly.
	sawStopped := make(chan bool, 1)
	go func() {
		stopped := false
		for lines.Scan() {
			if strings.Contains(lines.Text(), "msg=stopped") {
				stopped = true
			}
		}
		sawStopped <- stopped
	}()

	get, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	body, _ := io.ReadAll(get.Body)
	get.Body.Close()
	if get.StatusCode != 200 || string(body) != "hello" {
		t.Errorf("GET /: got %d %q, want 200 %q", get.StatusCode, body, "hello")
	}

	post, err := http.Post("http://"+addr+"/echo", "application/json", strings.NewReader(`{"ping":true}`))
	if err != nil {
		t.Fatalf("POST /echo: %v", err)
	}
	body, _ = io.ReadAll(post.Body)
	post.Body.Close()
	if post.StatusCode != 200 || string(body) != `{"ping":true}` {
		t.Errorf("POST /echo: got %d %q, want 200 %q", post.StatusCode, body, `{"ping":true}`)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("send SIGTERM: %v", err)
	}
	if !<-sawStopped {
		t.Errorf("server did not log a clean stop after SIGTERM")
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: got %v, want status 0", err)
	}
}

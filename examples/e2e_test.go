package examples

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

// goBuild compiles pkg (relative to the module root) with the extra
// environment, e.g. CGO_ENABLED=0 for the static example binaries, once per
// test run, and puts a copy at out.
func goBuild(t *testing.T, out, pkg string, env []string, extra ...string) {
	t.Helper()
	bin := ebbtest.GoBinary(t, ebbtest.Go{Pkg: pkg, Env: env, Flags: extra})
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// copyExample copies examples/NAME to dst without build outputs, so the test
// deploys what it built itself, never a stale binary from the work tree.
func copyExample(t *testing.T, name, dst string) {
	t.Helper()
	skip := map[string]bool{"bootstrap": true, "server": true, "__pycache__": true}
	err := filepath.WalkDir(name, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(name, path)
		if skip[d.Name()] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatalf("copy example %s: %v", name, err)
	}
}

// ebbServer is a real `ebb serve` process on a loopback port of its choosing.
type ebbServer struct {
	bin    string
	url    string
	pid    int
	stderr *ebbtest.Buffer
}

// startEbb starts `ebb serve` on dataDir with the extra flags.
func startEbb(t *testing.T, bin, dataDir string, flags ...string) *ebbServer {
	t.Helper()
	sv := ebbtest.StartServe(t, bin, append([]string{"--listen", "127.0.0.1:0", "--data", dataDir}, flags...)...)
	s := &ebbServer{bin: bin, url: sv.URL, pid: sv.Pid, stderr: sv.Log}

	resp, err := http.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v\n%s", err, s.stderr.String())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: got %d, want 200", resp.StatusCode)
	}
	return s
}

// cli runs an ebb client command against the server.
func (s *ebbServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ebb %s: %v\n%s\nserver log:\n%s", strings.Join(args, " "), err, out, s.stderr.String())
	}
	return string(out)
}

// call sends one request and returns status, headers and body.
func (s *ebbServer) call(t *testing.T, method, path, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v\nserver log:\n%s", method, path, err, s.stderr.String())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// TestExamplesOnEbb deploys every example to a real ebb server, the way a
// user following the README would, and calls each one.
func TestExamplesOnEbb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ebb; skipped with -short")
	}
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("hello-python needs %s: %v", debianPython, err)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "ebb")
	goBuild(t, bin, "./cmd/ebb", nil)

	fnDir := filepath.Join(tmp, "fn")
	for _, name := range []string{"hello-go", "hello-python", "hello-http"} {
		copyExample(t, name, filepath.Join(fnDir, name))
	}
	static := []string{"CGO_ENABLED=0"}
	goBuild(t, filepath.Join(fnDir, "hello-go", "bootstrap"), "./examples/hello-go", static, "-tags", "lambda.norpc")
	goBuild(t, filepath.Join(fnDir, "hello-http", "server"), "./examples/hello-http", static)

	s := startEbb(t, bin, filepath.Join(tmp, "data"))
	for _, name := range []string{"hello-go", "hello-python", "hello-http"} {
		out := s.cli(t, "deploy", filepath.Join(fnDir, name))
		if !strings.Contains(out, name) {
			t.Errorf("ebb deploy %s: output %q does not name the function", name, out)
		}
	}

	t.Run("hello-go", func(t *testing.T) {
		for i, wantCold := range []string{"true", "false"} {
			code, h, body := s.call(t, "POST", "/v1/functions/hello-go/invoke", `{"name":"ada"}`)
			if code != http.StatusOK {
				t.Fatalf("invoke %d: got %d %s, want 200", i, code, body)
			}
			var got struct {
				Message   string `json:"message"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("invoke %d: decode %q: %v", i, body, err)
			}
			if got.Message != "hello, ada" {
				t.Errorf("invoke %d: message: got %q, want %q", i, got.Message, "hello, ada")
			}
			if rid := h.Get("Ebb-Request-Id"); rid == "" || got.RequestID != rid {
				t.Errorf("invoke %d: request_id: got %q, want the Ebb-Request-Id header %q", i, got.RequestID, rid)
			}
			if c := h.Get("Ebb-Cold-Start"); c != wantCold {
				t.Errorf("invoke %d: Ebb-Cold-Start: got %q, want %q", i, c, wantCold)
			}
		}
		code, _, body := s.call(t, "POST", "/v1/functions/hello-go/invoke", `{}`)
		if code != http.StatusOK || !strings.Contains(body, `"hello, world"`) {
			t.Errorf("invoke without a name: got %d %s, want 200 with hello, world", code, body)
		}
		if out := s.cli(t, "invoke", "hello-go", "-d", `{"name":"cli"}`); !strings.Contains(out, "hello, cli") {
			t.Errorf("ebb invoke: got %q, want it to contain %q", out, "hello, cli")
		}
	})

	t.Run("hello-python", func(t *testing.T) {
		var pid int
		for i := 1; i <= 3; i++ {
			code, h, body := s.call(t, "POST", "/v1/functions/hello-python/invoke", `{"name":"py"}`)
			if code != http.StatusOK {
				t.Fatalf("invoke %d: got %d %s, want 200\nserver log:\n%s", i, code, body, s.stderr.String())
			}
			var got struct {
				Message             string `json:"message"`
				RequestID           string `json:"request_id"`
				InstanceInvocations int    `json:"instance_invocations"`
				PID                 int    `json:"pid"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("invoke %d: decode %q: %v", i, body, err)
			}
			if got.Message != "hello, py" {
				t.Errorf("invoke %d: message: got %q, want %q", i, got.Message, "hello, py")
			}
			if rid := h.Get("Ebb-Request-Id"); rid == "" || got.RequestID != rid {
				t.Errorf("invoke %d: request_id: got %q, want the Ebb-Request-Id header %q", i, got.RequestID, rid)
			}
			// Sequential invokes reuse the warm instance, so module state
			// carries over: the point of the example.
			if got.InstanceInvocations != i {
				t.Errorf("invoke %d: instance_invocations: got %d, want %d", i, got.InstanceInvocations, i)
			}
			if i == 1 {
				pid = got.PID
			} else if got.PID != pid {
				t.Errorf("invoke %d: pid: got %d, want %d (the same warm instance)", i, got.PID, pid)
			}
		}
	})

	t.Run("hello-http", func(t *testing.T) {
		code, h, body := s.call(t, "GET", "/fn/hello-http/", "")
		if code != http.StatusOK || body != "hello" {
			t.Errorf("GET /fn/hello-http/: got %d %q, want 200 %q", code, body, "hello")
		}
		if h.Get("Ebb-Request-Id") == "" {
			t.Errorf("GET /fn/hello-http/: no Ebb-Request-Id header")
		}
		code, _, body = s.call(t, "POST", "/fn/hello-http/echo", `{"x":1}`)
		if code != http.StatusOK || body != `{"x":1}` {
			t.Errorf("POST /fn/hello-http/echo: got %d %q, want 200 %q", code, body, `{"x":1}`)
		}
	})

	t.Run("status lists instances", func(t *testing.T) {
		code, _, body := s.call(t, "GET", "/v1/functions/hello-go", "")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/functions/hello-go: got %d %s", code, body)
		}
		var st struct {
			Version   int               `json:"version"`
			Instances []json.RawMessage `json:"instances"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("decode status %q: %v", body, err)
		}
		if st.Version < 1 || len(st.Instances) == 0 {
			t.Errorf("status: got version %d and %d instances, want version ≥ 1 and the warm instance", st.Version, len(st.Instances))
		}
	})
}

// TestONNXVersionsOnEbb: the Open Inference Protocol through a real ebb
// serve addresses versions and aliases (/v2/models/NAME/versions/V/...),
// every answer names the version that gave it, and GET /v2 answers the
// server metadata in the spec's shape.
func TestONNXVersionsOnEbb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ebb; skipped with -short")
	}
	lib := os.Getenv("EBB_ONNXRUNTIME_LIB")
	if lib == "" {
		lib, _ = filepath.Abs("../.cache/onnxruntime/lib/libonnxruntime.so.1")
	}
	if _, err := os.Stat(lib); err != nil {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireONNX, "ONNX Runtime library not found at %s: run scripts/fetch-onnxruntime.sh", lib)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "ebb")
	goBuild(t, bin, "./cmd/ebb", nil)
	dir := filepath.Join(tmp, "fn", "hello-onnx")
	copyExample(t, "hello-onnx", dir)
	s := startEbb(t, bin, filepath.Join(tmp, "data"), "--onnxruntime-lib", lib)
	s.cli(t, "deploy", dir)
	s.cli(t, "deploy", dir, "--no-traffic")
	s.cli(t, "alias", "set", "hello-onnx", "prod", "2")

	code, _, body := s.call(t, "GET", "/v2", "")
	var meta struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(body), &meta); code != http.StatusOK || err != nil || meta.Name == "" || meta.Version == "" || meta.Extensions == nil {
		t.Fatalf("GET /v2 = %d %s, want the server metadata (name, version, extensions)", code, body)
	}

	row := strings.Repeat("0.5,", 63) + "0.5"
	req := `{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[` + row + `]}]}`
	var first []float64
	for _, c := range []struct{ path, version string }{
		{"/v2/models/hello-onnx/infer", "1"},
		{"/v2/models/hello-onnx/versions/1/infer", "1"},
		{"/v2/models/hello-onnx/versions/2/infer", "2"},
		{"/v2/models/hello-onnx/versions/prod/infer", "2"},
	} {
		code, h, body := s.call(t, "POST", c.path, req)
		var res struct {
			Outputs []struct {
				Shape []int     `json:"shape"`
				Data  []float64 `json:"data"`
			} `json:"outputs"`
		}
		if err := json.Unmarshal([]byte(body), &res); code != http.StatusOK || err != nil || len(res.Outputs) != 1 || len(res.Outputs[0].Data) != 10 {
			t.Fatalf("POST %s = %d %.500s, want 10 logits", c.path, code, body)
		}
		if v := h.Get("Ebb-Version"); v != c.version {
			t.Errorf("POST %s answered by version %q, want %s", c.path, v, c.version)
		}
		// Both versions are the same model: the same logits.
		if first == nil {
			first = res.Outputs[0].Data
		} else if !slices.Equal(first, res.Outputs[0].Data) {
			t.Errorf("POST %s logits %v, want %v", c.path, res.Outputs[0].Data, first)
		}
	}
	if code, _, body := s.call(t, "GET", "/v2/models/hello-onnx/versions/prod", ""); code != http.StatusOK || !strings.Contains(body, `"inputs"`) {
		t.Errorf("model metadata of the prod alias = %d %s", code, body)
	}
	code, _, body = s.call(t, "POST", "/v2/models/hello-onnx/versions/9/infer", req)
	var oipErr struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &oipErr) != nil || code != http.StatusNotFound || oipErr.Error == "" {
		t.Errorf("an unknown version = %d %s, want 404 in OIP's error shape", code, body)
	}
}

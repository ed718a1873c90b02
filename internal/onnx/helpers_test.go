package onnx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

var (
	libOnce sync.Once
	libErr  error
)

// needLibrary initialises ONNX Runtime for the test binary, or skips the
// test when the library is not installed.
func needLibrary(t testing.TB) {
	t.Helper()
	libOnce.Do(func() {
		path := os.Getenv(LibraryEnv)
		if path == "" {
			// The test binary runs in the package directory; the library is
			// installed under the repository root.
			dir, _ := os.Getwd()
			for {
				p := filepath.Join(dir, defaultLibraryRel)
				if _, err := os.Stat(p); err == nil {
					path = p
					break
				}
				parent := filepath.Dir(dir)
				if parent == dir {
					break
				}
				dir = parent
			}
		}
		if path == "" {
			libErr = ErrLibraryNotFound
			return
		}
		libErr = InitLibrary(path)
	})
	if errors.Is(libErr, ErrLibraryNotFound) {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireONNX, "ONNX Runtime library not installed (run scripts/fetch-onnxruntime.sh or set %s): %v", LibraryEnv, libErr)
	}
	if libErr != nil {
		t.Fatalf("InitLibrary: %v", libErr)
	}
}

// newServer serves file (relative to testdata unless absolute) as model "m".
func newServer(t testing.TB, file string, mutate func(*Config)) *Server {
	t.Helper()
	needLibrary(t)
	if !filepath.IsAbs(file) {
		file = filepath.Join("testdata", file)
	}
	cfg := Config{ModelPath: file, ModelName: "m", IntraOpThreads: 1}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewServer(%s): %v", file, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serve starts a real HTTP server on 127.0.0.1 for s.
func serve(t testing.TB, s *Server) string {
	t.Helper()
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return hs.URL
}

type jsonTensor struct {
	Name       string          `json:"name"`
	Datatype   string          `json:"datatype"`
	Shape      []int64         `json:"shape"`
	Data       json.RawMessage `json:"data,omitempty"`
	Parameters map[string]any  `json:"parameters,omitempty"`
}

type inferResponse struct {
	ModelName string       `json:"model_name"`
	ID        string       `json:"id"`
	Outputs   []jsonTensor `json:"outputs"`
	Error     string       `json:"error"`
}

// post sends body to the model's infer endpoint and returns the status and
// raw response.
func post(t testing.TB, url string, body []byte, header http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", url+"/v2/models/m/infer", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST infer: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// inferJSON posts a JSON request and decodes a 200 response.
func inferJSON(t testing.TB, url string, req any) inferResponse {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	status, _, b := post(t, url, body, nil)
	if status != 200 {
		t.Fatalf("infer: status %d, body %s", status, b)
	}
	var out inferResponse
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode response %q: %v", b, err)
	}
	return out
}

func floats(t testing.TB, raw json.RawMessage) []float64 {
	t.Helper()
	var f []float64
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("decode data %.80s: %v", raw, err)
	}
	return f
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// refFile is a reference case written by testdata/gen_models.py.
type refFile struct {
	Inputs  []jsonTensor `json:"inputs"`
	Outputs []jsonTensor `json:"outputs"`
}

func loadRef(t testing.TB, name string) refFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var r refFile
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func itoa(i int) string { return strconv.Itoa(i) }

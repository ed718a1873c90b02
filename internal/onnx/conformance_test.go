package onnx

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/ebb-run/ebb/internal/onnx/conformance"
)

// TestdataEnv overrides where the ONNX backend test cases are read from.
const testdataEnv = "EBB_ONNX_TESTDATA"

// TestConformance drives every ONNX backend test case through the HTTP
// handler, in JSON and in binary, and prints how many pass.
func TestConformance(t *testing.T) {
	needLibrary(t)
	root := os.Getenv(testdataEnv)
	if root == "" {
		root = conformance.DefaultRoot
	}
	cases, err := conformance.Load(root)
	if err != nil || len(cases) == 0 {
		t.Skipf("no ONNX backend test cases under %s (install libonnx-testdata or set %s): %v", root, testdataEnv, err)
	}
	if testing.Short() {
		cases = cases[:min(len(cases), 100)]
	}

	// One HTTP server routes /v2/models/{name}/... to the case's Server, as
	// ebb's gateway routes to instances.
	var servers sync.Map // model name -> *Server
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, "/v2/models/")
		name, _, _ := strings.Cut(rest, "/")
		s, ok := servers.Load(name)
		if !ok {
			http.NotFound(w, r)
			return
		}
		s.(*Server).ServeHTTP(w, r)
	}))
	defer hs.Close()

	deploy := func(ctx context.Context, c *conformance.Case) (string, string, func(), error) {
		name := strings.NewReplacer("/", ".").Replace(c.Name)
		s, err := NewServer(ctx, Config{ModelPath: c.Model, ModelName: name, IntraOpThreads: 1})
		if err != nil {
			return "", "", nil, err
		}
		servers.Store(name, s)
		return hs.URL, name, func() { servers.Delete(name); s.Close() }, nil
	}
	sum := conformance.Run(context.Background(), cases, deploy, 2, conformance.Options{})
	results := sum.Results

	var report strings.Builder
	sum.Write(&report)
	t.Log("\n" + report.String())
	known := 0
	for _, r := range results {
		if r.Status != conformance.Fail {
			continue
		}
		if _, ok := conformance.KnownFailure(r); ok {
			known++
			continue
		}
		t.Errorf("%s: %s", r.Case, r.Reason)
	}
	t.Logf("%d of %d failures are known ONNX Runtime differences or limitations", known, sum.Count(conformance.Fail))
}

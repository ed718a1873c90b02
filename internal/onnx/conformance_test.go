package onnx

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/ebb-run/ebb/internal/ebbtest"
	"github.com/ebb-run/ebb/internal/onnx/conformance"
)

// TestdataEnv overrides where the ONNX backend test cases are read from.
const testdataEnv = "EBB_ONNX_TESTDATA"

// TestConformance drives every ONNX backend test case through the HTTP
// handler, in JSON and in binary. It fails on a failure that is not a known
// one, on a case ebb's protobuf reader cannot read, and, in a full run, when
// fewer than conformance.PassFloor cases pass.
func TestConformance(t *testing.T) {
	needLibrary(t)
	root := os.Getenv(testdataEnv)
	if root == "" {
		root = conformance.DefaultRoot
	}
	cases, err := conformance.Load(root)
	if err != nil || len(cases) == 0 {
		ebbtest.SkipUnlessRequired(t, ebbtest.RequireONNX, "no ONNX backend test cases under %s (install libonnx-testdata or set %s): %v", root, testdataEnv, err)
	}
	full := !testing.Short()
	if !full {
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

	var report strings.Builder
	sum.Write(&report)
	t.Log("\n" + report.String())
	for _, p := range sum.Problems(full) {
		t.Error(p)
	}
	t.Logf("%d passed (floor %d, checked: %v); %d failures, known ONNX Runtime differences or limitations unless reported above",
		sum.Count(conformance.Pass), conformance.PassFloor, full, sum.Count(conformance.Fail))
}

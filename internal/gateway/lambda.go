package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/route"
)

// Catalog answers the Lambda API's read-only calls and LogType Tail.
type Catalog interface {
	// Function returns the version t names (its newest when unqualified),
	// or an error matching ebb.ErrNotFound.
	Function(t Target) (*ebb.Function, error)
	// Functions lists every function's current version.
	Functions() []*ebb.Function
	// LogMark is where name's log is now, taken before an invocation
	// whose lines Tail will read: Tail then reads only what came after,
	// not every line kept.
	LogMark(name string) uint64
	// Tail returns the end (at most 4 KiB) of one invocation's log lines
	// written since mark.
	Tail(ctx context.Context, name, requestID string, mark uint64) []byte
}

// MaxTailBytes is how much of an invocation's log LogType Tail returns, as
// in Lambda.
const MaxTailBytes = 4 << 10

// The ARN ebb gives functions in the Lambda API's answers: a region and
// account that say "this is not AWS".
const (
	arnRegion  = "local"
	arnAccount = "000000000000"
)

// FunctionArn is the ARN of function name.
func FunctionArn(name string) string {
	return "arn:aws:lambda:" + arnRegion + ":" + arnAccount + ":function:" + name
}

// lambdaConfiguration is Lambda's FunctionConfiguration, the fields an SDK
// caller looks at before invoking. The environment is left out: it holds
// the function's secrets, and an invoke key must not read them.
type lambdaConfiguration struct {
	FunctionName     string   `json:"FunctionName"`
	FunctionArn      string   `json:"FunctionArn"`
	Runtime          string   `json:"Runtime"`
	Role             string   `json:"Role"`
	Handler          string   `json:"Handler"`
	CodeSize         int64    `json:"CodeSize"`
	Description      string   `json:"Description"`
	Timeout          int      `json:"Timeout"`
	MemorySize       int      `json:"MemorySize"`
	LastModified     string   `json:"LastModified"`
	CodeSha256       string   `json:"CodeSha256"`
	Version          string   `json:"Version"`
	State            string   `json:"State"`
	LastUpdateStatus string   `json:"LastUpdateStatus"`
	PackageType      string   `json:"PackageType"`
	Architectures    []string `json:"Architectures"`
	RevisionId       string   `json:"RevisionId"`
}

// lambdaRuntime names ebb's runtimes in Lambda's vocabulary where there is a
// match; http and onnx have none and keep ebb's name.
func lambdaRuntime(rt ebb.Runtime) string {
	switch rt {
	case ebb.RuntimePython:
		return "python3"
	case ebb.RuntimeExec:
		return "provided.al2023"
	}
	return "ebb-" + string(rt)
}

// configurationOf is fn's configuration; qualifier, when not empty, is how
// the caller named the version (Lambda answers a qualified ARN and the
// version's number, else $LATEST).
func configurationOf(fn *ebb.Function, qualifier string) lambdaConfiguration {
	sum, _ := hex.DecodeString(fn.Digest)
	s := &fn.Spec
	c := lambdaConfiguration{
		FunctionName: s.Name, FunctionArn: FunctionArn(s.Name), Runtime: lambdaRuntime(s.Runtime),
		Role: "arn:aws:iam::" + arnAccount + ":role/ebb-function", Handler: s.Handler, CodeSize: fn.Size,
		Description: "ebb " + string(s.Runtime) + " function, version " + strconv.Itoa(fn.Version),
		Timeout:     int((s.Timeout + 999_999_999) / 1_000_000_000), MemorySize: s.MemoryMiB,
		LastModified: fn.CreatedAt.UTC().Format("2006-01-02T15:04:05.000+0000"),
		CodeSha256:   base64.StdEncoding.EncodeToString(sum), Version: "$LATEST",
		State: "Active", LastUpdateStatus: "Successful", PackageType: "Zip",
		Architectures: []string{"x86_64"}, RevisionId: revisionID(fn),
	}
	if qualifier != "" {
		c.FunctionArn += ":" + qualifier
		c.Version = strconv.Itoa(fn.Version)
	}
	return c
}

// revisionID is a stable UUID-shaped id of a function version.
func revisionID(fn *ebb.Function) string {
	h := sha256.Sum256([]byte(fn.Spec.Name + "\x00" + strconv.Itoa(fn.Version) + "\x00" + fn.Digest))
	s := hex.EncodeToString(h[:16])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// lambdaGetFunction answers GetFunction.
func (g *Gateway) lambdaGetFunction(w http.ResponseWriter, r *http.Request) {
	fn, q, ok := g.describe(w, r)
	if !ok {
		return
	}
	route.JSON(w, http.StatusOK, struct {
		Configuration lambdaConfiguration `json:"Configuration"`
		Code          struct {
			RepositoryType string `json:"RepositoryType"`
			Location       string `json:"Location"`
		} `json:"Code"`
		Tags map[string]string `json:"Tags"`
	}{Configuration: configurationOf(fn, q), Tags: map[string]string{}})
}

// lambdaGetConfiguration answers GetFunctionConfiguration.
func (g *Gateway) lambdaGetConfiguration(w http.ResponseWriter, r *http.Request) {
	if fn, q, ok := g.describe(w, r); ok {
		route.JSON(w, http.StatusOK, configurationOf(fn, q))
	}
}

// describe finds the version a GetFunction names: the newest, or the one its
// qualifier (in FunctionName or the Qualifier parameter) resolves to.
func (g *Gateway) describe(w http.ResponseWriter, r *http.Request) (*ebb.Function, string, bool) {
	t, err := lambdaTarget(r)
	if err == nil {
		var fn *ebb.Function
		if fn, err = g.cfg.Catalog.Function(t); err == nil {
			return fn, t.Qualifier, true
		}
	}
	g.fail(w, route.Lambda, t.Name, err)
	return nil, "", false
}

// lambdaListFunctions answers ListFunctions with the functions the caller's
// key covers, in name order, paginated by Marker and MaxItems as Lambda is.
func (g *Gateway) lambdaListFunctions(w http.ResponseWriter, r *http.Request) {
	p := auth.FromContext(r.Context())
	fns := g.cfg.Catalog.Functions()
	slices.SortFunc(fns, func(a, b *ebb.Function) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	q := r.URL.Query()
	limit := 50
	if m := q.Get("MaxItems"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 1 || n > 10000 {
			g.fail(w, route.Lambda, "", &BadRequestError{"MaxItems must be 1 to 10000"})
			return
		}
		limit = n
	}
	marker := q.Get("Marker")
	out := struct {
		Functions  []lambdaConfiguration `json:"Functions"`
		NextMarker *string               `json:"NextMarker"`
	}{Functions: []lambdaConfiguration{}}
	for _, fn := range fns {
		if marker != "" && fn.Spec.Name <= marker {
			continue
		}
		if !p.Covers(fn.Spec.Name) {
			continue
		}
		if len(out.Functions) == limit {
			m := out.Functions[len(out.Functions)-1].FunctionName
			out.NextMarker = &m
			break
		}
		out.Functions = append(out.Functions, configurationOf(fn, ""))
	}
	route.JSON(w, http.StatusOK, out)
}

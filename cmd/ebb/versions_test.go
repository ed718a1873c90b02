package main

// Issue 12's versions, routes and aliases, against a real `ebb serve`.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/ebb-run/ebb"
)

// versionFn is a python function whose answers say which version it is.
func versionFn(name string, v int) map[string]string {
	return map[string]string{
		"ebb.yaml": "name: " + name + "\nruntime: python\nhandler: app.handler\n",
		"app.py":   fmt.Sprintf("def handler(event, context):\n    return {'v': %d}\n", v),
	}
}

// deployArgs writes files to a directory and runs `ebb deploy DIR args...`.
func (s *server) deployArgs(t *testing.T, files map[string]string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := s.cli(t, s.key, append([]string{"deploy", dir}, args...)...)
	if err != nil {
		t.Fatalf("ebb deploy %v: %v\n%s\nserver log:\n%s", args, err, out, s.log)
	}
	return out
}

// invokeV invokes path (a native invoke URL) and returns the version that
// answered, checking that the body and Ebb-Version agree.
func (s *server) invokeV(t *testing.T, path, key string) int {
	t.Helper()
	var hdr map[string]string
	if key != "" {
		hdr = map[string]string{ebb.RoutingKeyHeader: key}
	}
	code, body, h := s.call(t, "POST", path, s.key, `{}`, hdr)
	if code != 200 {
		t.Fatalf("POST %s = %d %s", path, code, body)
	}
	var got struct{ V int }
	if err := json.Unmarshal([]byte(body), &got); err != nil || got.V == 0 {
		t.Fatalf("POST %s answered %s", path, body)
	}
	if ev := h.Get("Ebb-Version"); ev != strconv.Itoa(got.V) {
		t.Fatalf("POST %s: Ebb-Version %q, but version %d answered", path, ev, got.V)
	}
	return got.V
}

// answered is the version in a versionFn's answer, 0 if none.
func answered(body string) int {
	var got struct{ V int }
	json.Unmarshal([]byte(body), &got)
	return got.V
}

func (s *server) versions(t *testing.T, name string) versionsReply {
	t.Helper()
	out, err := s.cli(t, s.key, "versions", name, "--json")
	if err != nil {
		t.Fatalf("ebb versions: %v\n%s", err, out)
	}
	var vs versionsReply
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("ebb versions --json printed %s", out)
	}
	return vs
}

type versionsReply struct {
	Latest   int
	Route    ebb.Split
	Rollback int
	Aliases  []ebb.Alias
	Versions []struct {
		Version     int
		Percent     int
		Active      bool
		Invocations uint64
		P50MS       float64 `json:"p50_ms"`
		P99MS       float64 `json:"p99_ms"`
	}
}

// TestCanaryPromoteRollback: three versions of one function; a 20% canary
// over 1,000 invokes lands 20% ± 4% on the new version with every routing
// key consistent; promote and rollback move everything; --no-traffic takes
// none and has no process; a routed version cannot be removed.
func TestCanaryPromoteRollback(t *testing.T) {
	s := authServe(t)
	const fn = "ver"
	s.deployArgs(t, versionFn(fn, 1))
	s.deployArgs(t, versionFn(fn, 2))
	out := s.deployArgs(t, versionFn(fn, 3), "--canary", "20")
	if !strings.Contains(out, "version 3") || !strings.Contains(out, "2=80% 3=20%") {
		t.Fatalf("ebb deploy --canary 20 printed %s", out)
	}
	path := "/v1/functions/" + fn + "/invoke"
	counts := map[int]int{}
	for range 1000 {
		counts[s.invokeV(t, path, "")]++
	}
	if counts[1] != 0 || counts[2]+counts[3] != 1000 || counts[3] < 160 || counts[3] > 240 {
		t.Fatalf("1,000 invokes of a 20%% canary landed %v, want 20%% ± 4%% on version 3 and none on 1", counts)
	}
	// Sticky: each key stays on one version, the one the route's pure
	// function picks for it.
	route := ebb.Split{{Version: 2, Percent: 80}, {Version: 3, Percent: 20}}
	onNew := 0
	for i := range 100 {
		key := fmt.Sprintf("user-%d", i)
		want := route.Pick(key, 0)
		for range 3 {
			if got := s.invokeV(t, path, key); got != want {
				t.Fatalf("key %q landed on version %d, want %d every time", key, got, want)
			}
		}
		if want == 3 {
			onNew++
		}
	}
	if onNew == 0 || onNew == 100 {
		t.Fatalf("all 100 keys on one version (%d on the canary): the key does not spread", onNew)
	}

	if out, err := s.cli(t, s.key, "promote", fn); err != nil || !strings.Contains(out, "3=100%") {
		t.Fatalf("ebb promote: %v %s", err, out)
	}
	for range 50 {
		if v := s.invokeV(t, path, ""); v != 3 {
			t.Fatalf("after promote an invoke landed on %d", v)
		}
	}
	if out, err := s.cli(t, s.key, "rollback", fn); err != nil || !strings.Contains(out, "2=100%") {
		t.Fatalf("ebb rollback: %v %s", err, out)
	}
	for range 50 {
		if v := s.invokeV(t, path, ""); v != 2 {
			t.Fatalf("after rollback an invoke landed on %d", v)
		}
	}

	// --no-traffic: version 4 takes none and has no process until it is
	// addressed.
	s.deployArgs(t, versionFn(fn, 4), "--no-traffic")
	for range 50 {
		if v := s.invokeV(t, path, ""); v != 2 {
			t.Fatalf("after a --no-traffic deploy an invoke landed on %d", v)
		}
	}
	vs := s.versions(t, fn)
	if vs.Latest != 4 || len(vs.Versions) != 4 || vs.Versions[3].Active || vs.Versions[3].Invocations != 0 {
		t.Fatalf("versions after --no-traffic = %+v, want 4 kept, version 4 without a pool", vs)
	}
	if vs.Versions[2].Invocations == 0 || vs.Versions[2].P99MS < vs.Versions[2].P50MS || vs.Versions[2].P50MS <= 0 {
		t.Fatalf("version 3's counters = %+v", vs.Versions[2])
	}
	if v := s.invokeV(t, "/v1/functions/"+fn+":4/invoke", ""); v != 4 {
		t.Fatalf("ver:4 answered as %d", v)
	}

	// Explicit shares.
	if out, err := s.cli(t, s.key, "route", fn, "3=50", "4=50"); err != nil || !strings.Contains(out, "3=50% 4=50%") {
		t.Fatalf("ebb route: %v %s", err, out)
	}
	seen := map[int]int{}
	for range 100 {
		seen[s.invokeV(t, path, "")]++
	}
	if seen[3] == 0 || seen[4] == 0 || seen[2] != 0 {
		t.Fatalf("a 50/50 route landed %v", seen)
	}
	for _, bad := range [][]string{{fn, "3=50", "4=40"}, {fn, "3=50", "9=50"}, {fn, "x"}} {
		if out, err := s.cli(t, s.key, append([]string{"route"}, bad...)...); err == nil {
			t.Errorf("ebb route %v was accepted: %s", bad, out)
		}
	}

	// Removal is refused while a version is routed, with a clear reason,
	// and allowed once it is not.
	out, err := s.cli(t, s.key, "rm", fn, "--version", "3")
	if err == nil || !strings.Contains(out, "409") || !strings.Contains(out, "route") {
		t.Fatalf("ebb rm --version 3 (routed) = %v %s, want a 409 naming the route", err, out)
	}
	if out, err := s.cli(t, s.key, "rm", fn, "--version", "1"); err != nil {
		t.Fatalf("ebb rm --version 1: %v %s", err, out)
	}
	code, body, _ := s.call(t, "POST", "/v1/functions/"+fn+":1/invoke", s.key, `{}`, nil)
	if code != 404 || !strings.Contains(body, `\"1\"`) {
		t.Fatalf("invoke of a removed version = %d %s, want 404 naming it", code, body)
	}
	if vs := s.versions(t, fn); len(vs.Versions) != 3 || vs.Versions[0].Version != 2 {
		t.Fatalf("versions after removing 1 = %+v", vs.Versions)
	}
	// Per version: in ebb status --json and in /metrics with a version label.
	out, err = s.cli(t, s.key, "status", fn, "--json")
	var st struct {
		Versions []struct {
			Version     int
			Invocations uint64
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st.Versions) != 3 || st.Versions[1].Version != 3 || st.Versions[1].Invocations < 160 {
		t.Fatalf("ebb status --json versions: %v %.3000s", err, out)
	}
	_, metrics, _ := s.call(t, "GET", "/metrics", s.key, "", nil)
	want := fmt.Sprintf(`ebb_version_invocations_total{function="ver",version="3"} %d`, st.Versions[1].Invocations)
	if !strings.Contains(metrics, want) {
		t.Fatalf("/metrics lacks %s", want)
	}
}

// TestAliasesEverywhere: NAME:alias and NAME:N through the native path,
// /fn, the Lambda API (the real AWS SDK, with Qualifier and in the ARN) and
// async jobs; scope is the function's, whatever the qualifier.
func TestAliasesEverywhere(t *testing.T) {
	s := authServe(t)
	const fn = "al"
	for v := 1; v <= 3; v++ {
		s.deployArgs(t, versionFn(fn, v))
	}
	if out, err := s.cli(t, s.key, "alias", "set", fn, "prod", "2"); err != nil {
		t.Fatalf("ebb alias set: %v %s", err, out)
	}
	if out, err := s.cli(t, s.key, "alias", "ls", fn); err != nil || !strings.Contains(out, "prod") || !strings.Contains(out, "2=100%") {
		t.Fatalf("ebb alias ls: %v %s", err, out)
	}
	// Native.
	if v := s.invokeV(t, "/v1/functions/al:prod/invoke", ""); v != 2 {
		t.Fatalf("al:prod answered %d", v)
	}
	if v := s.invokeV(t, "/v1/functions/al:1/invoke", ""); v != 1 {
		t.Fatalf("al:1 answered %d", v)
	}
	if v := s.invokeV(t, "/v1/functions/al/invoke", ""); v != 3 {
		t.Fatalf("al answered %d", v)
	}
	// /fn: a python function behind a function URL.
	for q, want := range map[string]int{"al:prod": 2, "al:1": 1, "al": 3} {
		code, body, h := s.call(t, "GET", "/fn/"+q+"/x", s.key, "", nil)
		if code != 200 || answered(body) != want || h.Get("Ebb-Version") != strconv.Itoa(want) {
			t.Fatalf("GET /fn/%s/x = %d %s (Ebb-Version %q), want version %d", q, code, body, h.Get("Ebb-Version"), want)
		}
	}
	// Unknown qualifiers are 404s that say what is missing.
	for _, p := range []string{"/v1/functions/al:nope/invoke", "/v1/functions/al:9/invoke"} {
		if code, body, _ := s.call(t, "POST", p, s.key, `{}`, nil); code != 404 || !strings.Contains(body, "no version or alias") {
			t.Errorf("POST %s = %d %s", p, code, body)
		}
	}

	// The Lambda API through the AWS SDK, signing with an ebb pair scoped to
	// the function's name.
	k := s.createKey(t, "--role", "invoke", "--functions", "al")
	c := lambda.New(lambda.Options{Region: "eu-west-3", BaseEndpoint: aws.String(s.url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(k.AccessKeyID, k.SecretAccessKey, "")})
	ctx := context.Background()
	for _, in := range []struct {
		name, qualifier string
		want            int
	}{
		{"al", "prod", 2},
		{"al", "1", 1},
		{"al:prod", "", 2},
		{"al", "", 3},
		{"arn:aws:lambda:local:000000000000:function:al:1", "", 1},
	} {
		li := &lambda.InvokeInput{FunctionName: aws.String(in.name), Payload: []byte(`{}`)}
		if in.qualifier != "" {
			li.Qualifier = aws.String(in.qualifier)
		}
		out, err := c.Invoke(ctx, li)
		if err != nil {
			t.Fatalf("Invoke %s qualifier %q: %v\n%s", in.name, in.qualifier, err, s.log)
		}
		if aws.ToString(out.ExecutedVersion) != strconv.Itoa(in.want) || answered(string(out.Payload)) != in.want {
			t.Errorf("Invoke %s qualifier %q: ExecutedVersion %q payload %s, want version %d", in.name, in.qualifier,
				aws.ToString(out.ExecutedVersion), out.Payload, in.want)
		}
	}
	// GetFunction describes the version a qualifier names.
	gf, err := c.GetFunction(ctx, &lambda.GetFunctionInput{FunctionName: aws.String("al"), Qualifier: aws.String("prod")})
	if err != nil || aws.ToString(gf.Configuration.Version) != "2" || !strings.HasSuffix(aws.ToString(gf.Configuration.FunctionArn), ":al:prod") {
		t.Errorf("GetFunction al qualifier prod = %+v, %v; want version 2", gf, err)
	}
	if gf, err := c.GetFunction(ctx, &lambda.GetFunctionInput{FunctionName: aws.String("al")}); err != nil || aws.ToString(gf.Configuration.Version) != "$LATEST" {
		t.Errorf("GetFunction al = %+v, %v; want $LATEST", gf, err)
	}
	// A key scoped to another function is refused on every qualifier.
	other := s.createKey(t, "--role", "invoke", "--functions", "other-*")
	for _, p := range []string{"/v1/functions/al:prod/invoke", "/v1/functions/al:1/invoke"} {
		if code, body, _ := s.call(t, "POST", p, other.Key, `{}`, nil); code != 403 {
			t.Errorf("POST %s with a key for other-* = %d %s, want 403", p, code, body)
		}
	}
	if code, body, _ := s.call(t, "POST", "/v1/functions/al:prod/invoke", k.Key, `{}`, nil); code != 200 {
		t.Errorf("POST al:prod with a key for al = %d %s", code, body)
	}
	// Managing aliases and routes needs deploy; reading them describe.
	reader := s.createKey(t, "--role", "read", "--functions", "al")
	if code, body, _ := s.call(t, "PUT", "/v1/functions/al/aliases/x", reader.Key, `{"split":[{"version":1,"percent":100}]}`, nil); code != 403 || !strings.Contains(body, "deploy") {
		t.Errorf("alias set as read = %d %s, want 403 naming deploy", code, body)
	}
	if code, body, _ := s.call(t, "GET", "/v1/functions/al/versions", reader.Key, "", nil); code != 200 {
		t.Errorf("versions as read = %d %s", code, body)
	}

	// An async job for al:prod records the version it resolved to, and runs
	// on it even after the alias moves.
	code, body, h := s.call(t, "POST", "/v1/functions/al:prod/invoke", s.key, `{}`, map[string]string{"Ebb-Invocation-Type": "Event"})
	if code != 202 || h.Get("Ebb-Version") != "2" {
		t.Fatalf("async invoke of al:prod = %d %s (Ebb-Version %q), want 202 naming version 2", code, body, h.Get("Ebb-Version"))
	}
	var job struct{ ID string }
	json.Unmarshal([]byte(body), &job)
	if out, err := s.cli(t, s.key, "alias", "set", fn, "prod", "3"); err != nil {
		t.Fatalf("ebb alias set prod 3: %v %s", err, out)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body, _ := s.call(t, "GET", "/v1/jobs/"+job.ID, s.key, "", nil)
		var j struct {
			Status  string
			Version int
			Result  json.RawMessage
		}
		json.Unmarshal([]byte(body), &j)
		if code == 200 && j.Status == "succeeded" {
			if j.Version != 2 || answered(string(j.Result)) != 2 {
				t.Fatalf("job of al:prod = %s, want version 2 recorded and run", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job did not succeed: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A weighted alias splits, and a routed version cannot go.
	if out, err := s.cli(t, s.key, "alias", "set", fn, "prod", "3", "--weight", "1=50"); err != nil || !strings.Contains(out, "1=50% 3=50%") {
		t.Fatalf("ebb alias set --weight: %v %s", err, out)
	}
	seen := map[int]bool{}
	for range 60 {
		seen[s.invokeV(t, "/v1/functions/al:prod/invoke", "")] = true
	}
	if !seen[1] || !seen[3] || seen[2] {
		t.Fatalf("a 50/50 alias landed on %v", seen)
	}
	if out, err := s.cli(t, s.key, "rm", fn, "--version", "1"); err == nil || !strings.Contains(out, "alias") {
		t.Fatalf("ebb rm --version 1 (aliased) = %v %s, want refused naming the alias", err, out)
	}
	if out, err := s.cli(t, s.key, "alias", "rm", fn, "prod"); err != nil {
		t.Fatalf("ebb alias rm: %v %s", err, out)
	}
	if code, _, _ := s.call(t, "POST", "/v1/functions/al:prod/invoke", s.key, `{}`, nil); code != 404 {
		t.Fatalf("invoke of a removed alias = %d, want 404", code)
	}
	if out, err := s.cli(t, s.key, "rm", fn, "--version", "1"); err != nil {
		t.Fatalf("ebb rm --version 1 after the alias went: %v %s", err, out)
	}
	// Audit: the changes are recorded with their targets.
	code, body, _ = s.call(t, "GET", "/v1/audit", s.key, "", nil)
	for _, want := range []string{"alias.set", "alias.remove", "version.remove", "al:prod", "al:1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("audit log lacks %q: %d %.2000s", want, code, body)
		}
	}
}

// shadowFn is a python function that answers {"x", "y"}: version 1 y = 2x;
// version 2 the same (keys in another order, y off by 1e-12 relative) for
// even x and y = 2x+1 for odd x; version 3 crashes on even x and sleeps
// past its 1s timeout on odd x.
// shadowTimeout is the timeout of the shadow version that sleeps past it.
const shadowTimeout = 5 * time.Second

func shadowFn(v int) map[string]string {
	code := map[int]string{
		1: "def handler(event, context):\n    x = event['x']\n    return {'x': x, 'y': 2 * x}\n",
		2: "def handler(event, context):\n    x = event['x']\n    if x % 2 == 0:\n        return {'y': 2 * x * (1 + 1e-12), 'x': x}\n    return {'x': x, 'y': 2 * x + 1}\n",
		3: "import os, time\ndef handler(event, context):\n    if event['x'] % 2 == 0:\n        os._exit(3)\n    time.sleep(30)\n    return {}\n",
	}[v]
	// Version 3's shadow calls that sleep end at its timeout: a caller
	// that waited for one would take at least that long.
	timeout := map[int]string{3: shadowTimeout.String()}[v]
	if timeout == "" {
		timeout = "1s"
	}
	return map[string]string{"ebb.yaml": "name: sh\nruntime: python\nhandler: app.handler\ntimeout: " + timeout + "\n", "app.py": code}
}

type shadowReport struct {
	Version, Percent        int
	Active                  bool
	Mirrored, Equal, Differ uint64
	ShadowErrors            uint64 `json:"shadow_errors"`
	Dropped                 uint64
	PrimaryP50MS            float64 `json:"primary_p50_ms"`
	PrimaryP99MS            float64 `json:"primary_p99_ms"`
	ShadowP50MS             float64 `json:"shadow_p50_ms"`
	ShadowP99MS             float64 `json:"shadow_p99_ms"`
	Examples                []struct {
		RequestID                    string `json:"request_id"`
		Path, Error, Primary, Shadow string
	}
}

func (s *server) shadowReport(t *testing.T, fn string) shadowReport {
	t.Helper()
	out, err := s.cli(t, s.key, "shadow", "report", fn, "--json")
	var rep shadowReport
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("ebb shadow report: %v %s", err, out)
	}
	return rep
}

// waitShadow polls the report until n requests are accounted for (mirrored
// or dropped).
func (s *server) waitShadow(t *testing.T, fn string, n uint64) shadowReport {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		rep := s.shadowReport(t, fn)
		if rep.Mirrored+rep.Dropped >= n {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("shadow accounted for %d+%d of %d requests: %+v\n%s", rep.Mirrored, rep.Dropped, n, rep, s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestShadowCompares: a 100% shadow of a version that answers differently
// on half the inputs; callers always get the primary's answer, and the
// report's counts are exact; a shadow that crashes or sleeps past its
// timeout changes no caller's answer and costs callers nothing near its
// timeout.
func TestShadowCompares(t *testing.T) {
	s := authServe(t)
	s.deployArgs(t, shadowFn(1))
	s.deployArgs(t, shadowFn(2), "--no-traffic")
	// The shadow warm, as a shadow is after its first moments: otherwise its
	// cold starts, not its answers, are what this measures.
	if code, body, _ := s.call(t, "POST", "/v1/functions/sh:2/invoke", s.key, `{"x":1}`, nil); code != 200 {
		t.Fatalf("warm-up of sh:2 = %d %s", code, body)
	}
	if out, err := s.cli(t, s.key, "shadow", "sh", "--version", "2", "--percent", "100"); err != nil {
		t.Fatalf("ebb shadow: %v %s", err, out)
	}
	invoke := func(x int) time.Duration {
		start := time.Now()
		code, body, h := s.call(t, "POST", "/v1/functions/sh/invoke", s.key, fmt.Sprintf(`{"x":%d}`, x), nil)
		took := time.Since(start)
		var got struct{ X, Y float64 }
		if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.X != float64(x) || got.Y != float64(2*x) || h.Get("Ebb-Version") != "1" {
			t.Fatalf("invoke x=%d = %d %s (Ebb-Version %q), want the primary's answer", x, code, body, h.Get("Ebb-Version"))
		}
		return took
	}
	for x := range 200 {
		invoke(x)
	}
	rep := s.waitShadow(t, "sh", 200)
	// The callers' p99 with a shadow that agrees, the baseline for the
	// failing shadow below (the same load: every request mirrored).
	var base []time.Duration
	for x := range 100 {
		base = append(base, invoke(x))
	}
	s.waitShadow(t, "sh", 300)
	if rep.Mirrored != 200 || rep.Equal != 100 || rep.Differ != 100 || rep.ShadowErrors != 0 || rep.Dropped != 0 {
		t.Fatalf("report = mirrored %d, equal %d, differ %d, shadow errors %d, dropped %d; want 200, 100, 100, 0, 0",
			rep.Mirrored, rep.Equal, rep.Differ, rep.ShadowErrors, rep.Dropped)
	}
	if len(rep.Examples) != 20 || rep.Examples[0].Path != "$.y" || rep.Examples[0].RequestID == "" || rep.ShadowP50MS <= 0 || rep.PrimaryP99MS <= 0 {
		t.Fatalf("report examples and latencies: %+v", rep)
	}
	// Mirrored requests are metered as the shadow version's.
	vs := s.versions(t, "sh")
	if vs.Versions[1].Invocations != 301 || vs.Versions[0].Invocations != 300 {
		t.Fatalf("versions' invocations: %+v, want 300 and 301 (the warm-up)", vs.Versions)
	}
	// A shadowed version cannot be removed.
	if out, err := s.cli(t, s.key, "rm", "sh", "--version", "2"); err == nil || !strings.Contains(out, "shadow") {
		t.Fatalf("ebb rm --version 2 while shadowed = %v %s", err, out)
	}

	// A shadow that crashes or sleeps past its timeout.
	s.deployArgs(t, shadowFn(3), "--no-traffic")
	if out, err := s.cli(t, s.key, "shadow", "sh", "--version", "3"); err != nil {
		t.Fatalf("ebb shadow --version 3: %v %s", err, out)
	}
	var failing []time.Duration
	for x := range 100 {
		failing = append(failing, invoke(x))
	}
	rep = s.waitShadow(t, "sh", 100)
	if rep.Mirrored+rep.Dropped != 100 || rep.ShadowErrors != rep.Mirrored || rep.Equal != 0 || rep.Mirrored == 0 {
		t.Fatalf("report of a failing shadow = %+v, want every mirror a shadow error", rep)
	}
	// The shadow's timeout and its 30s sleep never reach a caller: one
	// that waited for its shadow would have taken at least the timeout
	// (the primary answers in milliseconds). A causal bound, not a guess
	// at the machine's speed. The callers' p99 against the same run's
	// agreeing shadow is logged: a crashing shadow's restarts take CPU
	// from the primary on a small machine.
	p99 := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)*99/100-1] }
	worst, pBase, pFail := slices.Max(failing), p99(base), p99(failing)
	t.Logf("callers' p99: %s with an agreeing shadow, %s with a crashing or hanging one (slowest %s)", pBase, pFail, worst)
	if worst >= shadowTimeout {
		t.Fatalf("the slowest caller took %s with a shadow that runs into its %s timeout", worst, shadowTimeout)
	}
	// Per version, in ebb versions/status and /metrics: version 3 ran only
	// as the shadow, and every run was an error.
	out, err := s.cli(t, s.key, "status", "sh", "--json")
	var st struct {
		Versions []struct {
			Version             int
			Invocations, Errors uint64
			ColdStarts          uint64 `json:"cold_starts"`
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st.Versions) != 3 {
		t.Fatalf("ebb status --json: %v %.2000s", err, out)
	}
	v1, v3 := st.Versions[0], st.Versions[2]
	// Every mirror is an error of version 3's; those its pool refused (its
	// instances held by calls sleeping into the timeout) never ran, so
	// they are errors without an invocation.
	if v3.Version != 3 || v3.Invocations == 0 || v3.Invocations > rep.Mirrored || v3.Errors != rep.Mirrored || v3.ColdStarts == 0 || v1.Errors != 0 || v1.ColdStarts == 0 {
		t.Fatalf("ebb status versions = %+v, want version 3 with at most %d invocations, %d errors, and cold starts", st.Versions, rep.Mirrored, rep.Mirrored)
	}
	out, err = s.cli(t, s.key, "status", "sh")
	if want := fmt.Sprintf("%d invocations (cold starts %d, errors %d)", v3.Invocations, v3.ColdStarts, v3.Errors); err != nil || !strings.Contains(out, want) {
		t.Fatalf("ebb status lacks version 3's %q:\n%s", want, out)
	}
	_, metrics, _ := s.call(t, "GET", "/metrics", s.key, "", nil)
	for _, want := range []string{
		fmt.Sprintf(`ebb_version_errors_total{function="sh",version="3"} %d`, v3.Errors),
		fmt.Sprintf(`ebb_version_cold_starts_total{function="sh",version="3"} %d`, v3.ColdStarts),
		fmt.Sprintf(`ebb_version_cold_starts_total{function="sh",version="1"} %d`, v1.ColdStarts),
		`ebb_version_duration_seconds_count{function="sh",version="1"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	out, err = s.cli(t, s.key, "shadow", "stop", "sh")
	if err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("ebb shadow stop: %v %s", err, out)
	}
	if rep := s.shadowReport(t, "sh"); rep.Active || rep.Version != 3 {
		t.Fatalf("report after stop = %+v", rep)
	}
}

package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

// requireChromium is the gate CI sets (.ci/run): Chromium and the test's
// node_modules are installed, so TestDashboardInChromium must run.
const requireChromium = "EBB_REQUIRE_CHROMIUM"

// hostile is printed by a function and must reach the page as text.
const hostile = `<img src=x onerror="document.title='pwned'"><b>bold</b>`

// scorer answers a score, prints a log line (the hostile one among them),
// and fails on {"fail": true}.
func scorer(version string) map[string]string {
	return map[string]string{
		"ebb.yaml": "name: scorer\nruntime: python\nhandler: app.handler\nmemory: 128\n",
		"app.py": "import json\n" +
			"def handler(event, context):\n" +
			"    print('scoring', json.dumps(event), " + fmt.Sprintf("%q", hostile) + ")\n" +
			"    if event.get('fail'):\n" +
			"        raise ValueError('asked to fail')\n" +
			"    return {'score': event.get('x', 0) * 2, 'v': " + version + "}\n",
	}
}

// TestDashboardInChromium: a real `ebb serve --require-auth` with functions
// deployed and invoked, and its dashboard in headless Chromium (through
// playwright-core, testdata/ui/ui.mjs): the page asks for a key, lists the
// functions, draws charts from real usage, opens a function's detail
// (versions, jobs, logs, shadow report) on a click, keeps a log line's
// markup as text, draws a monitored function's distributions (or says this
// ebb has no monitor API), says clearly in the panel when a key may not
// read logs, and logs no error to the console. Screenshots go to $EBB_TEST_ARTIFACTS (default artifacts/ui at
// the module root).
func TestDashboardInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ebb and Chromium; skipped with -short")
	}
	root, err := ebbtest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		ebbtest.SkipUnlessRequired(t, requireChromium, "no Chromium at %s (apt-get install chromium)", chromium)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		ebbtest.SkipUnlessRequired(t, requireChromium, "no node on PATH (apt-get install nodejs)")
	}
	uiDir := filepath.Join(root, "web", "testdata", "ui")
	if _, err := os.Stat(filepath.Join(uiDir, "node_modules", "playwright-core", "package.json")); err != nil {
		ebbtest.SkipUnlessRequired(t, requireChromium, "playwright-core is not installed (npm ci --prefix web/testdata/ui)")
	}
	artifacts := os.Getenv("EBB_TEST_ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(root, "artifacts", "ui")
	}

	s := serve(t)
	readKey := s.createKey(t, "read")
	invokeKey := s.createKey(t, "invoke")

	s.deploy(t, filepath.Join(root, "examples", "hello-python"), nil, "")
	s.deploy(t, "", scorer("1"), "")
	for i := range 12 {
		s.invoke(t, "hello-python", fmt.Sprintf(`{"name":"n%d"}`, i))
		s.invoke(t, "scorer", fmt.Sprintf(`{"x":%d,"fail":%v}`, i, i%4 == 3))
	}
	// A second version of scorer that takes no traffic, shadowed.
	s.deploy(t, "", scorer("2"), "--no-traffic")
	if code, body := s.call(t, "PUT", "/v1/functions/scorer/shadow", s.admin, `{"version":2,"percent":100}`); code != 200 {
		t.Fatalf("start shadow: %d %s", code, body)
	}
	for i := range 6 {
		s.invoke(t, "scorer", fmt.Sprintf(`{"x":%d}`, 100+i))
	}
	// Async jobs, for the jobs panel.
	for i := range 3 {
		if code, body := s.call(t, "POST", "/v1/functions/scorer/invoke", s.admin, fmt.Sprintf(`{"x":%d}`, 200+i), "Ebb-Invocation-Type", "Event"); code != 202 {
			t.Fatalf("async invoke: %d %s", code, body)
		}
	}

	// Prediction distributions, where this ebb has the monitor API (issue
	// 13's; a build without it answers the route's own 404, and the page
	// must say so instead).
	monitored := ""
	if code, body := s.call(t, "GET", "/v1/functions/scorer/monitor", s.admin, ""); code == 404 && strings.Contains(body, `"NotFound"`) {
		t.Logf("this ebb has no monitor API: checking that the page says so")
	} else {
		monitored = "classifier"
		s.deploy(t, "", map[string]string{
			"ebb.yaml": "name: classifier\nruntime: python\nhandler: app.handler\nmemory: 128\nmonitor: true\n",
			"app.py":   "def handler(event, context):\n    x = event['x']\n    return {'score': x / 40.0, 'label': 1 if x > 20 else 0}\n",
		}, "")
		for i := range 40 {
			s.invoke(t, "classifier", fmt.Sprintf(`{"x":%d,"y":%d}`, i, i%7))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "ui.mjs")
	cmd.Dir = uiDir
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url, "EBB_KEY="+readKey, "EBB_DENIED_KEY="+invokeKey,
		"EBB_FUNCTIONS=hello-python,scorer,"+monitored, "EBB_DETAIL=scorer", "EBB_HOSTILE="+hostile,
		"EBB_ARTIFACTS="+artifacts, "CHROMIUM="+chromium, "EBB_MONITORED="+monitored)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("ui.mjs: %v after %s\nstderr:\n%s\nstdout:\n%s\nebb log (tail):\n%s", err, time.Since(start).Round(time.Millisecond),
			stderr.String(), stdout.String(), tail(s.log.String(), 3000))
	}
	t.Logf("Chromium run took %s; screenshots in %s", time.Since(start).Round(time.Millisecond), artifacts)

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var sum struct {
		Screenshots []string
		Listed      []string
		Charts      map[string]struct {
			Points  int
			Nonzero []int // points with data, per series
		}
		LogLines      int
		Jobs          int
		ConsoleErrors []string
		Monitor       string
		// MonitorCharts counts the monitored function's distribution
		// charts with data.
		MonitorCharts int
		Denied        string
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("ui.mjs summary: %v\n%s", err, stdout.String())
	}
	t.Logf("summary: %s", lines[len(lines)-1])
	if len(sum.ConsoleErrors) > 0 {
		t.Errorf("console errors: %q", sum.ConsoleErrors)
	}
	want := "hello-python,scorer"
	if monitored != "" {
		want = monitored + "," + want
	}
	if got := strings.Join(sum.Listed, ","); got != want {
		t.Errorf("listed %q, want %s", got, want)
	}
	for _, c := range []string{"latency", "invocations", "cold", "gbs"} {
		if ch := sum.Charts[c]; ch.Points == 0 || len(ch.Nonzero) == 0 || slices.Contains(ch.Nonzero, 0) {
			t.Errorf("chart %s: %+v, want points with data in every series", c, ch)
		}
	}
	if sum.LogLines == 0 {
		t.Error("no log lines shown")
	}
	if sum.Jobs != 3 {
		t.Errorf("jobs panel shows %d jobs, want the 3 async invocations", sum.Jobs)
	}
	if !strings.Contains(sum.Denied, `"logs"`) {
		t.Errorf("the logs panel's refusal %q does not name the permission", sum.Denied)
	}
	wantShots := 4
	if monitored != "" {
		wantShots++
		if sum.MonitorCharts == 0 {
			t.Errorf("no prediction-distribution chart with data for %s (panel: %q)", monitored, sum.Monitor)
		}
	} else if !strings.Contains(sum.Monitor, "no monitor API") {
		t.Errorf("monitor panel says %q, want that this ebb has no monitor API", sum.Monitor)
	}
	if len(sum.Screenshots) != wantShots {
		t.Errorf("screenshots %q, want %d", sum.Screenshots, wantShots)
	}
	for _, p := range sum.Screenshots {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("screenshot %s: %v", p, err)
		}
	}
}

// server is one `ebb serve --require-auth`.
type server struct {
	bin, url, admin string
	log             *ebbtest.Buffer
}

func serve(t *testing.T) *server {
	t.Helper()
	bin := ebbtest.Ebb(t)
	sv := ebbtest.StartServe(t, bin, "--require-auth", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--warm-memory", "256MiB")
	s := &server{bin: bin, url: sv.URL, log: sv.Log}
	// The admin key is printed before ebb serves.
	s.admin = regexp.MustCompile(`ebb_[0-9a-f]{48}`).FindString(sv.Stdout.String())
	if s.admin == "" {
		t.Fatalf("no admin key printed; stdout:\n%s", sv.Stdout)
	}
	return s
}

// call sends one request with key and header pairs (name, value, ...).
func (s *server) call(t *testing.T, method, path, key, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *server) createKey(t *testing.T, role string) string {
	t.Helper()
	code, body := s.call(t, "POST", "/v1/keys", s.admin, `{"role":"`+role+`","name":"ui-`+role+`"}`)
	var k struct{ Key string }
	if code != 200 && code != 201 || json.Unmarshal([]byte(body), &k) != nil || k.Key == "" {
		t.Fatalf("create %s key: %d %s", role, code, body)
	}
	return k.Key
}

// deploy runs `ebb deploy [flag] DIR` on dir, or on files written to a new
// directory.
func (s *server) deploy(t *testing.T, dir string, files map[string]string, flag string) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	args := []string{"deploy", dir}
	if flag != "" {
		args = []string{"deploy", flag, dir}
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url, "EBB_API_KEY="+s.admin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ebb %s: %v\n%s\nserver log:\n%s", strings.Join(args, " "), err, out, tail(s.log.String(), 3000))
	}
}

func (s *server) invoke(t *testing.T, fn, body string) {
	t.Helper()
	code, out := s.call(t, "POST", "/v1/functions/"+fn+"/invoke", s.admin, body)
	if code != 200 && !strings.Contains(body, `"fail":true`) {
		t.Fatalf("invoke %s %s: %d %s", fn, body, code, out)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

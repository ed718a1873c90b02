package main

// `ebb sim` as the built binary: synthesize, replay, JSON, and errors that
// name the file, line and field.

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebb-run/ebb/internal/ebbtest"
)

func runEbb(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("ebb %v: %v", args, err)
	return "", "", 0
}

func TestSimCLI(t *testing.T) {
	bin := ebbtest.Ebb(t)
	dir := t.TempDir()
	out, errOut, code := runEbb(t, bin, "sim", "--synthesize", "40", "--seed", "9", "--days", "2", dir)
	if code != 0 || !strings.Contains(out, "wrote 40 apps over 2 day(s)") {
		t.Fatalf("synthesize: exit %d, %s %s", code, out, errOut)
	}
	d1, d2, mem := filepath.Join(dir, "invocations.d01.csv"), filepath.Join(dir, "invocations.d02.csv"), filepath.Join(dir, "memory.csv")
	out, errOut, code = runEbb(t, bin, "sim", "--trace", d1, "--trace", d2, "--memory", mem, "--policy", "hybrid", "--policy", "fixed:20m", "--json")
	if code != 0 {
		t.Fatalf("sim: exit %d: %s", code, errOut)
	}
	var rep struct {
		Days       int    `json:"days"`
		Minutes    int    `json:"minutes"`
		MemoryUnit string `json:"memory_unit"`
		Policies   []struct {
			Policy       string `json:"policy"`
			Apps         int    `json:"apps"`
			Invocations  int64  `json:"invocations"`
			ColdStartPct struct {
				P50, P75, P99 *float64
			} `json:"cold_start_pct"`
			Wasted     *float64 `json:"wasted_memory_mb_minutes"`
			VsBaseline struct {
				P75   *float64 `json:"cold_start_pct_p75"`
				Waste *float64 `json:"wasted_memory_mb_minutes"`
			} `json:"vs_fixed_10m"`
			Ns *float64 `json:"policy_ns_per_invocation"`
		} `json:"policies"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("sim --json: %v\n%s", err, out)
	}
	if rep.Days != 2 || rep.Minutes != 2880 || rep.MemoryUnit != "MB" || len(rep.Policies) != 3 {
		t.Fatalf("report %+v, want 2 days, 2880 minutes, MB, 3 policies", rep)
	}
	for i, want := range []string{"fixed:10m", "hybrid", "fixed:20m"} {
		p := rep.Policies[i]
		if p.Policy != want || p.Apps != 40 || p.Invocations == 0 || p.ColdStartPct.P75 == nil || p.Wasted == nil || p.VsBaseline.Waste == nil || p.Ns == nil {
			t.Errorf("policy %d: %+v, want %s over 40 apps with every field", i, p, want)
		}
	}
	// The same seed writes the same trace.
	dir2 := t.TempDir()
	runEbb(t, bin, "sim", "--synthesize", "40", "--seed", "9", "--days", "2", dir2)
	a, _ := os.ReadFile(d2)
	b, _ := os.ReadFile(filepath.Join(dir2, "invocations.d02.csv"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("--synthesize with the same seed wrote another trace")
	}
	// The earlier mix stays available as a stress case, and differs.
	dir3 := t.TempDir()
	if out, errOut, code := runEbb(t, bin, "sim", "--synthesize", "40", "--seed", "9", "--days", "2", "--mix", "poisson-rare", dir3); code != 0 || !strings.Contains(out, "(mix poisson-rare)") {
		t.Fatalf("--mix poisson-rare: exit %d, %s %s", code, out, errOut)
	}
	if c, _ := os.ReadFile(filepath.Join(dir3, "invocations.d02.csv")); len(c) == 0 || bytes.Equal(a, c) {
		t.Error("--mix poisson-rare wrote the paper mix")
	}

	bad := filepath.Join(dir, "bad.csv")
	first, _ := os.ReadFile(d1)
	lines := strings.SplitN(string(first), "\n", 4)
	lines[2] = strings.Replace(lines[2], ",0", ",zero", 1)
	os.WriteFile(bad, []byte(strings.Join(lines, "\n")), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--trace", bad}, bad + ":3: field minute "},
		{[]string{"--trace", d1, "--memory", d1}, d1 + ":1: field AverageAllocatedMb: missing"},
		{[]string{"--trace", d1, "--policy", "lru"}, `unknown policy "lru"`},
		{[]string{"--trace", filepath.Join(dir, "none.csv")}, "no such file"},
		{nil, "--trace FILE is required"},
		{[]string{"--synthesize", "5", "--mix", "azure", t.TempDir()}, `unknown mix "azure"`},
	} {
		_, errOut, code := runEbb(t, bin, append([]string{"sim"}, c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("ebb sim %v: exit %d, stderr %q; want a failure saying %q", c.args, code, errOut, c.want)
		}
	}
}

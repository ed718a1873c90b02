package main

// The client subcommands (ls, status, logs, rm, jobs) run as the built
// binary against a real `ebb serve`: their output and exit statuses.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ebbRun runs `ebb args...` against s and returns stdout, stderr and the
// exit status.
func (s *server) ebbRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "EBB_URL="+s.url)
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

// ebbOK runs `ebb args...` and fails the test unless it exits 0.
func (s *server) ebbOK(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := s.ebbRun(t, args...)
	if code != 0 {
		t.Fatalf("ebb %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// ebbFails runs `ebb args...` and checks it exits with code and says want
// on stderr.
func (s *server) ebbFails(t *testing.T, code int, want string, args ...string) {
	t.Helper()
	out, errOut, got := s.ebbRun(t, args...)
	if got != code || !strings.Contains(errOut, want) {
		t.Errorf("ebb %v: exit %d, stderr %q (stdout %q); want exit %d and %q", args, got, errOut, out, code, want)
	}
}

const cliApp = `
def handler(event, context):
    print("cli-log-line", event.get("n"))
    return {"n": event.get("n")}
`

func TestCLIClientCommands(t *testing.T) {
	if _, err := os.Stat(python3); err != nil {
		t.Skip("Debian's /usr/bin/python3 is not installed")
	}
	s := startServe(t)
	s.deploy(t, map[string]string{"ebb.yaml": "name: clifn\nruntime: python\nhandler: app.handler\n", "app.py": cliApp})
	if out := s.ebbOK(t, "invoke", "clifn", "-d", `{"n": 1}`); strings.TrimSpace(out) != `{"n": 1}` && strings.TrimSpace(out) != `{"n":1}` {
		t.Fatalf("invoke printed %q", out)
	}

	t.Run("ls", func(t *testing.T) {
		out := s.ebbOK(t, "ls")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") {
			t.Fatalf("ls printed %q, want a header and one row", out)
		}
		// NAME VERSION RUNTIME INSTANCES INVOCATIONS COLD STARTS ERRORS
		if f := strings.Fields(lines[1]); len(f) != 7 || f[0] != "clifn" || f[1] != "1" || f[2] != "python" || f[4] != "1" || f[5] != "1" || f[6] != "0" {
			t.Errorf("ls row %q, want clifn 1 python _ 1 1 0", lines[1])
		}
	})

	t.Run("status", func(t *testing.T) {
		out := s.ebbOK(t, "status", "clifn")
		for _, re := range []string{`(?m)^clifn  version 1  \(python app\.handler\)$`, `(?m)^  url +http://\S+/v1/functions/clifn/invoke$`,
			`(?m)^  invocations  1 \(cold starts 1, errors 0\)`, `(?m)^  keep-alive   fixed:5m, fixed; `} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("status output does not match %s:\n%s", re, out)
			}
		}
		var st struct {
			Name        string
			Version     int
			Invocations int
		}
		if err := json.Unmarshal([]byte(s.ebbOK(t, "status", "--json", "clifn")), &st); err != nil || st.Name != "clifn" || st.Version != 1 || st.Invocations != 1 {
			t.Errorf("status --json = %+v (%v)", st, err)
		}
		s.ebbFails(t, 1, "ebb: status nosuch: function not found", "status", "nosuch")
		s.ebbFails(t, 1, "usage: ebb status NAME", "status")
	})

	t.Run("warm", func(t *testing.T) {
		// clifn was invoked: its zygote holds warm capacity.
		out := s.ebbOK(t, "status", "clifn")
		if !regexp.MustCompile(`(?m)^  warm +holds [0-9.]+ MiB of the node's warm budget \(zygote, `).MatchString(out) {
			t.Errorf("status shows no warm line:\n%s", out)
		}
		out = s.ebbOK(t, "warm")
		for _, re := range []string{`(?m)^warm budget  [0-9.]+ of 256.0 MiB, 1 of 128 holders$`, `(?m)^clifn +1 +zygote +[0-9.]+ +`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("ebb warm output does not match %s:\n%s", re, out)
			}
		}
		s.ebbFails(t, 1, "usage: ebb warm [--json]", "warm", "extra")
	})

	t.Run("logs", func(t *testing.T) {
		// The line reaches the log buffer through a pipe after the answer.
		var out string
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out, "cli-log-line 1") && time.Now().Before(deadline) {
			out = s.ebbOK(t, "logs", "clifn")
			time.Sleep(20 * time.Millisecond)
		}
		// "15:04:05.000 REQUEST-ID stdout text"
		if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{3} [0-9a-f-]{36} stdout cli-log-line 1$`).MatchString(out) {
			t.Errorf("logs printed %q, want the handler's line with time, request id and stream", out)
		}
		s.ebbFails(t, 1, "ebb: logs of nosuch: function not found", "logs", "nosuch")
		s.ebbFails(t, 1, "usage: ebb logs NAME", "logs")
	})

	t.Run("logs -f", func(t *testing.T) {
		cmd := exec.Command(s.bin, "logs", "-f", "clifn")
		cmd.Env = append(os.Environ(), "EBB_URL="+s.url)
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(pipe)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// The old line first, then one written after -f started.
		waitLine := func(want string) {
			t.Helper()
			timeout := time.After(15 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("logs -f ended before %q", want)
					}
					if strings.HasSuffix(l, want) {
						return
					}
				case <-timeout:
					t.Fatalf("logs -f did not print %q", want)
				}
			}
		}
		waitLine("cli-log-line 1")
		s.ebbOK(t, "invoke", "clifn", "-d", `{"n": 2}`)
		waitLine("cli-log-line 2")
		// Interrupted, it ends cleanly.
		cmd.Process.Signal(syscall.SIGINT)
		for range lines {
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("logs -f after SIGINT: %v, want exit 0", err)
		}
	})

	t.Run("jobs", func(t *testing.T) {
		req, _ := http.NewRequest("POST", s.url+"/v1/functions/clifn/invoke", strings.NewReader(`{"n": 3}`))
		req.Header.Set("Ebb-Invocation-Type", "Event")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var queued struct{ ID string }
		if resp.StatusCode != 202 || json.Unmarshal(body, &queued) != nil || queued.ID == "" {
			t.Fatalf("async invoke = %d %s", resp.StatusCode, body)
		}
		var out string
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out, "succeeded") && time.Now().Before(deadline) {
			out = s.ebbOK(t, "jobs", "ls", "clifn")
			time.Sleep(20 * time.Millisecond)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") {
			t.Fatalf("jobs ls printed %q, want a header and one row", out)
		}
		// ID STATUS ATTEMPTS ENQUEUED(date time) FINISHED(date time)
		if f := strings.Fields(lines[1]); len(f) != 7 || f[0] != queued.ID || f[1] != "succeeded" || f[2] != "1" {
			t.Errorf("jobs ls row %q, want %s succeeded 1 …", lines[1], queued.ID)
		}
		if out := s.ebbOK(t, "jobs", "ls", "clifn", "--status", "dead"); !strings.HasPrefix(out, "ID ") || strings.Count(out, "\n") != 1 {
			t.Errorf("jobs ls --status dead printed %q, want only the header", out)
		}
		var j struct {
			ID, Function, Status string
			Result               json.RawMessage
		}
		if err := json.Unmarshal([]byte(s.ebbOK(t, "jobs", "get", queued.ID)), &j); err != nil || j.ID != queued.ID || j.Function != "clifn" || j.Status != "succeeded" {
			t.Errorf("jobs get = %+v (%v)", j, err)
		}
		if out := s.ebbOK(t, "jobs", "redrive", "clifn"); out != "re-queued 0 dead-letter job(s) of clifn\n" {
			t.Errorf("jobs redrive printed %q", out)
		}
		s.ebbFails(t, 1, "get job no-such-job: job not found", "jobs", "get", "no-such-job")
		s.ebbFails(t, 1, "invalid value", "jobs", "ls", "clifn", "--limit", "x")
		s.ebbFails(t, 2, "Usage:", "jobs")
		s.ebbFails(t, 2, "Usage:", "jobs", "frobnicate", "clifn")
	})

	t.Run("rm", func(t *testing.T) {
		if out := s.ebbOK(t, "rm", "clifn"); out != "removed clifn\n" {
			t.Errorf("rm printed %q", out)
		}
		if out := s.ebbOK(t, "ls"); strings.Contains(out, "clifn") {
			t.Errorf("ls after rm still lists it: %q", out)
		}
		s.ebbFails(t, 1, "ebb: remove clifn: function not found", "rm", "clifn")
		// A removed function's job records stay readable (queue.Remove), so
		// jobs ls answers for any name: the old job, or nothing.
		if out := s.ebbOK(t, "jobs", "ls", "clifn"); strings.Count(out, "\n") != 2 || !strings.Contains(out, "succeeded") {
			t.Errorf("jobs ls after rm printed %q, want the old job", out)
		}
		if out := s.ebbOK(t, "jobs", "ls", "neverdeployed"); !strings.HasPrefix(out, "ID ") || strings.Count(out, "\n") != 1 {
			t.Errorf("jobs ls of a name never deployed printed %q, want only the header", out)
		}
		s.ebbFails(t, 1, "ebb: status clifn: function not found", "status", "clifn")
		s.ebbFails(t, 1, "usage: ebb rm NAME", "rm")
	})
}

package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestCLIMonitor(t *testing.T) {
	if _, err := os.Stat(python3); err != nil {
		t.Skip("Debian's /usr/bin/python3 is not installed")
	}
	s := startServe(t)
	s.deploy(t, map[string]string{"ebb.yaml": "name: monfn\nruntime: python\nhandler: app.handler\nmonitor: true\n", "app.py": cliApp})
	s.ebbOK(t, "invoke", "monfn", "-d", `{"n": 4}`)
	// The summariser folds in the background, every few milliseconds.
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out, "event.n[0]") && time.Now().Before(deadline) {
		out = s.ebbOK(t, "monitor", "monfn")
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out, "monfn version 1: 1 events") || !strings.Contains(out, "result.n[0]") {
		t.Errorf("ebb monitor printed:\n%s", out)
	}
	s.ebbFails(t, 1, "ebb: monitor: function not found", "monitor", "nosuch")
	s.ebbFails(t, 1, "since", "monitor", "monfn", "--since", "yesterday")
}

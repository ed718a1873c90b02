package instance

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/process"
)

// fakeServer is a stand-in for a runtime's process: it prints ReadyLine on
// stderr at once and only listens on $PORT once the file "listen" appears
// beside it, which the test makes when it wants: a Start that returns while
// the port does not accept connections must have trusted the line.
const fakeServer = `#!/bin/sh
echo EBB-READY >&2
while [ ! -e "$(dirname "$0")/listen" ]; do sleep 0.01; done
exec /usr/bin/python3 -c 'import os, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(8); time.sleep(60)'
`

func TestReadyLine(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3")
	}
	pm, err := process.NewManager(process.Config{Root: t.TempDir(), CgroupName: fmt.Sprintf("ebbtest-ready-%d", os.Getpid()), CgroupMode: process.ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	tests := []struct {
		runtime ebb.Runtime
		trusted bool // Start returns on the line, before the port listens
	}{
		{ebb.RuntimeONNX, true},  // onnx-serve ships with ebb
		{ebb.RuntimeHTTP, false}, // a user's server: wait for the port
	}
	for _, tc := range tests {
		t.Run(string(tc.runtime), func(t *testing.T) {
			dir := t.TempDir()
			script := filepath.Join(dir, "server")
			if err := os.WriteFile(script, []byte(fakeServer), 0o755); err != nil {
				t.Fatal(err)
			}
			listen := func() {
				if err := os.WriteFile(filepath.Join(dir, "listen"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if !tc.trusted {
				listen() // Start waits for the port: let it come
			}
			fn := &ebb.Function{Spec: ebb.Spec{Name: "ready-" + string(tc.runtime), Runtime: tc.runtime, Handler: "./server", MemoryMiB: 128}, Version: 1}
			if tc.runtime == ebb.RuntimeONNX {
				fn.Spec.Handler = "model.onnx"
			}
			s, err := NewStarter(Config{Processes: pm, Executable: script}, fn, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			inst, err := s.Start(ctx, "ready-"+string(tc.runtime))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { inst.Kill(); <-inst.Done() }()
			c, err := net.Dial("tcp", inst.up.Addr())
			listening := err == nil
			if c != nil {
				c.Close()
			}
			if got, want := listening, !tc.trusted; got != want {
				t.Errorf("port listening when Start returned = %v, want %v (ready line trusted: %v)", got, want, tc.trusted)
			}
			if tc.trusted {
				listen()
			}
		})
	}
}

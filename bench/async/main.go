// Command async measures end-to-end async job throughput: it starts its own
// `ebb serve` on a free loopback port and a fresh data directory, deploys the
// function in -fn, queues -n Event invocations from -c clients, and waits
// until every job's record says succeeded. It fails on any job that does not.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/manifest"
	"github.com/ebb-run/ebb/internal/queue"
)

func main() {
	bin := flag.String("ebb", "", "ebb binary (required)")
	fnDir := flag.String("fn", "", "function directory to deploy (required)")
	n := flag.Int("n", 1000, "jobs")
	c := flag.Int("c", 16, "concurrent clients queueing jobs")
	flag.Parse()
	if err := run(*bin, *fnDir, *n, *c); err != nil {
		fmt.Fprintln(os.Stderr, "async bench: FAIL:", err)
		os.Exit(1)
	}
}

func run(bin, fnDir string, n, conc int) error {
	if bin == "" || fnDir == "" {
		return fmt.Errorf("-ebb and -fn are required")
	}
	raw, err := os.ReadFile(filepath.Join(fnDir, manifest.FileName))
	if err != nil {
		return err
	}
	spec, err := manifest.Parse(raw)
	if err != nil {
		return err
	}
	data, err := os.MkdirTemp("", "ebb-async-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(data, "ebb.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "serve", "--listen", addr, "--data", filepath.Join(data, "d"), "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	url := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ebb serve did not start")
		}
	}
	ctx := context.Background()
	cl := client.New(url, "")
	var buf bytes.Buffer
	if _, err := bundle.Pack(fnDir, &buf); err != nil {
		return err
	}
	if _, err := cl.Deploy(ctx, spec.Name, &buf); err != nil {
		return err
	}
	if r, err := cl.Invoke(ctx, spec.Name, []byte(`{}`)); err != nil || r.Status != 200 {
		return fmt.Errorf("warm-up invoke: %v %v", r, err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, conc)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += conc {
				if _, err := cl.InvokeAsync(ctx, spec.Name, []byte(`{}`)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("queue job: %w", err)
	}
	queued := time.Since(start)
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		js, err := cl.Jobs(ctx, spec.Name, queue.StatusSucceeded, n)
		if err != nil {
			return err
		}
		if len(js) >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d jobs succeeded", len(js), n)
		}
	}
	total := time.Since(start)
	fmt.Printf("| function | jobs | clients | queued (202) jobs/s | end-to-end jobs/s | all done in |\n|---|---|---|---|---|---|\n")
	fmt.Printf("| %s (max_instances %d) | %d | %d | %.0f | %.0f | %s |\n", spec.Name, spec.MaxInstances, n, conc,
		float64(n)/queued.Seconds(), float64(n)/total.Seconds(), total.Round(time.Millisecond))
	return nil
}

// Command async measures end-to-end async job throughput: it starts its own
// `ebb serve` on a free loopback port and a fresh data directory, deploys the
// function in -fn, queues -n Event invocations from -c clients, and waits
// until every job's record says succeeded. It fails on any job that does not.
//
// With -nats it starts -nodes ebb nodes on that NATS cluster instead (with
// -replicas), deploys through the first and queues through all of them in
// turn, so that the jobs run wherever a node's workers take them.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
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
	flag.StringVar(&natsURL, "nats", "", "external NATS cluster URLs (comma-separated); default embedded")
	flag.IntVar(&nodes, "nodes", 1, "with -nats: ebb nodes to start")
	flag.IntVar(&replicas, "replicas", 1, "with -nats: --nats-replicas")
	flag.StringVar(&payload, "payload", "{}", "each job's event")
	flag.IntVar(&hop, "hop", 0, "with -nats and -nodes 2 or more: instead of async jobs, time this many sync invokes through the node holding the function's instance and as many through another node, which forwards them (deploy a max_instances: 1 function)")
	flag.Parse()
	if err := run(*bin, *fnDir, *n, *c); err != nil {
		fmt.Fprintln(os.Stderr, "async bench: FAIL:", err)
		os.Exit(1)
	}
}

var (
	natsURL, payload     string
	nodes, replicas, hop int
)

// serve starts one `ebb serve` on a free loopback port and data dir, and
// returns its URL once it answers, and the function that stops it.
func serve(bin, data string, i int) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(data, fmt.Sprintf("ebb%d.log", i)))
	if err != nil {
		return "", nil, err
	}
	args := []string{"serve", "--listen", addr, "--data", filepath.Join(data, fmt.Sprintf("d%d", i)), "--log-level", "warn"}
	if natsURL != "" {
		args = append(args, "--nats", natsURL, "--nats-replicas", fmt.Sprint(replicas), "--node", fmt.Sprintf("n%d", i))
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	url := "http://" + addr
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			return url, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("ebb serve %d did not start (log in %s)", i, logf.Name())
		}
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
	if natsURL == "" {
		nodes = 1
	}
	var urls []string
	for i := range nodes {
		url, stop, err := serve(bin, data, i)
		if err != nil {
			return err
		}
		defer stop()
		urls = append(urls, url)
	}
	ctx := context.Background()
	cl := client.New(urls[0], "")
	var cls []*client.Client
	for _, u := range urls {
		cls = append(cls, client.New(u, ""))
	}
	var buf bytes.Buffer
	if _, err := bundle.Pack(fnDir, &buf); err != nil {
		return err
	}
	if _, err := cl.Deploy(ctx, spec.Name, &buf); err != nil {
		return err
	}
	// Warm every node up: the others take the function up from the registry.
	for i, c := range cls {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			r, err := c.Invoke(ctx, spec.Name, []byte(payload))
			if err == nil && r.Status == 200 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("warm-up invoke through node %d: %v %v", i, r, err)
			}
		}
	}
	if hop > 0 {
		return hopBench(urls, spec.Name, hop)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, conc)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += conc {
				if _, err := cls[i%len(cls)].InvokeAsync(ctx, spec.Name, []byte(payload)); err != nil {
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
	where := "embedded NATS"
	if natsURL != "" {
		where = fmt.Sprintf("%d node(s), NATS cluster R%d", nodes, replicas)
	}
	fmt.Printf("| ebb | function | jobs | clients | queued (202) jobs/s | end-to-end jobs/s | all done in |\n|---|---|---|---|---|---|---|\n")
	fmt.Printf("| %s | %s (max_instances %d, %s) | %d | %d | %.0f | %.0f | %s |\n", where, spec.Name, spec.MaxInstances, payload, n, conc,
		float64(n)/queued.Seconds(), float64(n)/total.Seconds(), total.Round(time.Millisecond))
	return nil
}

// hopBench times sync invokes through the node holding the function's one
// instance (direct) and through another node (forwarded), interleaved so
// that both see the same machine, and prints their p50 and p90 and the p50
// a hop adds.
func hopBench(urls []string, fn string, n int) error {
	if len(urls) < 2 {
		return fmt.Errorf("-hop needs -nats and -nodes 2 or more")
	}
	call := func(url string) (time.Duration, string, error) {
		t0 := time.Now()
		resp, err := http.Post(url+"/v1/functions/"+fn+"/invoke", "application/json", strings.NewReader(payload))
		if err != nil {
			return 0, "", err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("invoke through %s: status %d", url, resp.StatusCode)
		}
		return d, resp.Header.Get("Ebb-Node"), err
	}
	// Which node serves: the one named by Ebb-Node through the first.
	_, holder, err := call(urls[0])
	if err != nil {
		return err
	}
	direct, other := "", ""
	for i, u := range urls {
		if fmt.Sprintf("n%d", i) == holder {
			direct = u
		} else if other == "" {
			other = u
		}
	}
	if direct == "" {
		return fmt.Errorf("the serving node %q is none of ours", holder)
	}
	for range 50 { // warm both paths, the hop's connections too
		if _, _, err := call(direct); err != nil {
			return err
		}
		if _, via, err := call(other); err != nil || via != holder {
			return fmt.Errorf("through another node: served by %q (%v), want %s", via, err, holder)
		}
	}
	var ds, fs []time.Duration
	for range n {
		d, _, err := call(direct)
		if err != nil {
			return err
		}
		f, _, err := call(other)
		if err != nil {
			return err
		}
		ds, fs = append(ds, d), append(fs, f)
	}
	q := func(xs []time.Duration, p float64) time.Duration {
		slices.Sort(xs)
		return xs[int(p*float64(len(xs)-1))]
	}
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Microseconds())) }
	fmt.Printf("| path | invokes | p50 | p90 |\n|---|---|---|---|\n")
	fmt.Printf("| through the node holding the instance | %d | %s | %s |\n", n, us(q(ds, .5)), us(q(ds, .9)))
	fmt.Printf("| through another node (one forwarded hop) | %d | %s | %s |\n", n, us(q(fs, .5)), us(q(fs, .9)))
	fmt.Printf("\nA forwarded hop adds %s at p50.\n", us(q(fs, .5)-q(ds, .5)))
	return nil
}

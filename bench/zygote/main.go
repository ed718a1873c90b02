// Command zygote measures python cold starts with and without the fork-server
// (zygote) on an in-process ebb: a function whose module scope imports numpy
// and sklearn and fits a small model, and whose handler predicts.
//
// It reports the first-ever cold start (zygote cold), cold starts with the
// zygote warm (scale from zero, p50/p99), the same on fresh interpreters
// (zygote: false), the PSS of 8 warm forked instances against one fresh
// instance, and a burst of 50 concurrent requests on a scaled-to-zero
// function with max_instances 16. It exits non-zero on any failed request.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/platform"
)

const app = `
import os, time
import numpy as np
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 8))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
model = LogisticRegression().fit(X, y)

def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    x = np.asarray(event.get("x", [0.5] * 8), dtype=float).reshape(1, -1)
    return {"class": int(model.predict(x)[0]), "pid": os.getpid()}
`

var (
	rounds = flag.Int("n", 20, "cold-start rounds per variant")
	python = flag.String("python", "/usr/bin/python3", "interpreter with numpy and sklearn")
	outDir = flag.String("out", "", "directory for the platform log (default: discard)")
)

func main() {
	flag.Parse()
	tmp, err := os.MkdirTemp("", "ebb-zygote-bench-")
	check(err)
	defer os.RemoveAll(tmp)
	logger := slog.New(slog.DiscardHandler)
	if *outDir != "" {
		f, err := os.Create(filepath.Join(*outDir, "ebb.log"))
		check(err)
		defer f.Close()
		logger = slog.New(slog.NewJSONHandler(f, nil))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	url := "http://" + ln.Addr().String()
	p, _, err := platform.New(context.Background(), platform.Config{DataDir: filepath.Join(tmp, "data"), BaseURL: url, Python: *python, Logger: logger})
	check(err)
	srv := &http.Server{Handler: p.Handler()}
	go srv.Serve(ln)
	defer func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.Close(ctx)
	}()
	b := &bench{p: p, url: url, tmp: tmp}

	fmt.Printf("mode: cgroup %s, python %s, %d rounds\n\n", p.CgroupMode(), *python, *rounds)
	// First-ever cold start: deploy and invoke at once, before the
	// zygote (built in the background from deploy) is ready.
	t0 := time.Now()
	b.deploy("skz", "")
	deployed := time.Since(t0)
	first := b.timed("skz", `{}`)
	fmt.Printf("| first-ever cold start (zygote cold, invoked right after deploy) | %.1f ms | (deploy took %.0f ms) |\n", ms(first), ms(deployed))

	zyg := b.coldRounds("skz", *rounds, true)
	b.deploy("skfresh", "zygote: false\n")
	fresh := b.coldRounds("skfresh", max(*rounds/2, 5), false)
	fmt.Printf("| cold start, zygote warm (scale from zero) | p50 %.2f ms | p99 %.2f ms | n=%d |\n", pct(zyg, 50), pct(zyg, 99), len(zyg))
	fmt.Printf("| cold start, fresh interpreter (zygote: false) | p50 %.1f ms | p99 %.1f ms | n=%d |\n", pct(fresh, 50), pct(fresh, 99), len(fresh))
	fmt.Printf("| speed-up at p50 | %.0f× |\n\n", pct(fresh, 50)/pct(zyg, 50))

	// Memory: one fresh instance against 8 forked ones plus their zygote.
	b.deploy("skone", "zygote: false\nidle_timeout: 10m\n")
	pids := b.concurrent("skone", 1, `{}`)
	_, onePSS := instance.ReadPSS(pids[0])
	b.deploy("skmem", "max_instances: 8\nidle_timeout: 10m\n")
	b.waitSpare("skmem")
	pids = b.concurrent("skmem", 8, `{"sleep":1.5}`)
	var sum uint64
	for _, pid := range pids {
		_, pss := instance.ReadPSS(pid)
		sum += pss
	}
	st, err := p.Status(context.Background(), "skmem")
	check(err)
	zpss := st.Zygote.PSS
	fmt.Printf("| PSS of 1 fresh instance | %.1f MiB |\n", mib(onePSS))
	fmt.Printf("| PSS of 8 forked instances + zygote | %.1f MiB + %.1f MiB = %.1f MiB (%.2f× one instance) |\n\n",
		mib(sum), mib(zpss), mib(sum+zpss), float64(sum+zpss)/float64(onePSS))

	// Burst on a scaled-to-zero function.
	b.deploy("skburst", "max_instances: 16\nidle_timeout: 100ms\n")
	b.waitZero("skburst", true)
	lat := make([]float64, 50)
	var wg sync.WaitGroup
	for i := range lat {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[i] = ms(b.timed("skburst", `{}`))
		}()
	}
	wg.Wait()
	fmt.Printf("| burst: 50 concurrent requests, scaled to zero, max_instances 16 | all 200 | p50 %.1f ms | p99 %.1f ms |\n", pct(lat, 50), pct(lat, 99))
}

type bench struct {
	p   *platform.Platform
	url string
	tmp string
}

func (b *bench) deploy(name, extra string) {
	dir := filepath.Join(b.tmp, "fn-"+name)
	check(os.MkdirAll(dir, 0o755))
	man := "name: " + name + "\nruntime: python\nhandler: app.handler\nmemory: 512\nidle_timeout: 100ms\nmax_instances: 4\npreload: [numpy, sklearn]\n"
	// Later keys win in the parser; extra overrides the defaults above.
	man = mergeManifest(man, extra)
	check(os.WriteFile(filepath.Join(dir, "ebb.yaml"), []byte(man), 0o644))
	check(os.WriteFile(filepath.Join(dir, "app.py"), []byte(app), 0o644))
	var buf bytes.Buffer
	_, err := bundle.Pack(dir, &buf)
	check(err)
	_, err = b.p.Deploy(context.Background(), name, &buf)
	check(err)
}

// mergeManifest replaces base's keys that extra sets.
func mergeManifest(base, extra string) string {
	set := map[string]string{}
	for _, l := range strings.Split(extra, "\n") {
		if k, _, ok := strings.Cut(l, ":"); ok {
			set[k] = l
		}
	}
	var out []string
	for _, l := range strings.Split(base, "\n") {
		k, _, _ := strings.Cut(l, ":")
		if v, ok := set[k]; ok {
			out = append(out, v)
			delete(set, k)
		} else if l != "" {
			out = append(out, l)
		}
	}
	for _, v := range set {
		out = append(out, v)
	}
	return strings.Join(out, "\n") + "\n"
}

func (b *bench) invoke(name, payload string) (map[string]any, http.Header) {
	resp, err := http.Post(b.url+"/v1/functions/"+name+"/invoke", "application/json", strings.NewReader(payload))
	check(err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		log.Fatalf("invoke %s: %d %s", name, resp.StatusCode, body)
	}
	var m map[string]any
	check(json.Unmarshal(body, &m))
	return m, resp.Header
}

func (b *bench) timed(name, payload string) time.Duration {
	t0 := time.Now()
	b.invoke(name, payload)
	return time.Since(t0)
}

// coldRounds measures n invocations, each after the function scaled to
// zero (and, with zygote, after its spare is ready again).
func (b *bench) coldRounds(name string, n int, zygote bool) []float64 {
	var out []float64
	for range n {
		b.waitZero(name, zygote)
		t0 := time.Now()
		_, h := b.invoke(name, `{}`)
		d := time.Since(t0)
		if h.Get("Ebb-Cold-Start") != "true" {
			log.Fatalf("%s: round was not a cold start", name)
		}
		out = append(out, ms(d))
	}
	return out
}

func (b *bench) waitZero(name string, spare bool) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st, err := b.p.Status(context.Background(), name)
		check(err)
		if len(st.Instances) == 0 && (!spare || (st.Zygote != nil && st.Zygote.Spare)) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Fatalf("%s did not scale to zero", name)
}

func (b *bench) waitSpare(name string) { b.waitZero(name, true) }

// concurrent sends n requests at once and returns the distinct pids.
func (b *bench) concurrent(name string, n int, payload string) []int {
	pids := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, _ := b.invoke(name, payload)
			pids[i] = int(m["pid"].(float64))
		}()
	}
	// Read memory while the instances still run: sample right before the
	// requests finish.
	wg.Wait()
	slices.Sort(pids)
	return slices.Compact(pids)
}

func pct(v []float64, p int) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(min(i, len(s))-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mib(b uint64) float64       { return float64(b) / (1 << 20) }

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

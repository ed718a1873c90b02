package store

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb"
)

func TestParseRoutes(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{"nats://10.0.0.1:6222", "nats://10.0.0.1:6222", ""},
		{" nats://a:1 , nats-route://b:65535/ ", "nats://a:1,nats://b:65535", ""},
		{"nats://[::1]:6222", "nats://[::1]:6222", ""},
		{"", "", "no route"},
		{"nats://a:1,,nats://b:2", "", "empty entry"},
		{"http://a:1", "", "want nats://HOST:PORT"},
		{"nats://u:p@a:1", "", "want nats://HOST:PORT"},
		{"nats://a:1/x", "", "want nats://HOST:PORT"},
		{"nats://a:1?x=1", "", "want nats://HOST:PORT"},
		{"nats://a", "", "port"},
		{"nats://a:0", "", "port"},
		{"nats://a:65536", "", "port"},
		{"nats://a:01", "", "port"},
		{"nats://:1", "", "no host"},
		{"a:1", "", "want nats://HOST:PORT"},
		{"nats://]:10", "", "neither an IP address nor a host name"},
		{"nats://a!b:1", "", "neither"},
	} {
		got, err := ParseRoutes(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseRoutes(%q) = %v, %v; want an error saying %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != c.want {
			t.Errorf("ParseRoutes(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
}

// FuzzParseRoutes: what ParseRoutes accepts, it returns in a form it
// accepts again unchanged, one route per comma-separated entry, each a
// nats:// URL whose port is 1 to 65535.
func FuzzParseRoutes(f *testing.F) {
	for _, s := range []string{"nats://a:1", "nats://a:1,nats-route://[::1]:6222/", " nats://x:65535 ", "nats://a", "x,y", "nats://%zz:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseRoutes(in)
		if err != nil {
			return
		}
		if len(got) != strings.Count(in, ",")+1 {
			t.Fatalf("ParseRoutes(%q) = %d routes, want one per entry", in, len(got))
		}
		again, err := ParseRoutes(strings.Join(got, ","))
		if err != nil || strings.Join(again, ",") != strings.Join(got, ",") {
			t.Fatalf("ParseRoutes(%q) = %q, which parses again as %q, %v", in, got, again, err)
		}
		for _, r := range got {
			host, port, err := net.SplitHostPort(strings.TrimPrefix(r, "nats://"))
			n, perr := strconv.Atoi(port)
			if !strings.HasPrefix(r, "nats://") || err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				t.Fatalf("ParseRoutes(%q) returned route %q", in, r)
			}
		}
	})
}

func TestClusterConfigValidate(t *testing.T) {
	routes := []string{"nats://127.0.0.1:6222", "nats://127.0.0.1:6223"}
	for _, c := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"cluster", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes, ClusterListen: "127.0.0.1:6221", Replicas: 3}, ""},
		{"cluster every interface", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes, ClusterListen: "0.0.0.0:6221"}, ""},
		{"routes with url", Config{URL: "nats://a:4222", ServerName: "a", ClusterRoutes: routes, ClusterListen: "127.0.0.1:1"}, "only to the embedded"},
		{"routes without name", Config{DataDir: "/d", ClusterRoutes: routes, ClusterListen: "127.0.0.1:1"}, "server name is required"},
		{"routes without listen", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes}, "cluster listen is required"},
		{"listen without host", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes, ClusterListen: ":6222"}, "names no host"},
		{"listen without routes", Config{DataDir: "/d", ClusterListen: "127.0.0.1:1"}, "cluster listen needs cluster routes"},
		{"name without routes", Config{DataDir: "/d", ClusterName: "x"}, "cluster name needs cluster routes"},
		{"bad route", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: []string{"http://x:1"}, ClusterListen: "127.0.0.1:1"}, "cluster routes"},
		{"bad cluster name", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes, ClusterListen: "127.0.0.1:1", ClusterName: "a b"}, "cluster name"},
		{"too many replicas", Config{DataDir: "/d", ServerName: "a", ClusterRoutes: routes, ClusterListen: "127.0.0.1:1", Replicas: 4}, "replicas 4 need at least 4 servers"},
		{"replicas without routes", Config{DataDir: "/d", Replicas: 3}, "without cluster routes"},
	} {
		cfg := c.cfg
		err := cfg.Validate()
		if c.err == "" {
			if err != nil {
				t.Errorf("%s: Validate() = %v", c.name, err)
			} else if cfg.ClusterName != DefaultClusterName {
				t.Errorf("%s: cluster name %q, want the default %q", c.name, cfg.ClusterName, DefaultClusterName)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: Validate() = %v, want an error saying %q", c.name, err, c.err)
		}
	}
}

// TestClusterOfEmbeddedServers: three stores whose embedded servers route
// to each other, opened at once, wait for their cluster to form and then
// share replicated state; one of them closed, the other two still read
// and write.
func TestClusterOfEmbeddedServers(t *testing.T) {
	if testing.Short() {
		t.Skip("three clustered JetStream servers; skipped with -short")
	}
	const n = 3
	// Free ports, held together so that they differ, then let go for the
	// servers to take.
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	logs := make([]*syncBuffer, n)
	cfgs := make([]Config, n)
	for i := range n {
		logs[i] = &syncBuffer{}
		cfgs[i] = Config{DataDir: t.TempDir(), ServerName: fmt.Sprintf("s%d", i), Replicas: 3, ClusterRoutes: routes,
			ClusterListen: "127.0.0.1:" + strconv.Itoa(ports[i]), FormTimeout: 90 * time.Second, Logger: slog.New(slog.NewJSONHandler(logs[i], nil))}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(ctx, cfgs[i])
		}()
	}
	wg.Wait()
	t.Logf("three stores opened at once in %s", time.Since(began).Round(time.Millisecond))
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("open store %d: %v\n%s", i, errs[i], logs[i])
		}
		t.Cleanup(func() { s.Close() })
		if !strings.Contains(logs[i].String(), "NATS cluster formed") {
			t.Errorf("store %d did not log that its cluster formed:\n%s", i, logs[i])
		}
	}

	// Written through one, read through the others; three copies.
	if err := stores[0].PutFunction(ctx, testFunction("shared", 1)); err != nil {
		t.Fatal(err)
	}
	// A replica's reads may lag its leader's writes for a moment.
	readable := func(s *Store, name string) bool {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			fn, err := s.GetFunction(ctx, name)
			if err == nil && fn.Version == 1 {
				return true
			}
			if time.Now().After(deadline) {
				t.Errorf("%s not readable through %s after 30s: %v", name, s.srv.Name(), err)
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, s := range stores[1:] {
		readable(s, "shared")
	}
	st, err := stores[2].js.Stream(ctx, "KV_"+FunctionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 3 {
		t.Errorf("registry bucket has %d replicas, want 3", r)
	}

	// Nodes that start at once make the same buckets at once; JetStream
	// answers one of two identical concurrent requests, so the shared
	// JetStream context retries: every node gets its bucket, none waits
	// for its whole deadline.
	for k := range 4 {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, s := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				_, errs[i] = s.JetStream().CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{Bucket: fmt.Sprintf("race_%d", k), Replicas: 3})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("bucket race_%d through store %d: %v", k, i, err)
			}
		}
	}

	// One server gone: the two others keep a quorum.
	if err := stores[0].Close(); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].PutFunction(ctx, testFunction("later", 1)); err != nil {
		t.Fatalf("write with one server of three gone: %v", err)
	}
	readable(stores[2], "later")
}

// syncBuffer is a log sink that Open's goroutines write while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWatchRoutes(t *testing.T) {
	ctx, cancelAll := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancelAll()
	s := openStore(t, "")
	for v := 1; v <= 3; v++ {
		if err := s.PutVersion(ctx, testFunction("f", v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateTraffic(ctx, "f", func(tr *ebb.Traffic) error { tr.SetRoute(ebb.Split{{Version: 1, Percent: 100}}); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVersion(ctx, "f", 3); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := s.WatchRoutes(wctx)
	if err != nil {
		t.Fatal(err)
	}
	describe := func(ev RouteEvent) string {
		if ev.Removed != 0 {
			return fmt.Sprintf("%s v%d removed", ev.Name, ev.Removed)
		}
		var parts []string
		for _, w := range ev.Traffic.Route {
			parts = append(parts, fmt.Sprintf("%d=%d", w.Version, w.Percent))
		}
		for _, a := range ev.Traffic.Aliases {
			parts = append(parts, a.Name+"->"+fmt.Sprint(a.Split.Single()))
		}
		if ev.Traffic.Shadow != nil {
			parts = append(parts, fmt.Sprintf("shadow %d", ev.Traffic.Shadow.Version))
		}
		return ev.Name + " " + strings.Join(parts, " ")
	}
	got := map[string]bool{}
	wait := func(want string) {
		t.Helper()
		for !got[want] {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("watch ended early")
				}
				got[describe(ev)] = true
			case <-ctx.Done():
				t.Fatalf("no event %q; got %v", want, got)
			}
		}
	}
	// What is there already: the routes, and the version removed before.
	wait("f 1=100")
	wait("f v3 removed")
	// Then each change: routes, an alias, a shadow run, a version removed.
	change := func(c func(*ebb.Traffic)) {
		t.Helper()
		if _, err := s.UpdateTraffic(ctx, "f", func(tr *ebb.Traffic) error { c(tr); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	change(func(tr *ebb.Traffic) { tr.SetRoute(ebb.Split{{Version: 1, Percent: 90}, {Version: 2, Percent: 10}}) })
	wait("f 1=90 2=10")
	change(func(tr *ebb.Traffic) {
		tr.Aliases = []ebb.Alias{{Name: "live", Split: ebb.Split{{Version: 2, Percent: 100}}}}
	})
	wait("f 1=90 2=10 live->2")
	change(func(tr *ebb.Traffic) { tr.Shadow = &ebb.Shadow{Version: 2, Percent: 50} })
	wait("f 1=90 2=10 live->2 shadow 2")
	if err := s.DeleteVersion(ctx, "f", 1); err != nil {
		t.Fatal(err)
	}
	wait("f v1 removed")
	// A new version is the registry's news, not this watch's.
	if err := s.PutVersion(ctx, testFunction("f", 4)); err != nil {
		t.Fatal(err)
	}
	change(func(tr *ebb.Traffic) {
		tr.Shadow = nil
		tr.Aliases[0].Split = ebb.Split{{Version: 2, Percent: 50}, {Version: 4, Percent: 50}}
	})
	wait("f 1=90 2=10 live->0")
	for k := range got {
		if k == "f " || strings.Contains(k, "v2 removed") || strings.Contains(k, "v4") {
			t.Errorf("unexpected event %q (got %v)", k, got)
		}
	}
	cancel()
	for ev := range events {
		_ = ev // what was in flight; the channel closes
	}
}

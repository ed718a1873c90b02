package main

// Issue 15: three ebb nodes whose embedded NATS servers form the JetStream
// cluster themselves (--cluster-routes), with no nats-server; and every
// node following, live, the routes, aliases, shadow runs and version
// removals made through another.

import (
	"context"
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/ebbtest"
)

// routedCluster is three nodes started with --cluster-routes.
type routedCluster struct {
	bin    string
	routes string
	ports  []int
	nodes  []*node
}

// args are the serve flags of node i.
func (rc *routedCluster) args(i int, data string) []string {
	return []string{"--listen", "127.0.0.1:0", "--data", data, "--warm-memory", "256MiB", "--node", string(rune('a' + i)),
		"--cluster-routes", rc.routes, "--cluster-listen", "127.0.0.1:" + strconv.Itoa(rc.ports[i]), "--nats-replicas", "3"}
}

// startRoutedCluster starts three nodes at once, each given the same
// routes (its own among them), and returns once all of them serve.
func startRoutedCluster(t *testing.T) *routedCluster {
	t.Helper()
	bin, err := buildEbb()
	if err != nil {
		t.Fatal(err)
	}
	rc := &routedCluster{bin: bin, ports: ebbtest.FreePorts(t, 3)}
	var routes []string
	for _, p := range rc.ports {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	rc.routes = strings.Join(routes, ",")
	var args [][]string
	var dirs []string
	for i := range 3 {
		dirs = append(dirs, t.TempDir())
		args = append(args, rc.args(i, dirs[i]))
	}
	for i, sv := range ebbtest.StartServes(t, bin, args...) {
		rc.nodes = append(rc.nodes, &node{server: &server{bin: bin, addr: sv.Addr, url: sv.URL, log: sv.Log, out: sv.Stdout},
			name: string(rune('a' + i)), data: dirs[i], pid: sv.Pid})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range rc.nodes {
				t.Logf("warnings and errors of %s:\n%s", n.name, tailOf(problems(n.log.String()), 8000))
			}
		}
	})
	return rc
}

// restart starts node i again on its data dir.
func (rc *routedCluster) restart(t *testing.T, i int) *node {
	t.Helper()
	old := rc.nodes[i]
	sv := ebbtest.StartServe(t, rc.bin, rc.args(i, old.data)...)
	rc.nodes[i] = &node{server: &server{bin: rc.bin, addr: sv.Addr, url: sv.URL, log: sv.Log, out: sv.Stdout}, name: old.name, data: old.data, pid: sv.Pid}
	return rc.nodes[i]
}

// clientURL is the loopback NATS port that a node's embedded server
// opened (it logs it), for the test to look at the streams.
var clientURL = regexp.MustCompile(`"msg":"store opened".*"listen":"(nats://[^"]+)"`)

// TestClusterEmbeddedRoutes is the acceptance run without nats-server:
// three `ebb serve --cluster-routes` started at once wait for their
// cluster rather than exit; deploy through A, invoke through B and C;
// every stream has three replicas; route, alias, shadow and version
// removal changes made through A show on B; A is killed (SIGKILL): B and C
// keep serving and keep the function; A restarts, rejoins, catches up on
// what changed meanwhile and serves.
func TestClusterEmbeddedRoutes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 3 ebb processes clustered; skipped with -short")
	}
	began := time.Now()
	rc := startRoutedCluster(t)
	a, b, c := rc.nodes[0], rc.nodes[1], rc.nodes[2]
	t.Logf("three nodes started at once served after %s", time.Since(began).Round(time.Millisecond))
	for _, n := range rc.nodes {
		if !strings.Contains(n.log.String(), `"msg":"NATS cluster formed"`) {
			t.Errorf("%s did not log that its NATS cluster formed", n.name)
		}
	}
	eventually(t, "every node in GET /v1/nodes", 20*time.Second, func() bool { return c.nodes(t) == "a,b,c" })

	// Deploy through A; B and C serve it.
	const fn = "ver"
	a.deployArgs(t, versionFn(fn, 1))
	for _, n := range []*node{b, c} {
		eventually(t, fn+" to answer through "+n.name, 30*time.Second, func() bool {
			code, body := n.invoke(fn, "{}")
			return code == 200 && answered(body) == 1
		})
	}

	// Every stream the nodes made is replicated three times.
	m := clientURL.FindStringSubmatch(b.log.String())
	if m == nil {
		t.Fatalf("b logged no NATS client URL:\n%s", b.log)
	}
	nc, err := natsgo.Connect(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	streams := 0
	for info := range js.ListStreams(context.Background()).Info() {
		streams++
		if info.Config.Replicas != 3 {
			t.Errorf("stream %s has %d replicas, want 3", info.Config.Name, info.Config.Replicas)
		}
	}
	if streams < 6 {
		t.Errorf("%d streams, want the registry's, keys', bundles', jobs', usage's and more", streams)
	}
	t.Logf("%d streams checked for 3 replicas", streams)

	// Routes, aliases, shadow runs and version removals made through A
	// show on B, live.
	followTraffic(t, a, b, fn)

	// A dies.
	if err := syscall.Kill(a.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for _, n := range []*node{b, c} {
		// The first answers may wait for JetStream to elect new leaders
		// where A led; then every answer is right.
		failed := 0
		eventually(t, fn+" to answer through "+n.name+" after the kill", 30*time.Second, func() bool {
			code, body := n.invoke(fn, "{}")
			if code != 200 {
				if failed++; failed == 1 {
					t.Logf("%s right after the kill: %d %s", n.name, code, body)
				}
			}
			return code == 200
		})
		t.Logf("%s answered %s after the kill (%d calls failed first)", n.name, time.Since(killed).Round(time.Millisecond), failed)
		for i := range 10 {
			if code, body := n.invoke(fn, "{}"); code != 200 || answered(body) != 2 {
				t.Errorf("call %d through %s after the kill = %d %s", i, n.name, code, body)
			}
		}
		fns, err := client.New(n.url, "").List(context.Background())
		if err != nil {
			t.Fatalf("list functions through %s: %v", n.name, err)
		}
		var names []string
		for _, f := range fns {
			names = append(names, f.Name)
		}
		sort.Strings(names)
		if strings.Join(names, ",") != fn {
			t.Errorf("functions through %s after the kill = %v, want %s", n.name, names, fn)
		}
	}
	t.Logf("b and c served %s after a was killed", time.Since(killed).Round(time.Millisecond))
	eventually(t, "a to leave GET /v1/nodes", 3*cluster.DefaultTTL, func() bool { return b.nodes(t) == "b,c" })

	// A change while A is down; A restarts, catches up and serves.
	// (A write may fail while JetStream elects new leaders where A led.)
	var out string
	eventually(t, "an alias set through b after the kill", 30*time.Second, func() bool {
		var err error
		out, err = b.cli(t, "", "alias", "set", fn, "down", "2")
		return err == nil
	})
	t.Logf("ebb alias set through b with a down: %s", strings.TrimSpace(out))
	a = rc.restart(t, 0)
	eventually(t, "a back in GET /v1/nodes", 30*time.Second, func() bool { return c.nodes(t) == "a,b,c" })
	eventually(t, fn+":down to answer through the restarted a", 30*time.Second, func() bool {
		code, body := a.invoke(fn+":down", "{}")
		return code == 200 && answered(body) == 2
	})
	if code, body := a.invoke(fn+":1", "{}"); code != 404 {
		t.Errorf("version 1, removed, through the restarted a = %d %s, want 404", code, body)
	}
	t.Logf("embedded-routes cluster test took %s", time.Since(began).Round(time.Millisecond))
}

// followTraffic changes fn's routes, aliases and shadow run through from,
// and removes a version, and checks that to answers according to each
// change once it shows (bounded polls; to never restarts).
func followTraffic(t *testing.T, from, to *node, fn string) {
	t.Helper()
	cli := func(args ...string) {
		t.Helper()
		if out, err := from.cli(t, "", args...); err != nil {
			t.Fatalf("ebb %v through %s: %v\n%s", args, from.name, err, out)
		}
	}
	// answers returns the versions that answered n calls to target.
	answers := func(target string, n int) map[int]int {
		got := map[int]int{}
		for range n {
			code, body := to.invoke(target, "{}")
			if code != 200 {
				got[-code]++
				continue
			}
			got[answered(body)]++
		}
		return got
	}
	follows := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		eventually(t, to.name+" to follow "+what, 30*time.Second, cond)
		t.Logf("%s followed %s in %s", to.name, what, time.Since(start).Round(time.Millisecond))
	}

	// Version 2 takes no traffic: a node that follows only deploys keeps
	// answering from version 1 whatever the routes say.
	from.deployArgs(t, versionFn(fn, 2), "--no-traffic")
	follows("the deploy of version 2", func() bool { code, body := to.invoke(fn+":2", "{}"); return code == 200 && answered(body) == 2 })
	if got := answers(fn, 5); got[1] != 5 {
		t.Fatalf("%s answered %v to unqualified calls before any route change, want version 1", to.name, got)
	}

	// A canary route, then all traffic to version 2.
	cli("route", fn, "1=50", "2=50")
	follows("a 50/50 route", func() bool { got := answers(fn, 10); return got[1] > 0 && got[2] > 0 && got[1]+got[2] == 10 })
	cli("route", fn, "2=100")
	follows("a route to version 2", func() bool { got := answers(fn, 5); return got[2] == 5 })

	// An alias made, then moved.
	cli("alias", "set", fn, "live", "1")
	follows("alias live made on version 1", func() bool { got := answers(fn+":live", 3); return got[1] == 3 })
	cli("alias", "set", fn, "live", "2")
	follows("alias live moved to version 2", func() bool { got := answers(fn+":live", 3); return got[2] == 3 })

	// A shadow run of version 1: each node mirrors the requests it
	// serves, and a request through one node may be served by another
	// (an idle instance there), so the copies are counted across both.
	cli("shadow", fn, "--version", "1", "--percent", "100")
	follows("a shadow run of version 1", func() bool {
		answers(fn, 2)
		rep, ok := shadowOf(t, to, fn)
		other, _ := shadowOf(t, from, fn)
		return ok && rep.Active && rep.Version == 1 && rep.Mirrored+other.Mirrored > 0
	})
	cli("shadow", "stop", fn)
	follows("the shadow run stopped", func() bool { rep, ok := shadowOf(t, to, fn); return ok && !rep.Active })

	// Version 1 removed: nothing routes there any more.
	cli("rm", fn, "--version", "1")
	follows("the removal of version 1", func() bool { code, _ := to.invoke(fn+":1", "{}"); return code == 404 })
	// The listing is read from the node's replica of the versions bucket,
	// which may lag the node's own following by a moment (a replica's read
	// is not the leader's): it must come to list version 2 only.
	var vs versionsReply
	follows("the removal of version 1 in its versions listing", func() bool {
		vs = to.versions(t, fn)
		return len(vs.Versions) == 1 && vs.Versions[0].Version == 2 && vs.Latest == 2
	})
}

// shadowOf is n's report of fn's shadow run; false when it has none.
func shadowOf(t *testing.T, n *node, fn string) (shadowReport, bool) {
	out, err := n.cli(t, "", "shadow", "report", fn, "--json")
	var rep shadowReport
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil {
		return rep, false
	}
	return rep, true
}

package main

// Issue 15: a max_instances: 1 function answers from one process whichever
// node of three is asked; the other nodes forward to the node holding its
// one instance slot.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ebb-run/ebb/internal/cluster"
)

// answer is one call of the identity function: who answered.
type answer struct {
	code     int
	body     string
	node     string // Ebb-Node
	identity string // pid and start token of the process
}

func (n *node) call(t *testing.T, method, path, body string) answer {
	req, err := http.NewRequest(method, n.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, body: string(b), node: resp.Header.Get("Ebb-Node")}
	var id struct {
		PID   int    `json:"pid"`
		Token string `json:"token"`
	}
	if resp.StatusCode == 200 && json.Unmarshal(b, &id) == nil && id.PID > 0 {
		a.identity = fmt.Sprintf("%d/%s", id.PID, id.Token)
	}
	return a
}

// TestClusterOneInstance: a max_instances: 1 function, invoked through each
// of three nodes (native invoke, /fn and Lambda Invoke, one at a time and
// all at once),
// answers from one and the same process; the nodes not holding its slot
// forward to the one that does. When that node is killed, the others
// refuse fast (503, Retry-After) until its heartbeat expires, then one of
// them starts the instance and all answer from it.
func TestClusterOneInstance(t *testing.T) {
	began := time.Now()
	nats, nodes := threeNodes(t)
	a := nodes[0]
	a.deploy(t, map[string]string{"ebb.yaml": "name: one\nruntime: python\nhandler: app.handler\nmax_instances: 1\n",
		"app.py": "import os, uuid\n\nTOKEN = uuid.uuid4().hex\n\ndef handler(event, context):\n    return {'pid': os.getpid(), 'token': TOKEN}\n"})
	for _, n := range nodes {
		eventually(t, "one to answer through "+n.name, 30*time.Second, func() bool {
			return n.call(t, "POST", "/v1/functions/one/invoke", "{}").code == 200
		})
	}

	// One at a time, through every node: native invoke, /fn and the Lambda
	// API's Invoke.
	var answers []answer
	for range 3 {
		for _, n := range nodes {
			answers = append(answers, n.call(t, "POST", "/v1/functions/one/invoke", "{}"), n.call(t, "GET", "/fn/one/x", ""),
				n.call(t, "POST", "/2015-03-31/functions/one/invocations", "{}"))
		}
	}
	// All at once: 3 nodes × 6 callers × 4 calls.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 4 {
					x := n.call(t, "POST", "/v1/functions/one/invoke", "{}")
					mu.Lock()
					answers = append(answers, x)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	identity, holder := sameProcess(t, answers)
	t.Logf("%d answers through a, b and c, all from process %s on node %s", len(answers), identity, holder)

	// The slot bucket says the same: one slot, held by that node.
	nc, err := natsgo.Connect(nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), cluster.SlotsBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), cluster.SlotKey("one", 1))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(e.Value()), fmt.Sprintf(`{"%s":1}`, holder); got != want {
		t.Errorf("slots of one = %s, want %s", got, want)
	}

	// A request that was forwarded once is never forwarded again: a node
	// without the slot refuses it rather than send it on.
	for _, n := range nodes {
		if n.name == holder {
			continue
		}
		req, _ := http.NewRequest("POST", n.url+"/v1/functions/one/invoke", strings.NewReader("{}"))
		req.Header.Set("Ebb-Forwarded-By", "z")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("Ebb-Node") != n.name {
			t.Errorf("a forwarded request to %s (not the holder) = %d %s (Ebb-Node %q), want a 503 with Retry-After from %s",
				n.name, resp.StatusCode, b, resp.Header.Get("Ebb-Node"), n.name)
		}
	}

	// Kill the holder: the others answer at once, 503 with Retry-After
	// while its heartbeat lives, then start the one instance afresh.
	var dead *node
	var alive []*node
	for _, n := range nodes {
		if n.name == holder {
			dead = n
		} else {
			alive = append(alive, n)
		}
	}
	if err := syscall.Kill(dead.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	x := alive[0].call(t, "POST", "/v1/functions/one/invoke", "{}")
	switch {
	case x.code == 503 && x.identity == "":
		t.Logf("right after the kill: 503 %s", x.body)
	case x.code == 200 && x.identity != identity:
		t.Logf("right after the kill: served by a new process (the heartbeat had expired)")
	default:
		t.Errorf("right after the kill: %d %s (node %s), want a 503 or a new process", x.code, x.body, x.node)
	}
	eventually(t, "one to answer again after the kill", 3*cluster.DefaultTTL, func() bool {
		return alive[1].call(t, "POST", "/v1/functions/one/invoke", "{}").code == 200
	})
	t.Logf("one answered again %s after its node was killed", time.Since(killed).Round(time.Millisecond))
	answers = nil
	for range 3 {
		for _, n := range alive {
			answers = append(answers, n.call(t, "POST", "/v1/functions/one/invoke", "{}"))
		}
	}
	again, _ := sameProcess(t, answers)
	if again == identity {
		t.Errorf("after the kill answered by the dead process %s", identity)
	}
	t.Logf("cluster slots test took %s", time.Since(began).Round(time.Millisecond))
}

// sameProcess checks every answer succeeded from one process on one node,
// and returns them.
func sameProcess(t *testing.T, answers []answer) (identity, node string) {
	t.Helper()
	seen := map[string]int{}
	for _, x := range answers {
		if x.code != 200 || x.identity == "" {
			t.Errorf("answer %d %q (node %q), want 200 with a process identity", x.code, x.body, x.node)
			continue
		}
		seen[x.identity+" on "+x.node]++
		identity, node = x.identity, x.node
	}
	if len(seen) != 1 {
		t.Errorf("answers came from %d processes: %v", len(seen), seen)
	}
	return identity, node
}

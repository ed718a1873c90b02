package ebbtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSServer is one nats-server process of a cluster started by
// NATSCluster.
type NATSServer struct {
	Name, URL string
	Pid       int
	Log       *Buffer
}

// NATSBinary builds nats-server from the nats-server module that ebb
// embeds (so the version is go.mod's), once per test process.
func NATSBinary() (string, error) {
	return BuildGo(Go{Pkg: "github.com/nats-io/nats-server/v2"})
}

// NATSCluster runs n nats-server processes (bin, see NATSBinary) as one
// JetStream cluster on loopback until the test ends, and returns once
// every one of them reports itself healthy (routes up, a JetStream meta
// leader elected). Each stores JetStream under its own temporary dir.
func NATSCluster(t testing.TB, bin string, n int) []*NATSServer {
	t.Helper()
	ports := FreePorts(t, 3*n)
	client, route, monitor := ports[:n], ports[n:2*n], ports[2*n:]
	var srvs []*NATSServer
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(route[j]))
			}
		}
		s := &NATSServer{Name: fmt.Sprintf("nats%d", i), URL: "nats://127.0.0.1:" + strconv.Itoa(client[i]), Log: &Buffer{}}
		cmd := exec.Command(bin, "-n", s.Name, "-a", "127.0.0.1", "-p", strconv.Itoa(client[i]), "-m", strconv.Itoa(monitor[i]),
			"-js", "-sd", t.TempDir(), "--cluster_name", "ebbtest", "--cluster", "nats://127.0.0.1:"+strconv.Itoa(route[i]),
			"--routes", strings.Join(routes, ","))
		cmd.Stdout, cmd.Stderr = s.Log, s.Log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		s.Pid = cmd.Process.Pid
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		})
		srvs = append(srvs, s)
	}
	deadline := time.Now().Add(60 * time.Second)
	for i, s := range srvs {
		base := "http://127.0.0.1:" + strconv.Itoa(monitor[i])
		for !healthy(base+"/healthz") || !metaComplete(base, n) {
			if time.Now().After(deadline) {
				t.Fatalf("%s not healthy with %d JetStream peers within 60s:\n%s", s.Name, n, s.Log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	placeable(t, NATSURLs(srvs), n, deadline)
	return srvs
}

// placeable waits until JetStream places a stream of n replicas (a
// healthy meta leader may still count a peer offline for a moment, and a
// client that creates its streams then is refused "no suitable peers"),
// by creating one and deleting it.
func placeable(t testing.TB, urls string, n int, deadline time.Time) {
	t.Helper()
	nc, err := nats.Connect(urls)
	if err != nil {
		t.Fatalf("connect to the nats cluster: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ebbtest_probe", Subjects: []string{"ebbtest.probe"},
			Replicas: n, Storage: jetstream.MemoryStorage})
		if err == nil {
			err = js.DeleteStream(ctx, "ebbtest_probe")
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nats cluster cannot place a stream of %d replicas within 60s: %v", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metaComplete says whether the server at base (its monitoring URL) sees
// a JetStream meta leader and, when it is that leader, all n peers current:
// before then, a stream of n replicas finds no place.
func metaComplete(base string, n int) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(base + "/jsz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var jsz struct {
		ServerName string `json:"server_name"`
		Meta       *struct {
			Leader   string `json:"leader"`
			Size     int    `json:"cluster_size"`
			Replicas []struct {
				Current bool `json:"current"`
				Offline bool `json:"offline"`
			} `json:"replicas"`
		} `json:"meta_cluster"`
	}
	if json.NewDecoder(resp.Body).Decode(&jsz) != nil || jsz.Meta == nil || jsz.Meta.Leader == "" || jsz.Meta.Size != n {
		return false
	}
	if jsz.Meta.Leader != jsz.ServerName {
		return true
	}
	if len(jsz.Meta.Replicas) != n-1 {
		return false
	}
	for _, r := range jsz.Meta.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

// NATSURLs is the servers' client URLs, comma-separated, as --nats takes.
func NATSURLs(srvs []*NATSServer) string {
	var us []string
	for _, s := range srvs {
		us = append(us, s.URL)
	}
	return strings.Join(us, ",")
}

// healthy asks a server's monitoring port whether it is ready: for a
// clustered JetStream server that means it found its meta leader.
func healthy(url string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// FreePorts finds n loopback ports free now, holding them all at once so
// that they differ. Another process may take one before it is used; on
// loopback in a test that is rare enough.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

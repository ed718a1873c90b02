package store

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsCluster starts n clustered JetStream servers in this process on
// loopback ports the kernel picks, and returns them once every one has
// routes to all the others.
func natsCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	// JetStream clustering needs each server to have a configured route.
	// The first one's is to an address where nothing listens (it keeps
	// trying, harmlessly); the others route to the first, and gossip
	// completes the mesh.
	seedRoutes := server.RoutesFromStr("nats-route://127.0.0.1:1")
	var srvs []*server.Server
	for i := 0; i < n; i++ {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "ebb-test", Host: "127.0.0.1", Port: -1},
			Routes:     seedRoutes,
			NoLog:      true,
			NoSigs:     true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats server %d: %v", i, err)
		}
		s.Start()
		t.Cleanup(s.Shutdown)
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d not ready", i)
		}
		srvs = append(srvs, s)
		if i == 0 {
			seedRoutes = []*url.URL{{Scheme: "nats-route", Host: s.ClusterAddr().String()}}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range srvs {
		for s.NumRoutes() < n-1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s has %d routes, want %d", s.Name(), s.NumRoutes(), n-1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return srvs
}

// TestReplicatedStore opens the store on a 3-node cluster with replicas 3:
// every bucket's stream has three replicas, and the state survives the loss
// of one node, the leader of the registry's stream.
func TestReplicatedStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster; skipped with -short")
	}
	srvs := natsCluster(t, 3)
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	ctx := testCtx(t)
	// Opening waits for the JetStream meta leader; a first try may come
	// before the cluster has elected one.
	var st *Store
	deadline := time.Now().Add(30 * time.Second)
	for {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		st, err = Open(octx, Config{URL: strings.Join(urls, ","), Replicas: 3})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open(replicas 3): %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { st.Close() })

	js := st.JetStream()
	leaders := map[string]string{}
	for _, stream := range []string{"KV_" + FunctionsBucket, "KV_" + VersionsBucket, "KV_" + KeysBucket, "OBJ_" + BundlesBucket} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 || info.Cluster.Leader == "" {
			t.Errorf("stream %s: replicas %d, cluster %+v; want 3 (a leader and 2 replicas)", stream, info.Config.Replicas, info.Cluster)
		}
		if info.Cluster != nil {
			leaders[stream] = info.Cluster.Leader
		}
	}
	if err := st.PutFunction(ctx, testFunction("kept", 1)); err != nil {
		t.Fatal(err)
	}
	v1, err := st.NextVersion(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}

	// Stop the registry stream's leader: the other two elect another and
	// keep everything.
	var stopped string
	for _, s := range srvs {
		if s.Name() == leaders["KV_"+FunctionsBucket] {
			stopped = s.Name()
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	if stopped == "" {
		t.Fatalf("no server is the leader %q", leaders["KV_"+FunctionsBucket])
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		f, err := st.GetFunction(rctx, "kept")
		cancel()
		if err == nil {
			if f.Spec.Name != "kept" || f.Version != 1 {
				t.Fatalf("after losing %s: got %+v", stopped, f)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after losing %s: GetFunction: %v", stopped, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Writes work with two of three.
	if err := st.PutFunction(ctx, testFunction("after", 1)); err != nil {
		t.Fatalf("PutFunction after losing %s: %v", stopped, err)
	}
	if v2, err := st.NextVersion(ctx, "kept"); err != nil || v2 != v1+1 {
		t.Errorf("NextVersion after losing %s = %d, %v; want %d", stopped, v2, err, v1+1)
	}
	s, err := js.Stream(ctx, "KV_"+FunctionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || info.Cluster.Leader == stopped {
		t.Errorf("registry stream after losing %s: cluster %+v, want a new leader", stopped, info.Cluster)
	}
}

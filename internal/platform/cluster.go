package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/cluster"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/store"
)

// This file is the platform's part in a cluster of ebb nodes sharing one
// NATS: its heartbeat (cluster.Cluster), and following deploys, removals,
// routes, aliases and shadow runs made through other nodes, so that any
// node serves any function as every other does.

// startCluster starts this node's heartbeat and, on a shared NATS, its part
// in the scheduler lease.
func (p *Platform) startCluster(ctx context.Context) error {
	var warm int64
	if p.instCfg.Warm != nil {
		warm = int64(p.instCfg.Warm.Snapshot().Limit)
	}
	c, err := cluster.Start(ctx, cluster.Config{
		JetStream: p.store.JetStream(),
		Self: cluster.Node{Name: p.cfg.Node, Addr: p.cfg.BaseURL, Version: p.cfg.Version,
			Capacity: cluster.Capacity{CPUs: p.cfg.NodeCPUs, MemoryMiB: p.cfg.NodeMemoryMiB, WarmBytes: warm}},
		Load:     p.load,
		Elect:    p.clustered(),
		Slots:    p.clustered(),
		Running:  p.slotsRunning,
		Replicas: p.cfg.NATSReplicas,
		Logger:   p.log,
	})
	if err != nil {
		return err
	}
	p.cluster = c
	if p.clustered() {
		p.hop = newHopClient()
		p.slots.Store(c)
		p.wg.Add(1)
		go p.floorLoop(cluster.DefaultInterval)
	}
	return nil
}

// clustered says whether this node shares its state with others: through
// an external NATS, or through its embedded server's cluster routes.
func (p *Platform) clustered() bool {
	return p.cfg.NATSURL != "" || len(p.cfg.ClusterRoutes) > 0
}

// floorLoop keeps this node's share of every min_instances floor, now and
// every interval (a heartbeat's), until the platform closes.
func (p *Platform) floorLoop(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(p.ctx, every)
		p.keepFloors(ctx)
		cancel()
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// keepFloors gives each version with a pool here and a min_instances its
// share of the floor across the cluster (cluster.FloorShares: N instances
// in all, not N per node), claiming the slots it needs, and has the pool
// act on a changed share at once.
func (p *Platform) keepFloors(ctx context.Context) {
	type floored struct {
		key string
		d   *deployment
	}
	var fs []floored
	p.mu.RLock()
	for name, f := range p.fns {
		for n, v := range f.versions {
			if d := v.dep.Load(); d != nil && d.fn.Spec.MinInstances > 0 {
				fs = append(fs, floored{cluster.SlotKey(name, n), d})
			}
		}
	}
	p.mu.RUnlock()
	for _, f := range fs {
		spec := &f.d.fn.Spec
		share, err := p.cluster.KeepFloor(ctx, f.key, spec.MinInstances, maxInstancesOf(spec))
		if err != nil && ctx.Err() == nil {
			p.log.Warn("cluster: keep the min_instances floor", "key", f.key, "err", err)
		}
		if int32(share) != f.d.floor.Swap(int32(share)) {
			f.d.pool.StopIdle(p.cfg.Now()) // a tick now: start or let go
		}
	}
}

// load is what this node holds now, for its heartbeat.
func (p *Platform) load() cluster.Load {
	p.mu.RLock()
	var ds []*deployment
	for _, f := range p.fns {
		for _, v := range f.versions {
			if d := v.dep.Load(); d != nil {
				ds = append(ds, d)
			}
		}
	}
	p.mu.RUnlock()
	var l cluster.Load
	for _, d := range ds {
		for _, in := range d.pool.Stats().Instances {
			l.Instances++
			l.InFlight += in.InFlight
			if in.Phase == dispatch.PhaseIdle {
				if l.Idle == nil {
					l.Idle = map[string]int{}
				}
				l.Idle[cluster.SlotKey(d.fn.Spec.Name, d.fn.Version)]++
			}
		}
	}
	return l
}

// Nodes implements api.Nodes: the nodes alive now.
func (p *Platform) Nodes(ctx context.Context) ([]cluster.Node, error) {
	return p.cluster.Nodes(ctx)
}

// adopt makes version fn, registered by another node, servable here: its
// bundle is fetched from the shared store (and cached by digest), and the
// function's routes are read again. A version this node has (its own
// deploy, seen again through the registry) is left alone.
func (p *Platform) adopt(ctx context.Context, fn *ebb.Function) error {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	name := fn.Spec.Name
	p.mu.RLock()
	f := p.fns[name]
	has := f != nil && f.versions[fn.Version] != nil
	p.mu.RUnlock()
	if has {
		return nil
	}
	if f == nil {
		// New here: every kept version and the routes, as at a restart.
		return p.restoreFunction(ctx, fn)
	}
	codeDir, err := p.ensureBundle(ctx, fn.Digest)
	if err != nil {
		return fmt.Errorf("fetch bundle of %s version %d: %w", name, fn.Version, err)
	}
	tr, err := p.store.GetTraffic(ctx, name)
	if err != nil {
		return err
	}
	p.internModel(fn, codeDir)
	p.install(fn, codeDir, nil, tr)
	return nil
}

// forget is a removal made through another node: the function stops
// taking requests here and its instances stop, as in Remove, without
// touching the registry (already done).
func (p *Platform) forget(name string) {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	p.mu.Lock()
	f := p.fns[name]
	delete(p.fns, name)
	p.mu.Unlock()
	if f == nil {
		return
	}
	p.forgetFunction(name, f)
}

// followRoutes takes up a change to name's routes, aliases or shadow run,
// or the removal of one of its versions, when it differs from what this
// node has: one made through another node. The node then reads the
// function's versions and routes from the store as they are now, so that
// an event that lags behind a newer change never undoes it. This node's
// own changes, seen again, differ in nothing and cost nothing.
func (p *Platform) followRoutes(ctx context.Context, ev store.RouteEvent) {
	p.mu.RLock()
	f := p.fns[ev.Name]
	changed := false
	if f != nil {
		if ev.Removed != 0 {
			changed = f.versions[ev.Removed] != nil
		} else {
			changed = !sameTraffic(f.traffic, ev.Traffic)
		}
	}
	p.mu.RUnlock()
	if !changed {
		return
	}
	if err := p.resync(ctx, ev.Name); err != nil && ctx.Err() == nil {
		p.log.Error("follow routes or versions changed through another node", "function", ev.Name, "err", err)
	}
}

// sameTraffic compares routes as they are stored.
func sameTraffic(a, b ebb.Traffic) bool {
	ja, err1 := json.Marshal(&a)
	jb, err2 := json.Marshal(&b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// resync brings name's kept versions and routes here in line with the
// store: versions removed through another node go (their pools drain),
// versions this node lacks are fetched, and the routes, aliases and shadow
// run are compiled afresh (a shadow run whose configuration is unchanged
// keeps going).
func (p *Platform) resync(ctx context.Context, name string) error {
	p.deployMu.Lock()
	defer p.deployMu.Unlock()
	p.mu.RLock()
	f := p.fns[name]
	p.mu.RUnlock()
	if f == nil {
		return nil // not here yet: the registry brings it, routes and all
	}
	vs, err := p.store.ListVersions(ctx, name)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		return nil // the function is being removed: the registry says so
	}
	tr, err := p.store.GetTraffic(ctx, name)
	if err != nil {
		return err
	}
	kept := make(map[int]bool, len(vs))
	var added []*version
	for _, vf := range vs {
		kept[vf.Version] = true
		p.mu.RLock()
		has := f.versions[vf.Version] != nil
		p.mu.RUnlock()
		if has {
			continue
		}
		codeDir, err := p.ensureBundle(ctx, vf.Digest)
		if err != nil {
			return fmt.Errorf("fetch bundle of %s version %d: %w", name, vf.Version, err)
		}
		p.internModel(vf, codeDir)
		added = append(added, p.newVersion(vf, codeDir))
	}
	var removed []*version
	p.mu.Lock()
	for _, v := range added {
		f.versions[v.fn.Version] = v
	}
	for n, v := range f.versions {
		if !kept[n] {
			delete(f.versions, n)
			removed = append(removed, v)
		}
	}
	if latest := f.newest(); latest != f.latest {
		f.latest = latest
		f.limiter = newLimiter(&latest.fn.Spec)
	}
	f.traffic = tr
	f.compile()
	p.mu.Unlock()
	p.retireVersions(name, removed)
	p.syncPools(f)
	return nil
}

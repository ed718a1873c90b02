package platform

import (
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/instance"
	"github.com/ebb-run/ebb/internal/keepalive"
)

// The live keep-alive (docs/keepalive.md): a version under keep_alive:
// adaptive (or the server's --keep-alive adaptive) has a live.Keeper that
// observes each arrival (acquireShadow), and one scheduler per platform
// applies the policy's decisions: the pool's idle stop follows the
// keeper's deadline (unloading right after a call when a pre-warm is
// predicted, else at the learned keep-alive), and shortly before a
// predicted arrival the version is pre-warmed along its cheapest path. A
// fixed keep-alive is the pool's plain IdleTimeout, with no keeper and
// nothing on the invocation path.

// keepAliveOf is the keep-alive a version runs under: its manifest's, else
// the server's default; adaptive returns the policy, a fixed one its
// duration as the pool's idle timeout.
func (p *Platform) keepAliveOf(s *ebb.Spec) (policy keepalive.Policy, idle time.Duration) {
	ka := s.KeepAlive
	if ka == "" {
		ka = p.cfg.KeepAlive
	}
	if ka == ebb.KeepAliveAdaptive {
		return p.cfg.Adaptive, s.IdleTimeout
	}
	if _, d, err := ebb.ParseKeepAlive(ka); err == nil && d > 0 {
		return nil, d
	}
	return nil, s.IdleTimeout
}

// keepTarget is what a version's keeper acts on.
type keepTarget struct{ d *deployment }

// Unload stops the instances past the keeper's idle deadline and, once
// none is left, lets go of the zygote or spare built ahead. It is not done
// while an instance is busy, starting or stopping (a call in flight is
// unloaded right after it ends); idle instances the pool keeps (its floor,
// a later deadline) are the pool's business.
func (t keepTarget) Unload(now time.Time) bool {
	t.d.pool.StopIdle(now)
	st := t.d.pool.Stats()
	if !allIdle(st) {
		return false
	}
	if len(st.Instances) > 0 {
		return true
	}
	t.d.prewarmHold.Release()
	return t.d.starter.Release()
}

// allIdle says whether every instance of a pool is idle (none busy,
// starting or stopping).
func allIdle(st dispatch.Stats) bool {
	for _, in := range st.Instances {
		if in.Phase != dispatch.PhaseIdle {
			return false
		}
	}
	return true
}

// Prewarm builds a python function's zygote and forked spare; other
// runtimes start an instance, which for onnx claims its spare process and
// loads the model. Either way through the warm budget, at the priority of
// the predicted arrival: the zygote is a holder of its own, an instance is
// held by the version's prewarmHold until it is unloaded.
func (t keepTarget) Prewarm(now time.Time) bool {
	if t.d.starter.PrewarmsSpare() {
		t.d.starter.Prewarm()
		return true
	}
	h := t.d.prewarmHold
	held := h.Held() // by an earlier pre-warm's instance, still up
	if !h.Admit() {
		return false
	}
	if !t.d.pool.Prewarm(now) {
		if !held {
			h.Release()
		}
		return false
	}
	return true
}

// warmPriority ranks holders of the warm budget by predicted demand: the
// keeper's next predicted arrival where it has one, recent use otherwise.
// On one scale: recent use L ranks as an arrival expected at 2·now − L
// (as long from now as the last use was ago), so a predicted arrival at A
// ranks as 2·now − A.
func (p *Platform) warmPriority(h instance.HolderInfo, now time.Time) float64 {
	if k := p.keep.Lookup(h.Function, h.Version); k != nil {
		if at, ok := k.NextArrival(now); ok {
			return 2*float64(now.UnixNano()) - float64(at.UnixNano())
		}
	}
	return instance.RecentUse(h, now)
}

// keepAliveStatus is a version's keep-alive for its status.
func (p *Platform) keepAliveStatus(d *deployment, ps dispatch.Stats) *api.KeepAliveStatus {
	now := p.cfg.Now()
	if d.keeper != nil {
		s := d.keeper.Status(now)
		return &api.KeepAliveStatus{Policy: ebb.KeepAliveAdaptive + " (" + s.Policy + ")", Why: s.Why, Warm: s.Warm, NextPrewarm: s.PrewarmAt, NextUnload: s.UnloadAt,
			Prewarms: s.Prewarms, PrewarmedStarts: s.PrewarmedStarts, UnusedPrewarms: s.UnusedPrewarms, IdleWarmSeconds: s.IdleWarm.Seconds()}
	}
	_, idle := p.keepAliveOf(&d.fn.Spec)
	st := &api.KeepAliveStatus{Policy: "fixed:" + shortDuration(idle), Why: "fixed"}
	for _, in := range ps.Instances {
		if in.Phase != dispatch.PhaseIdle {
			continue
		}
		st.Warm = true
		if at := in.LastUsed.Add(idle); st.NextUnload.IsZero() || at.Before(st.NextUnload) {
			st.NextUnload = at
		}
	}
	return st
}

func shortDuration(d time.Duration) string {
	c, _, err := ebb.ParseKeepAlive("fixed:" + d.String())
	if err != nil {
		return d.String()
	}
	return c[len("fixed:"):]
}

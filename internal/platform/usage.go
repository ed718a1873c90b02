package platform

import (
	"context"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/dispatch"
	"github.com/ebb-run/ebb/internal/usage"
)

// openUsage starts the usage meter and the sampler of idle warm capacity.
func (p *Platform) openUsage() error {
	m, err := usage.New(usage.Config{Sink: p.store, Logger: p.log, Now: p.cfg.Now})
	if err != nil {
		return err
	}
	m.Start()
	p.usage = m
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(p.cfg.IdleSampleEvery)
		defer t.Stop()
		last := p.cfg.Now()
		for {
			select {
			case <-p.ctx.Done():
				return
			case <-t.C:
				now := p.cfg.Now()
				p.sampleIdle(now, now.Sub(last))
				last = now
			}
		}
	}()
	return nil
}

// sampleIdle adds what each version's warm capacity held while it served
// nothing over the last dt: an idle instance its configured memory (what it
// reserves, as Lambda bills provisioned concurrency), a zygote or an onnx
// spare its proportional set size (they have no limit of their own; a
// zygote's share of the pages its forked children use is counted in it).
func (p *Platform) sampleIdle(now time.Time, dt time.Duration) {
	if dt <= 0 {
		return
	}
	p.mu.RLock()
	var deps []*deployment
	for _, f := range p.fns {
		for _, v := range f.versions {
			if d := v.dep.Load(); d != nil {
				deps = append(deps, d)
			}
		}
	}
	for d := range p.draining {
		deps = append(deps, d)
	}
	p.mu.RUnlock()
	sec := dt.Seconds()
	for _, d := range deps {
		var mib float64
		for _, in := range d.pool.Stats().Instances {
			if in.Phase == dispatch.PhaseIdle {
				mib += float64(d.fn.Spec.MemoryMiB)
			}
		}
		if z := d.starter.Zygote(); z != nil {
			mib += float64(z.PSS) / (1 << 20)
		}
		if sp := d.starter.Spare(); sp != nil {
			mib += float64(sp.PSS) / (1 << 20)
		}
		p.usage.Idle(d.fn.Spec.Name, d.fn.Version, mib*sec, now)
	}
}

// Usage answers a usage query: one report per function.
func (p *Platform) Usage(ctx context.Context, q usage.Query) ([]usage.Report, error) {
	if q.Function != "" {
		p.mu.RLock()
		_, ok := p.fns[q.Function]
		p.mu.RUnlock()
		if !ok {
			// A removed function's usage stays readable through the
			// all-functions report; a name never deployed is unknown.
			if _, err := p.store.GetFunction(ctx, q.Function); err != nil {
				return nil, ebb.ErrNotFound
			}
		}
	}
	return p.usage.Report(ctx, q)
}

// Invocations calls each with the stored usage records of fn from since
// on, until each returns false.
func (p *Platform) Invocations(ctx context.Context, fn string, since time.Time, each func(*usage.Record) bool) error {
	if err := p.usage.Flush(ctx, false); err != nil {
		return err
	}
	return p.usage.Records(ctx, fn, since, time.Time{}, each)
}

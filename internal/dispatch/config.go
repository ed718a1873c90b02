// Package dispatch admits invocations of one function version onto instance
// slots. A Pool starts instances on demand and holds a request through the cold
// start, queues (bounded) when the function is at its maximum size, stops
// instances that sit idle, keeps a floor of warm ones, replaces crashed ones and
// drains on redeploy.
//
// It knows nothing of processes or HTTP: instances come from a Starter that main
// wires in, and a Pool is generic over the instance type that Starter returns,
// so that a Lease's Instance is already what its caller invokes or proxies to. Scaling decisions are a pure function (Plan) of the
// pool's state and the time, so that they can be tested without waiting.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ebb-run/ebb"
)

// Instance is one running copy of a function version, as a pool sees it:
// the least a Pool's instance type must do. The type itself is the caller's
// (Pool[I]), with whatever else it does (invoke, proxy).
//
// The pool calls Stop exactly once for every Instance a Starter gave it,
// crashed ones included, so that an implementation can free what it holds in
// one place; Stop after the instance has exited must therefore be harmless.
type Instance interface {
	// Stop stops the instance gracefully and returns when it is gone; when ctx
	// ends it must kill the instance rather than keep waiting.
	Stop(ctx context.Context) error
	// Done is closed when the instance exits for any reason, crash included.
	Done() <-chan struct{}
}

// Starter starts one instance and blocks until it is ready to take requests
// (or fails; an *ebb.InitError says the function's own init failed). It must
// return when ctx ends, having cleaned up whatever it began. id is unique
// within the process and made of [a-z0-9-].
type Starter[I Instance] interface {
	Start(ctx context.Context, id string) (I, error)
}

// Observer receives metrics hooks. The pool calls it without holding its
// locks (an implementation may read the pool's Stats), from the goroutine where
// the event happened, so it should return quickly.
type Observer interface {
	InstanceStarted(fn string, id string, took time.Duration)
	InstanceStartFailed(fn string, err error)
	// InstanceStopped reports an instance gone, with one of the Stop* reasons.
	InstanceStopped(fn string, id string, reason string)
	// QueueDepth reports the number of requests waiting for a slot (held for
	// a start or queued). Reports from concurrent events may arrive out of
	// order; the pool's loop reports the current value every tick.
	QueueDepth(fn string, n int)
}

// Reasons an instance stopped, as Observer.InstanceStopped reports them.
const (
	StopIdle      = "idle"      // idle past IdleTimeout, above MinInstances
	StopCrashed   = "crashed"   // exited without the pool asking
	StopDiscarded = "discarded" // a caller discarded its lease as bad
	StopDrained   = "drained"   // the pool was drained for a redeploy
	StopClosed    = "closed"    // the pool was closed for shutdown
)

// Defaults of Config, applied by Validate to zero fields.
const (
	DefaultStartTimeout = 30 * time.Second
	DefaultStopTimeout  = 5 * time.Second
	maxTickInterval     = time.Second
	minTickInterval     = 10 * time.Millisecond
)

// Config configures the Pool of one function version.
type Config struct {
	// Function and Version name the pool in instance ids, logs and metrics.
	Function string
	Version  int

	// Concurrency is the number of requests one instance serves at once;
	// 0 means ebb.DefaultConcurrency.
	Concurrency int
	// MinInstances are kept running even when idle (provisioned concurrency).
	MinInstances int
	// MaxInstances bounds running plus starting instances; 0 means
	// max(ebb.DefaultMaxInstances, MinInstances).
	MaxInstances int
	// Limit, when set, bounds running plus starting instances further, to
	// what it says now: on a node of a cluster, the instance slots this
	// node holds (min_instances included), so that requests arriving at
	// once start no more instances here than the node may run. It is
	// called with the pool's lock held, so it must be quick and must not
	// call into the pool. Raising it does not start anything by itself:
	// the next Acquire (or tick) does.
	Limit func() int
	// Floor, when set, replaces MinInstances with what it says now (within
	// the limit): on a node of a cluster, this node's share of the
	// function's min_instances. Called with the pool's lock held, like
	// Limit; a change is acted on at the next tick (StopIdle runs one).
	Floor func() int
	// MaxQueue bounds the requests allowed to queue when the pool is at
	// MaxInstances; 0 means none may queue. Requests held for an instance
	// that is starting for them do not count.
	MaxQueue int
	// QueueTimeout is how long a queued request waits before it fails with
	// ebb.ErrOverloaded; 0 means ebb.DefaultQueueTimeout.
	QueueTimeout time.Duration
	// IdleTimeout is how long an instance may sit idle before it is stopped
	// (down to MinInstances); 0 means ebb.DefaultIdleTimeout.
	IdleTimeout time.Duration
	// IdleDeadline, when set, replaces IdleTimeout in the idle stop: it
	// says when an instance last used at lastUsed is to be stopped (a
	// keep-alive policy's decision, which may stop it right after its call
	// or keep it until a learned time). It must be quick and safe to call
	// with the pool's lock held.
	IdleDeadline func(lastUsed time.Time) time.Time
	// StartTimeout bounds one Starter.Start; 0 means DefaultStartTimeout.
	StartTimeout time.Duration
	// StopTimeout is the grace given to Instance.Stop before its ctx ends;
	// 0 means DefaultStopTimeout.
	StopTimeout time.Duration
	// TickInterval is how often the pool's loop applies Plan; 0 means
	// min(IdleTimeout/4, 1s), at least 10ms.
	TickInterval time.Duration
	// Now is the clock for idle accounting, start back-off and the durations
	// a Lease reports; nil means time.Now. Tests inject their own.
	Now func() time.Time

	Observer Observer     // nil means no metrics hooks
	Logger   *slog.Logger // nil means discard
}

// idleDeadline is when an instance last used at lastUsed is stopped as idle.
func (c *Config) idleDeadline(lastUsed time.Time) time.Time {
	if c.IdleDeadline != nil {
		return c.IdleDeadline(lastUsed)
	}
	return lastUsed.Add(c.IdleTimeout)
}

// setDefaults fills the zero fields of c. It is separate from Validate so that
// Plan can default a copy without caring whether the rest is valid.
func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = ebb.DefaultConcurrency
	}
	if c.MaxInstances == 0 {
		c.MaxInstances = max(ebb.DefaultMaxInstances, c.MinInstances)
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = ebb.DefaultQueueTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = ebb.DefaultIdleTimeout
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.TickInterval == 0 {
		c.TickInterval = max(min(c.IdleTimeout/4, maxTickInterval), minTickInterval)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate fills the zero fields of c with their defaults and reports the
// first field that is out of range.
func (c *Config) Validate() error {
	c.setDefaults()
	switch {
	case c.Function == "":
		return errors.New("dispatch config: function is required")
	case c.Version < 0:
		return fmt.Errorf("dispatch config: version %d is negative", c.Version)
	case c.Concurrency < 1:
		return fmt.Errorf("dispatch config: concurrency %d must be at least 1", c.Concurrency)
	case c.MinInstances < 0:
		return fmt.Errorf("dispatch config: min instances %d is negative", c.MinInstances)
	case c.MaxInstances < 1:
		return fmt.Errorf("dispatch config: max instances %d must be at least 1", c.MaxInstances)
	case c.MinInstances > c.MaxInstances:
		return fmt.Errorf("dispatch config: min instances %d is more than max instances %d", c.MinInstances, c.MaxInstances)
	case c.MaxQueue < 0:
		return fmt.Errorf("dispatch config: max queue %d is negative", c.MaxQueue)
	case c.QueueTimeout < 0:
		return fmt.Errorf("dispatch config: queue timeout %s is negative", c.QueueTimeout)
	case c.IdleTimeout < 0:
		return fmt.Errorf("dispatch config: idle timeout %s is negative", c.IdleTimeout)
	case c.StartTimeout < 0:
		return fmt.Errorf("dispatch config: start timeout %s is negative", c.StartTimeout)
	case c.StopTimeout < 0:
		return fmt.Errorf("dispatch config: stop timeout %s is negative", c.StopTimeout)
	case c.TickInterval < 0:
		return fmt.Errorf("dispatch config: tick interval %s is negative", c.TickInterval)
	}
	return nil
}

// nopObserver stands in for a nil Config.Observer so that call sites need no
// nil checks.
type nopObserver struct{}

func (nopObserver) InstanceStarted(string, string, time.Duration) {}
func (nopObserver) InstanceStartFailed(string, error)             {}
func (nopObserver) InstanceStopped(string, string, string)        {}
func (nopObserver) QueueDepth(string, int)                        {}

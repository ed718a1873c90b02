package instance

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/runtimeapi"
)

// execLauncher starts an instance as a fresh process that polls the Lambda
// Runtime API, which ebb serves to it alone: an exec function's handler,
// or a python interpreter running ebb's shim (a python function without a
// zygote, or one whose zygote cannot be used).
type execLauncher struct {
	s *Starter
	// command resolves the argv; python's writes the shim at first use.
	command func() ([]string, error)
	// warm primes each instance with the manifest's warmup event (a
	// fresh python interpreter).
	warm bool
	// spares, in a sandbox, keeps one instance set up ahead of need
	// (boxSpares); nil without one.
	spares *keeper[boxedSpare]
}

func (l *execLauncher) prewarm() {
	if l.spares != nil {
		l.spares.refill()
	}
}

func (l *execLauncher) close() {
	if l.spares != nil {
		l.spares.close()
	}
}

func (l *execLauncher) start(ctx context.Context, id string) (*Instance, error) {
	inst, err := claimOrBegin(ctx, l.spares, id, func() (*Instance, error) {
		inst, _, err := l.begin(ctx, id, false)
		return inst, err
	})
	if err != nil {
		return nil, err
	}
	if err := inst.waitRuntimeAPI(ctx); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	return inst, nil
}

// begin starts an instance's process without waiting for it; with block
// (a spare sandbox) it waits, set up, until release.
func (l *execLauncher) begin(ctx context.Context, id string, block bool) (*Instance, func() error, error) {
	s := l.s
	argv, err := l.command()
	if err != nil {
		return nil, nil, err
	}
	inst := s.newInstance(id)
	if err := attachRuntimeAPI(ctx, s, inst); err != nil {
		return nil, nil, err
	}
	extra := []string{"AWS_LAMBDA_RUNTIME_API=" + inst.rt.Addr(), "AWS_LAMBDA_LOG_STREAM_NAME=" + id}
	if l.warm {
		extra = append(extra, s.warmupEnv(inst)...)
	}
	release, err := spawnReleasable(ctx, s, inst, argv, s.instanceEnv(extra...), nil, block)
	if err != nil {
		return nil, nil, err
	}
	return inst, release, nil
}

// attachRuntimeAPI gives inst a Runtime API server of its own, failed and
// closed when its process is gone.
func attachRuntimeAPI(ctx context.Context, s *Starter, inst *Instance) error {
	cfg := runtimeapi.Config{
		FunctionName:    s.fn.Spec.Name,
		FunctionVersion: strconv.Itoa(s.fn.Version),
		Logger:          s.cfg.Logger,
	}
	if s.box != nil {
		// In the version's network namespace: the only place the
		// instance can reach, and nothing else can reach it there.
		ln, err := s.box.listen(ctx)
		if err != nil {
			return fmt.Errorf("start runtime api: %w", err)
		}
		cfg.Listener = ln
	}
	rt, err := runtimeapi.New(cfg)
	if err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return fmt.Errorf("start runtime api: %w", err)
	}
	inst.rt = rt
	inst.onExit(func(err error) {
		rt.Fail(err)
		rt.Close()
	})
	return nil
}

// waitRuntimeAPI waits until the instance's runtime first polls for an event.
func (i *Instance) waitRuntimeAPI(ctx context.Context) error {
	err := i.rt.WaitReady(ctx)
	if err == nil {
		return nil
	}
	var ie *ebb.InitError
	if errors.As(err, &ie) {
		return ie
	}
	if ctx.Err() != nil {
		return &ebb.InitError{Type: "Runtime.InitTimeout", Message: "the instance did not become ready in time"}
	}
	return i.exitedEarly()
}

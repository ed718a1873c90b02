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
}

func (l *execLauncher) prewarm() {}
func (l *execLauncher) close()   {}

func (l *execLauncher) start(ctx context.Context, id string) (*Instance, error) {
	s := l.s
	argv, err := l.command()
	if err != nil {
		return nil, err
	}
	inst := s.newInstance(id)
	if err := attachRuntimeAPI(s, inst); err != nil {
		return nil, err
	}
	env := s.instanceEnv("AWS_LAMBDA_RUNTIME_API="+inst.rt.Addr(), "AWS_LAMBDA_LOG_STREAM_NAME="+id)
	if err := s.spawn(ctx, inst, argv, env, nil); err != nil {
		return nil, err
	}
	if err := inst.waitRuntimeAPI(ctx); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	return inst, nil
}

// attachRuntimeAPI gives inst a Runtime API server of its own, failed and
// closed when its process is gone.
func attachRuntimeAPI(s *Starter, inst *Instance) error {
	rt, err := runtimeapi.New(runtimeapi.Config{
		FunctionName:    s.fn.Spec.Name,
		FunctionVersion: strconv.Itoa(s.fn.Version),
		Logger:          s.cfg.Logger,
	})
	if err != nil {
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

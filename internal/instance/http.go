package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/upstream"
	"golang.org/x/sys/unix"
)

// httpLauncher starts an http function's instance: a fresh process that
// serves HTTP on the loopback port in $PORT, ready once the port accepts
// connections.
type httpLauncher struct {
	s    *Starter
	argv []string
	// spares, in a sandbox, keeps one instance set up ahead of need
	// (boxSpares); nil without one.
	spares *keeper[boxedSpare]
}

func (l *httpLauncher) prewarm() {
	if l.spares != nil {
		l.spares.refill()
	}
}

func (l *httpLauncher) close() {
	if l.spares != nil {
		l.spares.close()
	}
}

func (l *httpLauncher) start(ctx context.Context, id string) (*Instance, error) {
	inst, err := claimOrBegin(l.spares, id, func() (*Instance, error) {
		inst, _, err := spawnHTTP(ctx, l.s, id, l.argv, nil, false)
		return inst, err
	})
	if err != nil {
		return nil, err
	}
	if err := inst.waitListening(ctx, nil); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	return inst, nil
}

// spawnHTTP starts argv as an instance serving HTTP on a port of its own;
// prepare, when set, adds the runtime's hooks and files before the process
// starts. It does not wait for the port. With block (a spare sandbox) the
// process waits, set up, until release.
func spawnHTTP(ctx context.Context, s *Starter, id string, argv []string, prepare func(*Instance) ([]*os.File, error), block bool) (*Instance, func() error, error) {
	inst := s.newInstance(id)
	var port int
	var dial func(context.Context) (net.Conn, error)
	freePort := releasePort
	var err error
	if s.box != nil {
		port, dial, err = s.box.reservePort(ctx)
		freePort = s.box.releasePort
	} else {
		port, err = reservePort()
	}
	if err != nil {
		return nil, nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	inst.up = upstream.New(upstream.Config{Addr: addr, Dial: dial, Logger: s.cfg.Logger})
	inst.onExit(func(error) {
		inst.up.Close()
		freePort(port)
	})
	var extra []*os.File
	if prepare != nil {
		if extra, err = prepare(inst); err != nil {
			inst.runExitHooks(err)
			return nil, nil, err
		}
	}
	env := s.instanceEnv("PORT="+strconv.Itoa(port), "HOST=127.0.0.1", "EBB_SPAWN_NS="+strconv.FormatInt(time.Now().UnixNano(), 10))
	release, err := spawnReleasable(ctx, s, inst, argv, env, extra, block)
	if err != nil {
		return nil, nil, err
	}
	return inst, release, nil
}

// waitListening waits until the instance accepts connections on its port,
// or says so on announced (nil unless the runtime ships with ebb). Polls
// about every 100 µs for the first 100 ms (a small server is up in a few
// milliseconds, and a refused connect costs microseconds), then backs off.
//
// The fast polls sleep in the kernel (nanosleep, on this goroutine's
// thread), not on a runtime timer: time.After(50µs) and (250µs) both
// fired after 1.08 ms here (p50 of 200), against 117 µs for a 50 µs
// nanosleep (the kernel's timer slack included), so a started server
// waited up to a millisecond for its first request.
func (i *Instance) waitListening(ctx context.Context, announced <-chan struct{}) error {
	const fastDelay = 50 * time.Microsecond // ~100 µs with the timer slack
	fastUntil := time.Now().Add(100 * time.Millisecond)
	delay := time.Duration(0)
	for {
		c, err := i.up.Dial(ctx)
		if err == nil {
			i.up.Keep(c) // the first request's connection
			return nil
		}
		if delay == 0 {
			select {
			case <-announced:
				return nil
			case <-i.done:
				return i.exitedEarly()
			case <-ctx.Done():
				return initTimeout()
			default:
			}
			ts := unix.NsecToTimespec(int64(fastDelay))
			unix.Nanosleep(&ts, nil)
			if time.Now().After(fastUntil) {
				delay = time.Millisecond
			}
			continue
		}
		select {
		case <-announced:
			return nil
		case <-i.done:
			return i.exitedEarly()
		case <-ctx.Done():
			return initTimeout()
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Millisecond)
	}
}

func initTimeout() error {
	return &ebb.InitError{Type: "Runtime.InitTimeout", Message: "the instance did not listen on $PORT in time"}
}

// ports are the loopback ports handed to live http instances. The kernel
// only says a port is free when asked; between that and the child's bind,
// another start could be handed the same port, and its readiness probe would
// then reach the other instance's server and send it the wrong function's
// requests.
var ports = struct {
	mu   sync.Mutex // guards used
	used map[int]bool
}{used: map[int]bool{}}

func reservePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ports.mu.Lock()
		if !ports.used[port] {
			ports.used[port] = true
			ports.mu.Unlock()
			return port, nil
		}
		ports.mu.Unlock()
	}
	return 0, errors.New("find free port: every port offered is taken by an instance")
}

func releasePort(port int) {
	if port == 0 {
		return
	}
	ports.mu.Lock()
	delete(ports.used, port)
	ports.mu.Unlock()
}

package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
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
	// listens is what this version's instances took to listen, for the
	// readiness probe's pace.
	listens listenTimes
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
	inst, err := claimOrBegin(ctx, l.spares, id, func() (*Instance, error) {
		inst, _, err := spawnHTTP(ctx, l.s, id, l.argv, nil, false)
		return inst, err
	})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := inst.waitListening(ctx, nil, l.listens.expect()); err != nil {
		inst.abort()
		return nil, err
	}
	inst.ready = time.Now()
	l.listens.add(inst.ready.Sub(t0))
	return inst, nil
}

// listenTimes keeps the last few times a version's instances took from
// their release (or spawn) to listening. Its median is what the next start
// is expected to take: a version's server starts the same way each time.
type listenTimes struct {
	mu   sync.Mutex // guards last, n
	last [8]time.Duration
	n    int // samples added, the newest at last[(n-1)%8]
}

func (t *listenTimes) add(d time.Duration) {
	t.mu.Lock()
	t.last[t.n%len(t.last)] = d
	t.n++
	t.mu.Unlock()
}

// expect is the median of the kept times; 0 before the first.
func (t *listenTimes) expect() time.Duration {
	t.mu.Lock()
	k := min(t.n, len(t.last))
	var s [len(t.last)]time.Duration
	copy(s[:], t.last[:k])
	t.mu.Unlock()
	if k == 0 {
		return 0
	}
	slices.Sort(s[:k])
	return s[k/2]
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
// or says so on announced (nil unless the runtime ships with ebb). It looks
// at the pace of probePause, given what the start is expected to take
// (expect; 0 when unknown).
func (i *Instance) waitListening(ctx context.Context, announced <-chan struct{}, expect time.Duration) error {
	t0 := time.Now()
	for {
		next := t0.Add(probePause(time.Since(t0), expect, announced != nil))
		if ok, err := i.pauseUntil(ctx, next, announced); ok || err != nil {
			return err
		}
		c, err := i.up.Dial(ctx)
		if err == nil {
			i.up.Keep(c) // the first request's connection
			return nil
		}
	}
}

// probePause is how long into a start the probe looks next, elapsed into
// it. Each look costs CPU that the starting server would use: on a 2-vCPU
// VM, a look every 100 µs (a refused connect ~12 µs of CPU, the wake-up
// ~40 µs) made a 12 ms Go server start take 2 ms longer than looks every
// millisecond did. So the looks gather where the server is expected to be
// up: one pause to 70% of expect, then every expect/40 (at least 100 µs);
// past expect, or not knowing it, every sixteenth of the time elapsed
// (100 µs to 10 ms), which keeps both the looks (about 16 per doubling of
// the time) and the time lost after the server is up (about 3%) small.
// A runtime that announces itself (announced) is looked at only as a
// fallback, every quarter of the time elapsed (1 to 10 ms).
func probePause(elapsed, expect time.Duration, announced bool) time.Duration {
	const (
		minPause = 100 * time.Microsecond
		maxPause = 10 * time.Millisecond
	)
	if announced {
		return elapsed + min(max(elapsed/4, time.Millisecond), maxPause)
	}
	if expect > 0 && elapsed < expect {
		if at := expect * 7 / 10; elapsed < at {
			return at
		}
		return elapsed + max(expect/40, minPause)
	}
	return elapsed + min(max(elapsed/16, minPause), maxPause)
}

// pauseUntil waits until at, or until the instance announces itself
// (ok), exits or ctx ends (err). Without an announcement to wait for, the
// last 2 ms are a nanosleep on this goroutine's thread, not a runtime
// timer: time.After(50µs) and (250µs) both fired after 1.08 ms here (p50 of
// 200), a 50 µs nanosleep after 117 µs, and a look a millisecond late is a
// millisecond on the request.
func (i *Instance) pauseUntil(ctx context.Context, at time.Time, announced <-chan struct{}) (ok bool, err error) {
	const precise = 2 * time.Millisecond
	for {
		var timer <-chan time.Time
		switch left := time.Until(at); {
		case left <= 0:
			timer = closedTime
		case announced != nil:
			timer = time.After(left) // the announcement wakes the select at once
		case left > precise:
			// A runtime timer fires up to ~1 ms late: it wakes this early
			// enough to sleep the rest precisely.
			timer = time.After(left - precise)
		default:
			select {
			case <-i.done:
				return false, i.exitedEarly()
			case <-ctx.Done():
				return false, initTimeout()
			default:
			}
			ts := unix.NsecToTimespec(int64(left))
			unix.Nanosleep(&ts, nil)
			return false, nil
		}
		select {
		case <-announced:
			return true, nil
		case <-i.done:
			return false, i.exitedEarly()
		case <-ctx.Done():
			return false, initTimeout()
		case <-timer:
			if timer == closedTime || announced != nil {
				return false, nil
			}
		}
	}
}

// closedTime is a channel that is always ready: pauseUntil's "look now".
var closedTime = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

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

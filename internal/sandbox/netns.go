package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace ebb made for one instance: loopback only, or
// with outbound access through pasta. Sockets keep the namespace they were
// made in, so ebb's listener for the instance and its dials to it are made
// inside (Listen, Dial) and then used from any goroutine.
type Netns struct {
	f *os.File // the namespace; holds it alive

	// pasta is nil without outbound. pastaDone is closed by the goroutine
	// that waits for pasta (owned by the Netns: Close stops pasta and waits
	// for it).
	pasta     *exec.Cmd
	pastaDone chan struct{}
	pastaErr  error         // set before pastaDone closes
	pastaLog  *bytes.Buffer // pasta's first output; read after pastaDone

	// fmu guards f against Close while a thread is entering it: a Listen
	// or Dial may race with the last user's Close (a dying instance's
	// readiness dial). fclosed is set by Close.
	fmu     sync.RWMutex
	fclosed bool

	// smu guards socks and sclosed. socks are IPv4 TCP sockets made inside
	// ahead of dials (in batches, one entry into the namespace each), so
	// that a dial is a connect from any thread: a readiness probe polls
	// every 100 µs while an instance starts, and entering the namespace
	// per try cost it about 50 µs of CPU (thread lock, two setns) that the
	// starting instance wanted. Close closes those left.
	smu     sync.Mutex
	socks   []int
	sclosed bool

	closeOnce sync.Once
	closeErr  error
}

// ErrNetnsClosed is returned by a Listen or Dial on a closed namespace.
var ErrNetnsClosed = errors.New("network namespace is closed")

// run runs fn on a thread inside n, unless n is closed.
func (n *Netns) run(fn func() error) error {
	n.fmu.RLock()
	defer n.fmu.RUnlock()
	if n.fclosed {
		return ErrNetnsClosed
	}
	return runInNetns(n.f, fn)
}

// pastaReadyTimeout bounds the wait for pasta to configure the namespace
// (~10 ms measured) when ctx has no earlier deadline.
const pastaReadyTimeout = 5 * time.Second

// NewNetns makes a network namespace with lo up. With outbound, pasta is
// attached to it: it gets an interface with the host's addresses and a
// default route, with NO mapping of the host's loopback (--no-map-gw) and
// no port forwarding either way.
func (s *Sandbox) NewNetns(ctx context.Context, outbound bool) (*Netns, error) {
	if !s.enabled {
		return nil, fmt.Errorf("make network namespace: sandbox disabled: %s", s.reason)
	}
	return s.newNetns(ctx, outbound)
}

func (s *Sandbox) newNetns(ctx context.Context, outbound bool) (*Netns, error) {
	if outbound && s.cfg.Pasta == "" {
		return nil, errors.New("make network namespace: outbound networking needs pasta (install passt)")
	}
	f, err := unshareNetns()
	if err != nil {
		return nil, err
	}
	n := &Netns{f: f}
	if outbound {
		if err := n.startPasta(ctx, s.cfg.Pasta, s.cfg.PastaArgs); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// unshareNetns makes a namespace on a locked thread and returns an fd for
// it, leaving the thread back in the host namespace.
func unshareNetns() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	// A goroutine of its own, so that a thread that cannot return to the
	// host namespace is not the caller's: it stays locked and the runtime
	// ends it with the goroutine.
	go func() {
		runtime.LockOSThread()
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("make network namespace: open host namespace: %w", err)}
			return
		}
		defer host.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("make network namespace: unshare: %w", err)}
			return
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if err == nil {
			err = loUp()
		}
		if rerr := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// Thread stays locked: it dies with this goroutine.
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("make network namespace: return to host namespace: %w", rerr)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("make network namespace: %w", err)}
			return
		}
		ch <- result{f: f}
	}()
	r := <-ch
	return r.f, r.err
}

// loUp sets IFF_UP on lo in the calling thread's namespace (no ip binary).
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: set flags: %w", err)
	}
	return nil
}

// EnterNetns moves the calling thread into the namespace f and returns the
// function that moves it back. The caller must hold runtime.LockOSThread
// for the whole span, and, if restore fails, must not unlock: the thread is
// then in the wrong namespace and has to die with its goroutine.
func EnterNetns(f *os.File) (restore func() error, err error) {
	host, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("enter network namespace: open host namespace: %w", err)
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		host.Close()
		return nil, fmt.Errorf("enter network namespace: %w", err)
	}
	return func() error {
		defer host.Close()
		if err := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("leave network namespace: %w", err)
		}
		return nil
	}, nil
}

// runInNetns runs fn on a thread inside ns. fn must not start goroutines
// that make sockets: they would run on other threads, in the host
// namespace.
func runInNetns(ns *os.File, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restore, err := EnterNetns(ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		ferr := fn()
		if err := restore(); err != nil {
			ch <- err // thread stays locked and dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// File is the namespace, for a spawner thread to setns(CLONE_NEWNET) into
// before it forks (see EnterNetns). It stays owned by the Netns.
func (n *Netns) File() *os.File { return n.f }

// Listen makes a listener inside the namespace. addr must be a numeric
// ip:port (no name resolution: its goroutines would run outside).
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	if err := numeric(addr); err != nil {
		return nil, fmt.Errorf("listen in network namespace: %w", err)
	}
	var l net.Listener
	err := n.run(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		if l != nil {
			l.Close()
		}
		return nil, fmt.Errorf("listen in network namespace: %w", err)
	}
	return l, nil
}

// Dial connects from inside the namespace. addr must be a numeric ip:port:
// with one address Go dials serially on the calling (locked) thread, where
// a name could fan out to goroutines on threads outside the namespace.
// A TCP dial of an IPv4 address uses a socket made inside ahead of time.
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := numeric(addr); err != nil {
		return nil, fmt.Errorf("dial in network namespace: %w", err)
	}
	if ap := netip.MustParseAddrPort(addr); (network == "tcp" || network == "tcp4") && ap.Addr().Unmap().Is4() {
		c, err := n.dialPrepared(ctx, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		if err != nil {
			return nil, fmt.Errorf("dial in network namespace: %w", err)
		}
		return c, nil
	}
	var c net.Conn
	d := net.Dialer{FallbackDelay: -1}
	err := n.run(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("dial in network namespace: %w", err)
	}
	return c, nil
}

// socketBatch is how many sockets one entry into the namespace makes.
const socketBatch = 8

// takeSocket is a non-blocking IPv4 TCP socket made inside n, the caller's
// to connect or close.
func (n *Netns) takeSocket() (int, error) {
	n.smu.Lock()
	if k := len(n.socks); k > 0 {
		fd := n.socks[k-1]
		n.socks = n.socks[:k-1]
		n.smu.Unlock()
		return fd, nil
	}
	n.smu.Unlock()
	made := make([]int, 0, socketBatch)
	err := n.run(func() error {
		for range socketBatch {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return os.NewSyscallError("socket", err)
			}
			made = append(made, fd)
		}
		return nil
	})
	if len(made) == 0 {
		return -1, err
	}
	n.smu.Lock()
	defer n.smu.Unlock()
	if n.sclosed {
		for _, fd := range made {
			unix.Close(fd)
		}
		return -1, ErrNetnsClosed
	}
	n.socks = append(n.socks, made[1:]...)
	return made[0], nil
}

// dialPrepared connects a socket made inside n to ap (IPv4) and hands it
// to the runtime's poller.
func (n *Netns) dialPrepared(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	fd, err := n.takeSocket()
	if err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
	if err == unix.EINPROGRESS {
		err = waitConnected(ctx, fd)
	}
	if err != nil {
		unix.Close(fd)
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, opErr(err)
		}
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	f := os.NewFile(uintptr(fd), "tcp")
	c, err := net.FileConn(f) // a dup, in the poller
	f.Close()
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

// waitConnected waits for a non-blocking connect on fd to finish (on
// loopback it has, by the time connect returns) or ctx to end.
func waitConnected(ctx context.Context, fd int) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait := 100 * time.Millisecond
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)+time.Millisecond)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		k, err := unix.Poll(pfd, max(int(wait/time.Millisecond), 1))
		if err == unix.EINTR || (err == nil && k == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
}

func numeric(addr string) error {
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return fmt.Errorf("address %q is not a numeric ip:port", addr)
	}
	return nil
}

// Close stops pasta (if any) and closes the namespace fd; the namespace
// ends when no process or socket is left in it. Idempotent.
func (n *Netns) Close() error {
	n.closeOnce.Do(func() {
		if n.pasta != nil {
			n.pasta.Process.Kill()
			<-n.pastaDone
		}
		n.fmu.Lock() // waits for a Listen or Dial entering it
		n.fclosed = true
		n.closeErr = n.f.Close()
		n.fmu.Unlock()
		n.smu.Lock()
		n.sclosed = true
		for _, fd := range n.socks {
			unix.Close(fd)
		}
		n.socks = nil
		n.smu.Unlock()
	})
	return n.closeErr
}

// PastaDone is closed when pasta has exited (outbound networking is gone:
// the instance should be replaced); nil without outbound.
func (n *Netns) PastaDone() <-chan struct{} { return n.pastaDone }

// PastaPID is pasta's pid, or 0 without outbound (for tests and metrics).
func (n *Netns) PastaPID() int {
	if n.pasta == nil {
		return 0
	}
	return n.pasta.Process.Pid
}

// startPasta attaches pasta to n and waits until it has configured the
// namespace (a default route appears).
func (n *Netns) startPasta(ctx context.Context, pasta string, extra []string) error {
	args := []string{
		// Pasta opens the path from its own fd table: fd 3 is ExtraFiles[0].
		"--netns", "/proc/self/fd/3",
		// The namespace belongs to the host's user namespace; do not look
		// for another one.
		"--netns-only",
		// Stay our child: ebb owns, stops and reaps it, and Pdeathsig holds.
		"--foreground", "--quiet",
		// Stay root (capabilities dropped by pasta itself, except
		// CAP_SYS_ADMIN and CAP_NET_BIND_SERVICE): this passt (2023-03)
		// switches to nobody before joining the namespace, which then fails.
		"--runas", "0",
		// Give the namespace its addresses and routes itself; there is no
		// DHCP client inside.
		"--config-net", "--no-dhcp", "--no-dhcpv6", "--no-ra",
		// No port forwarding in either direction.
		"-t", "none", "-u", "none", "-T", "none", "-U", "none",
		// The gateway address must not lead to the host's loopback (ebb's
		// API, other instances' listeners).
		"--no-map-gw",
	}
	args = append(args, extra...)
	cmd := exec.Command(pasta, args...)
	cmd.ExtraFiles = []*os.File{n.f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	n.pastaLog = &bytes.Buffer{}
	lw := &limitedWriter{w: n.pastaLog, n: 4096}
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pasta: %w", err)
	}
	n.pasta = cmd
	n.pastaDone = make(chan struct{})
	go func() {
		n.pastaErr = cmd.Wait()
		close(n.pastaDone)
	}()

	ctx, cancel := context.WithTimeout(ctx, pastaReadyTimeout)
	defer cancel()
	err := runInNetns(n.f, func() error {
		for {
			if hasDefaultRoute() {
				return nil
			}
			select {
			case <-n.pastaDone:
				return fmt.Errorf("pasta exited: %v: %s", n.pastaErr, pastaOutput(n.pastaLog))
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Microsecond):
			}
		}
	})
	if err != nil {
		return fmt.Errorf("wait for pasta: %w", err)
	}
	return nil
}

// pastaOutput drops the syslog noise this passt prints when run without one.
func pastaOutput(b *bytes.Buffer) string {
	var keep []string
	sc := bufio.NewScanner(bytes.NewReader(b.Bytes()))
	for sc.Scan() {
		if line := sc.Text(); !strings.HasPrefix(line, "Failed to send") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "; ")
}

// hasDefaultRoute reports whether the calling thread's namespace has an IPv4
// or IPv6 default route, the last thing pasta's --config-net sets up.
func hasDefaultRoute() bool {
	if b, err := os.ReadFile("/proc/thread-self/net/route"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 7 && f[1] == "00000000" && f[7] == "00000000" {
				return true
			}
		}
	}
	if b, err := os.ReadFile("/proc/thread-self/net/ipv6_route"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 9 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && f[9] != "lo" {
				return true
			}
		}
	}
	return false
}

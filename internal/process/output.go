package process

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// output is one output stream's reader as SyncOutput sees it. A function
// writes its log lines before it answers, but ebb reads its pipes on
// goroutines of their own, which on a busy machine may lag behind the
// answer: whoever needs an invocation's lines in full (Lambda's LogType
// Tail) asks for a sync instead of guessing how long they take.
//
// A sync is done by the reader itself, at a quiet point (every whole line
// it has read delivered) where the pipe holds nothing: then every byte
// written before the sync was asked for has been delivered. A reader
// blocked in a read is woken for it by a read deadline in the past.
type output struct {
	f *os.File // the pipe's read end; set before the reader starts

	mu sync.Mutex // guards the fields below
	// asked counts syncs asked for; done is the last of them the reader
	// has completed.
	asked, done uint64
	ended_      bool          // the reader has returned: nothing more comes
	wake        chan struct{} // closed when done or ended_ changes; nil when nobody waits
}

// before implements readHooks: at a quiet point, it completes the syncs
// asked for so far once the pipe is empty.
func (o *output) before() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done == o.asked {
		return
	}
	if n, err := unread(o.f); err != nil || n > 0 {
		return // read on; a closed pipe ends the reader, which ends the wait
	}
	o.done = o.asked
	o.wakeLocked()
}

// interrupted implements readHooks: a deadline error is a sync's wake-up
// call. The deadline is cleared and reading goes on (to before, next).
func (o *output) interrupted(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return o.f.SetReadDeadline(timeZero) == nil
}

// ended notes that the reader returned.
func (o *output) ended() {
	o.mu.Lock()
	o.ended_ = true
	o.wakeLocked()
	o.mu.Unlock()
}

func (o *output) wakeLocked() {
	if o.wake != nil {
		close(o.wake)
		o.wake = nil
	}
}

// sync asks the reader for a sync and waits for it (or for the reader's
// end, or ctx's).
func (o *output) sync(ctx context.Context) error {
	o.mu.Lock()
	o.asked++
	mine := o.asked
	o.mu.Unlock()
	// Wake a reader blocked in a read; one busy delivering lines meets the
	// deadline at its next read.
	if err := o.f.SetReadDeadline(timePast); err != nil {
		return nil // the pipe is closed: the reader is done
	}
	for {
		o.mu.Lock()
		if o.done >= mine || o.ended_ {
			o.mu.Unlock()
			return nil
		}
		if o.wake == nil {
			o.wake = make(chan struct{})
		}
		wake := o.wake
		o.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// SyncOutput waits until every line the process wrote to its output pipes
// before the call has been handed to the Spec's (or AdoptSpec's) line
// functions, or until ctx ends.
func (p *Process) SyncOutput(ctx context.Context) error {
	for i := range p.out {
		if p.out[i].f == nil {
			continue
		}
		if err := p.out[i].sync(ctx); err != nil {
			return err
		}
	}
	return nil
}

// unread is how many bytes wait in the pipe f reads from (FIONREAD, which
// Linux names TIOCINQ).
func unread(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

var (
	timeZero time.Time
	// timePast is a deadline already passed: a read with it returns at once.
	timePast = time.Unix(1, 0)
)

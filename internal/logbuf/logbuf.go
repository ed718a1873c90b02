// Package logbuf keeps the recent output of each function in memory, so that
// `ebb logs NAME` can show it (and follow it) without a log pipeline. Lines are
// tagged with the request that produced them when that is known. Each
// function's lines are bounded in count and in bytes, and over-long lines are
// cut, so that a function printing without end costs ebb a fixed amount of
// memory.
package logbuf

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Line is one line of a function's stdout or stderr.
type Line struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Version   int       `json:"version"`
	Instance  string    `json:"instance"`
	RequestID string    `json:"request_id,omitempty"`
	Stream    string    `json:"stream"`
	Text      string    `json:"text"`
}

// Config bounds a Buffer. Every bound is per function.
type Config struct {
	// MaxLines is how many lines are kept; default 10,000.
	MaxLines int
	// MaxBytes bounds the memory the kept lines take (their text plus a
	// fixed cost per line); default 8 MiB. The oldest lines go first.
	MaxBytes int64
	// MaxLineBytes is the longest line kept whole; a longer one is cut and
	// marked " …[truncated N bytes]". Default 16 KiB.
	MaxLineBytes int
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.MaxLines <= 0 {
		c.MaxLines = 10000
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 8 << 20
	}
	if c.MaxLineBytes <= 0 {
		c.MaxLineBytes = 16 << 10
	}
	if int64(c.MaxLineBytes)+lineCost > c.MaxBytes {
		return fmt.Errorf("logbuf config: MaxBytes %d cannot hold one line of MaxLineBytes %d", c.MaxBytes, c.MaxLineBytes)
	}
	return nil
}

// lineCost is what a Line takes beside its strings' bytes.
const lineCost = int64(unsafe.Sizeof(Line{}))

// Buffer holds the last lines of every function, within its Config.
type Buffer struct {
	cfg Config
	now func() time.Time

	mu   sync.Mutex // guards fns and wake
	fns  map[string]*ring
	wake chan struct{} // closed and replaced when any line is added
}

// ring is one function's lines: lines[head:] are kept, oldest first, the
// one at lines[head] has seq first.
type ring struct {
	lines []Line
	head  int
	first uint64 // seq of lines[head]
	bytes int64  // cost of lines[head:]
}

// New returns a Buffer bounded by cfg.
func New(cfg Config) (*Buffer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Buffer{cfg: cfg, now: time.Now, fns: map[string]*ring{}, wake: make(chan struct{})}, nil
}

func cost(l *Line) int64 {
	return lineCost + int64(len(l.Text)+len(l.Instance)+len(l.RequestID)+len(l.Stream))
}

// truncate cuts text to at most max bytes (on a UTF-8 boundary) and marks
// the cut; only the kept part is copied.
func truncate(text []byte, max int) string {
	if len(text) <= max {
		return string(text)
	}
	n := max
	for n > 0 && !utf8.RuneStart(text[n]) {
		n--
	}
	return string(text[:n]) + " …[truncated " + strconv.Itoa(len(text)-n) + " bytes]"
}

// Line records a line; it implements instance.LogSink.
func (b *Buffer) Line(fn string, version int, instanceID, requestID, stream string, text []byte) {
	l := Line{Time: b.now(), Version: version, Instance: instanceID, RequestID: requestID, Stream: stream,
		Text: truncate(text, b.cfg.MaxLineBytes)}
	c := cost(&l)
	b.mu.Lock()
	r := b.fns[fn]
	if r == nil {
		r = &ring{lines: make([]Line, 0, 64)}
		b.fns[fn] = r
	}
	l.Seq = r.first + uint64(len(r.lines)-r.head)
	r.lines = append(r.lines, l)
	r.bytes += c
	for len(r.lines)-r.head > 1 && (len(r.lines)-r.head > b.cfg.MaxLines || r.bytes > b.cfg.MaxBytes) {
		r.bytes -= cost(&r.lines[r.head])
		r.lines[r.head] = Line{} // let its text go
		r.head++
		r.first++
	}
	if r.head > 64 && r.head > len(r.lines)/2 {
		// Slide the kept lines down, so that the array does not grow
		// without end and dropped lines' slots are reused.
		n := copy(r.lines, r.lines[r.head:])
		clear(r.lines[n:])
		r.lines, r.head = r.lines[:n], 0
	}
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// Since returns fn's lines with Seq >= since (at most limit, oldest first) and
// the seq to ask for next.
func (b *Buffer) Since(fn string, since uint64, limit int) ([]Line, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sinceLocked(fn, since, limit)
}

func (b *Buffer) sinceLocked(fn string, since uint64, limit int) ([]Line, uint64) {
	r := b.fns[fn]
	if r == nil {
		return nil, since
	}
	next := r.first + uint64(len(r.lines)-r.head)
	since = max(since, r.first)
	var out []Line
	for s := since; s < next && (limit <= 0 || len(out) < limit); s++ {
		out = append(out, r.lines[r.head+int(s-r.first)])
	}
	return out, since + uint64(len(out))
}

// Next is the seq fn's next line will have: Since(fn, Next(fn), …) later
// returns only lines written after the call.
func (b *Buffer) Next(fn string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.fns[fn]
	if r == nil {
		return 0
	}
	return r.first + uint64(len(r.lines)-r.head)
}

// Wait returns fn's lines from since, waiting until there is at least one or
// ctx ends.
func (b *Buffer) Wait(ctx context.Context, fn string, since uint64, limit int) ([]Line, uint64) {
	for {
		b.mu.Lock()
		lines, next := b.sinceLocked(fn, since, limit)
		wake := b.wake
		b.mu.Unlock()
		if len(lines) > 0 {
			return lines, next
		}
		select {
		case <-ctx.Done():
			return nil, next
		case <-wake:
		}
	}
}

// Forget drops fn's lines (the function was removed).
func (b *Buffer) Forget(fn string) {
	b.mu.Lock()
	delete(b.fns, fn)
	b.mu.Unlock()
}

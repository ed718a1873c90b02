// Package logbuf keeps the recent output of each function in memory, so that
// `ebb logs NAME` can show it (and follow it) without a log pipeline. Lines are
// tagged with the request that produced them when that is known.
package logbuf

import (
	"context"
	"sync"
	"time"
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

// Buffer holds the last Size lines of every function.
type Buffer struct {
	size int
	now  func() time.Time

	mu   sync.Mutex // guards fns
	fns  map[string]*ring
	wake chan struct{} // closed and replaced when any line is added
}

type ring struct {
	lines []Line
	next  uint64 // seq of the next line
}

// New returns a Buffer that keeps size lines per function (default 10,000).
func New(size int) *Buffer {
	if size <= 0 {
		size = 10000
	}
	return &Buffer{size: size, now: time.Now, fns: map[string]*ring{}, wake: make(chan struct{})}
}

// Line records a line; it implements instance.LogSink.
func (b *Buffer) Line(fn string, version int, instanceID, requestID, stream string, text []byte) {
	l := Line{Time: b.now(), Version: version, Instance: instanceID, RequestID: requestID, Stream: stream, Text: string(text)}
	b.mu.Lock()
	r := b.fns[fn]
	if r == nil {
		r = &ring{lines: make([]Line, 0, 64)}
		b.fns[fn] = r
	}
	l.Seq = r.next
	r.next++
	if len(r.lines) < b.size {
		r.lines = append(r.lines, l)
	} else {
		r.lines[l.Seq%uint64(b.size)] = l
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
	first := uint64(0)
	if r.next > uint64(len(r.lines)) {
		first = r.next - uint64(len(r.lines))
	}
	since = max(since, first)
	var out []Line
	for s := since; s < r.next && (limit <= 0 || len(out) < limit); s++ {
		if len(r.lines) < b.size {
			out = append(out, r.lines[s])
		} else {
			out = append(out, r.lines[s%uint64(b.size)])
		}
	}
	return out, since + uint64(len(out))
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

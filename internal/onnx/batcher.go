package onnx

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ebb-run/ebb"
)

// batcher stacks requests that arrive together into one run. Its loop, a
// goroutine owned by the Server, groups requests by shape and hands a group
// to a runner goroutine once the group is full or its first request has
// waited MaxDelay, and a run slot (Config.MaxConcurrentRuns, shared with
// unbatched runs) is free. While every slot is busy, groups keep filling: a
// busy instance batches more, an idle one adds at most MaxDelay.
type batcher struct {
	sess    *session
	maxRows int64
	delay   time.Duration
	log     *slog.Logger
	queue   chan *job
	cancel  context.CancelFunc
	done    chan struct{}  // closed when the loop and its runners have exited
	runners sync.WaitGroup // runner goroutines, started and waited for by the loop

	// off is set when a batched run's outputs did not follow the batch
	// dimension; from then on every request runs alone.
	off atomic.Bool

	// Counters, for tests and metrics.
	runs atomic.Int64 // session runs made by the batcher
	jobs atomic.Int64 // requests served by them
}

// job is one request waiting to be batched.
type job struct {
	inputs  []*tensor
	rows    int64
	key     string
	arrived time.Time
	res     chan jobResult // buffered: the loop never blocks on a caller
}

type jobResult struct {
	outs  []tensor
	err   error
	stats runStats
}

// group is a pending batch of one input shape.
type group struct {
	key      string
	jobs     []*job
	rows     int64
	deadline time.Time
	closed   bool // full: it takes no more jobs and runs when a slot frees
}

// queueDepth bounds requests waiting for the batcher; callers block (until
// their context ends) beyond it.
const queueDepth = 4096

func newBatcher(sess *session, maxRows int, delay time.Duration, log *slog.Logger) *batcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &batcher{
		sess:    sess,
		maxRows: int64(maxRows),
		delay:   delay,
		log:     log,
		queue:   make(chan *job, queueDepth),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go b.loop(ctx)
	return b
}

// stop ends the loop and waits for it; queued requests fail with
// ebb.ErrClosed.
func (b *batcher) stop() {
	b.cancel()
	<-b.done
}

// batchKey identifies requests that can share a batch: equal dimensions
// after the first, input by input.
func batchKey(inputs []*tensor) string {
	buf := make([]byte, 0, 32)
	for _, t := range inputs {
		for _, d := range t.shape[1:] {
			buf = strconv.AppendInt(buf, d, 10)
			buf = append(buf, ',')
		}
		buf = append(buf, ';')
	}
	return string(buf)
}

// submit queues inputs (rows rows each) and waits for their outputs. Once
// queued, a job is always waited for, even if ctx ends: the batch may be
// reading the caller's buffers. st, if not nil, receives how the run went.
func (b *batcher) submit(ctx context.Context, inputs []*tensor, rows int64, st *runStats) ([]tensor, error) {
	j := &job{inputs: inputs, rows: rows, key: batchKey(inputs), arrived: time.Now(), res: make(chan jobResult, 1)}
	select {
	case b.queue <- j:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.done:
		return nil, ebb.ErrClosed
	}
	select {
	case r := <-j.res:
		if st != nil {
			*st = r.stats
		}
		return r.outs, r.err
	case <-b.done:
		// The loop may have answered just before exiting.
		select {
		case r := <-j.res:
			if st != nil {
				*st = r.stats
			}
			return r.outs, r.err
		default:
			return nil, ebb.ErrClosed
		}
	}
}

func (b *batcher) loop(ctx context.Context) {
	defer close(b.done)
	var pending []*group // in order of creation, so of deadline
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		// The first group that may run (full, or its delay is over) waits
		// for a run slot; while every slot is busy, groups keep filling.
		var ready *group
		var slot chan<- struct{}
		var timerC <-chan time.Time
		now := time.Now()
		for _, g := range pending {
			if g.closed || !g.deadline.After(now) {
				ready, slot = g, b.sess.slots
				break
			}
		}
		if ready == nil && len(pending) > 0 {
			timer.Reset(pending[0].deadline.Sub(now))
			timerC = timer.C
		}
		select {
		case <-ctx.Done():
			for _, g := range pending {
				failAll(g.jobs, ebb.ErrClosed)
			}
			for {
				select {
				case j := <-b.queue:
					failAll([]*job{j}, ebb.ErrClosed)
				default:
					b.runners.Wait()
					return
				}
			}
		case j := <-b.queue:
			pending = b.add(pending, j)
			// Take everything already queued before deciding what to run.
		drain:
			for {
				select {
				case j := <-b.queue:
					pending = b.add(pending, j)
				default:
					break drain
				}
			}
		case <-timerC:
		case slot <- struct{}{}:
			pending = remove(pending, ready)
			b.runners.Add(1)
			go func() {
				defer b.runners.Done()
				defer func() { <-b.sess.slots }()
				b.run(ready)
			}()
		}
	}
}

// add puts j in the open group of its shape. A group that j would overflow
// is closed (it runs as it is) and j starts a new one; a group j fills is
// closed too.
func (b *batcher) add(pending []*group, j *job) []*group {
	var g *group
	for _, p := range pending {
		if p.key == j.key && !p.closed {
			g = p
			break
		}
	}
	if g != nil && g.rows+j.rows > b.maxRows {
		g.closed = true
		g = nil
	}
	if g == nil {
		g = &group{key: j.key, deadline: j.arrived.Add(b.delay)}
		pending = append(pending, g)
	}
	g.jobs = append(g.jobs, j)
	g.rows += j.rows
	if g.rows >= b.maxRows {
		g.closed = true
	}
	return pending
}

func remove(pending []*group, g *group) []*group {
	for i, p := range pending {
		if p == g {
			return append(pending[:i], pending[i+1:]...)
		}
	}
	return pending
}

func failAll(jobs []*job, err error) {
	for _, j := range jobs {
		j.res <- jobResult{err: err}
	}
}

// run runs one group, with a run slot held, and answers its jobs.
func (b *batcher) run(g *group) {
	b.runs.Add(1)
	b.jobs.Add(int64(len(g.jobs)))
	if len(g.jobs) == 1 || b.off.Load() {
		b.runAlone(g.jobs)
		return
	}
	inputs := concat(g.jobs, g.rows)
	start := time.Now()
	outs, err := b.sess.runHeld(inputs)
	took := time.Since(start)
	if err != nil {
		// One request's values can fail a whole batch (an index out of
		// range, say); running them apart fails only that one.
		b.runAlone(g.jobs)
		return
	}
	for _, o := range outs {
		if len(o.shape) == 0 || o.shape[0] != g.rows {
			if b.off.CompareAndSwap(false, true) {
				b.log.Warn("onnx: batching turned off: an output does not follow the batch dimension",
					"output", o.name, "shape", o.shape, "batch_rows", g.rows)
			}
			b.runAlone(g.jobs)
			return
		}
	}
	var off int64
	for _, j := range g.jobs {
		res := make([]tensor, len(outs))
		for i, o := range outs {
			rowBytes := int64(len(o.data)) / g.rows
			shape := append([]int64{j.rows}, o.shape[1:]...)
			res[i] = tensor{name: o.name, dt: o.dt, shape: shape, data: o.data[off*rowBytes : (off+j.rows)*rowBytes]}
		}
		off += j.rows
		j.res <- jobResult{outs: res, stats: runStats{queued: start.Sub(j.arrived), run: took, rows: g.rows}}
	}
}

func (b *batcher) runAlone(jobs []*job) {
	for _, j := range jobs {
		start := time.Now()
		outs, err := b.sess.runHeld(j.inputs)
		j.res <- jobResult{outs: outs, err: err, stats: runStats{queued: start.Sub(j.arrived), run: time.Since(start), rows: j.rows}}
	}
}

// concat stacks the jobs' inputs along the first dimension.
func concat(jobs []*job, rows int64) []*tensor {
	first := jobs[0].inputs
	inputs := make([]*tensor, len(first))
	for i, t := range first {
		size := 0
		for _, j := range jobs {
			size += len(j.inputs[i].data)
		}
		data := make([]byte, 0, size)
		for _, j := range jobs {
			data = append(data, j.inputs[i].data...)
		}
		shape := append([]int64{rows}, t.shape[1:]...)
		inputs[i] = &tensor{name: t.name, dt: t.dt, shape: shape, data: data}
	}
	return inputs
}

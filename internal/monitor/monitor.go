// Package monitor keeps streaming summaries of what monitored functions take
// and answer, per function, version and time window: for every feature
// (each element of a tensor's last axis, or each top-level JSON number) its
// count, mean, standard deviation, extremes and a histogram over bin edges
// frozen per feature, plus class frequencies of classifier outputs; and it
// scores drift between two versions or two periods with the population
// stability index (PSI).
//
// The request path only hands bytes it already has to Offer, which never
// blocks: a bounded queue feeds one summariser goroutine, owned by the
// Monitor and stopped by Close, that decodes and folds. When the queue is
// full the event is dropped and counted, so monitoring can slow nothing
// down. Summaries live in memory, in windows kept for Config.Retention.
package monitor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultWindow      = time.Minute
	DefaultRetention   = 24 * time.Hour
	DefaultMaxFeatures = 64
	DefaultMaxTensors  = 32
	DefaultMaxClasses  = 256
	DefaultBins        = 10
	DefaultLearn       = 256
	DefaultQueue       = 1024
	DefaultMaxBody     = 1 << 20
	DefaultBudget      = 512 << 10
	// drainEvery is how often the summariser empties its queue: polling
	// instead of waking on every event spares the request path a
	// goroutine wake-up (a futex call on a busy machine) per invocation.
	drainEvery = 10 * time.Millisecond
	// idleDrains is how many drains in a row that find nothing put the
	// summariser to sleep until the next event: an idle node (scaled to
	// zero) should not wake 100 times a second for nothing. Its ticks were
	// 350 of an idle ebb's 510 context switches a second.
	idleDrains = 10
)

// Config configures a Monitor; zero values take the defaults.
type Config struct {
	// Window is the granularity of the kept summaries (default 1m).
	Window time.Duration
	// Retention is how long windows are kept (default 24h).
	Retention time.Duration
	// MaxFeatures bounds the features of one tensor or field: elements
	// past it on the last axis are not summarised (default 64).
	MaxFeatures int
	// MaxTensors bounds the tensors or fields summarised per function and
	// side (input, output, event, result); later ones are left out
	// (default 32).
	MaxTensors int
	// MaxClasses bounds the classes counted per output; the rest count as
	// "other" (default 256).
	MaxClasses int
	// Bins is how many equal-mass bins a feature's edges aim for (default
	// 10); a feature has up to Bins+2 bins with the underflow and overflow.
	Bins int
	// Learn is how many values of a feature are seen before its bin edges
	// freeze (default 256); until then reports use provisional edges from
	// the values seen so far.
	Learn int
	// Queue bounds the events waiting for the summariser (default 1024).
	Queue int
	// MaxBody bounds the bytes of a body that is summarised; a larger body
	// is not captured at all (default 1 MiB).
	MaxBody int
	// Budget bounds the body bytes summarised per second (default 512 KiB);
	// past it invocations are sampled out (counted) until the budget
	// refills. Decoding and folding run at some 30 to 100 MB/s of JSON on
	// one core (less on a crowded one), so the default holds the
	// summariser to a few percent of a core however busy the node is,
	// while still sampling thousands of rows a second.
	Budget int
}

// Validate fills defaults and reports the first invalid field.
func (c *Config) Validate() error {
	def := func(v *int, d int, name string) error {
		if *v < 0 {
			return fmt.Errorf("monitor config: %s must not be negative", name)
		}
		if *v == 0 {
			*v = d
		}
		return nil
	}
	for _, f := range []struct {
		v    *int
		d    int
		name string
	}{{&c.MaxFeatures, DefaultMaxFeatures, "MaxFeatures"}, {&c.MaxTensors, DefaultMaxTensors, "MaxTensors"},
		{&c.MaxClasses, DefaultMaxClasses, "MaxClasses"}, {&c.Bins, DefaultBins, "Bins"}, {&c.Learn, DefaultLearn, "Learn"},
		{&c.Queue, DefaultQueue, "Queue"}, {&c.MaxBody, DefaultMaxBody, "MaxBody"}, {&c.Budget, DefaultBudget, "Budget"}} {
		if err := def(f.v, f.d, f.name); err != nil {
			return err
		}
	}
	if c.Window < 0 || c.Retention < 0 {
		return errors.New("monitor config: Window and Retention must not be negative")
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.Retention < c.Window {
		return fmt.Errorf("monitor config: Retention %s is shorter than Window %s", c.Retention, c.Window)
	}
	return nil
}

// Kind says how an event's bodies are read.
type Kind uint8

const (
	// KindOIP is an Open Inference Protocol request and response: inputs
	// and outputs are tensors.
	KindOIP Kind = iota + 1
	// KindJSON is a JSON event and result: top-level numbers are features.
	KindJSON
	kindFlush
)

// Sides of a feature.
const (
	SideInput  = "input"
	SideOutput = "output"
	SideEvent  = "event"
	SideResult = "result"
)

// Event is one invocation to summarise. The Monitor owns Request and
// Response once Offer has them: the caller must not change them after.
type Event struct {
	Function string
	Version  int
	At       time.Time
	Kind     Kind
	Request  []byte
	Response []byte
	// RequestHeaderLen and ResponseHeaderLen are the bodies'
	// Inference-Header-Content-Length (KindOIP); 0 when all JSON.
	RequestHeaderLen, ResponseHeaderLen int
	// Pooled says the bodies came from Buffer and go back to its pool.
	Pooled bool
	done   chan struct{}
}

// Monitor keeps the summaries. It is safe for concurrent use.
type Monitor struct {
	cfg     Config
	ch      chan Event
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
	bufs    sync.Pool

	events, dropped, failed, sampled atomic.Uint64
	tokens                           atomic.Int64 // budget bytes left; refilled by the summariser
	dec                              decoder      // the summariser's scratch
	// asleep says the summariser waits on wake rather than its ticker;
	// the first event after it sets it wakes it.
	asleep atomic.Bool
	wake   chan struct{}

	mu  sync.Mutex
	fns map[string]*function
}

// New starts a Monitor's summariser; Close stops it.
func New(cfg Config) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Monitor{cfg: cfg, ch: make(chan Event, cfg.Queue), stop: make(chan struct{}), stopped: make(chan struct{}),
		wake: make(chan struct{}, 1), fns: map[string]*function{}}
	m.tokens.Store(int64(cfg.Budget))
	go m.run()
	return m, nil
}

// Config returns the configuration in effect.
func (m *Monitor) Config() Config { return m.cfg }

// Close stops the summariser; later events are dropped.
func (m *Monitor) Close() {
	m.once.Do(func() { close(m.stop) })
	<-m.stopped
}

// Admit says whether an invocation whose bodies hold about n bytes is
// summarised: false when the queue is full (counted as dropped) or the
// budget is spent (counted as sampled out). The caller captures and offers
// only what is admitted.
func (m *Monitor) Admit(n int) bool {
	if len(m.ch) >= cap(m.ch) {
		m.dropped.Add(1)
		return false
	}
	if m.tokens.Add(-int64(n)) < 0 {
		m.tokens.Add(int64(n))
		m.sampled.Add(1)
		return false
	}
	return true
}

// Offer queues ev without blocking; false (counted as dropped) when the
// queue is full.
func (m *Monitor) Offer(ev Event) bool {
	select {
	case m.ch <- ev:
		m.rouse()
		return true
	default:
		m.dropped.Add(1)
		m.Recycle(&ev)
		return false
	}
}

// Buffer returns an empty buffer with room for n bytes, for a body that an
// Event with Pooled set will carry.
func (m *Monitor) Buffer(n int) []byte {
	if v := m.bufs.Get(); v != nil {
		if b := *v.(*[]byte); cap(b) >= n {
			return b[:0]
		}
	}
	return make([]byte, 0, max(n, 4<<10))
}

// Recycle gives a Pooled event's buffers back without summarising it.
func (m *Monitor) Recycle(ev *Event) {
	if !ev.Pooled {
		return
	}
	for _, b := range [][]byte{ev.Request, ev.Response} {
		if b != nil && cap(b) <= m.cfg.MaxBody {
			b = b[:0]
			m.bufs.Put(&b)
		}
	}
}

// Counts are the Monitor's totals since it started.
type Counts struct {
	Events     uint64 `json:"events"`      // summarised
	Dropped    uint64 `json:"dropped"`     // the queue was full
	SampledOut uint64 `json:"sampled_out"` // over the byte budget
	Failed     uint64 `json:"failed"`      // a body could not be decoded
}

// Counts reports the totals.
func (m *Monitor) Counts() Counts {
	return Counts{Events: m.events.Load(), Dropped: m.dropped.Load(), SampledOut: m.sampled.Load(), Failed: m.failed.Load()}
}

// Flush waits until every event offered before it is folded.
func (m *Monitor) Flush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case m.ch <- Event{Kind: kindFlush, done: done}:
		m.rouse()
	case <-ctx.Done():
		return ctx.Err()
	case <-m.stopped:
		return errors.New("monitor: closed")
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.stopped:
		return errors.New("monitor: closed")
	}
}

// Forget drops a function's summaries (it was removed).
func (m *Monitor) Forget(function string) {
	m.mu.Lock()
	delete(m.fns, function)
	m.mu.Unlock()
}

// rouse wakes the summariser if it sleeps: on the request path one atomic
// load while it is awake.
func (m *Monitor) rouse() {
	if m.asleep.Load() && m.asleep.CompareAndSwap(true, false) {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// run drains the queue every drainEvery while events come, and sleeps
// until the next one after idleDrains empty drains. The byte budget refills
// with the time that passed, asleep or not.
func (m *Monitor) run() {
	defer close(m.stopped)
	tick := time.NewTicker(drainEvery)
	defer tick.Stop()
	last := time.Now()
	empty := 0
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		refill := int64(float64(m.cfg.Budget) * now.Sub(last).Seconds())
		last = now
		if t := m.tokens.Add(refill); t > int64(m.cfg.Budget) {
			m.tokens.Add(int64(m.cfg.Budget) - t)
		}
		n := len(m.ch)
		for range n {
			ev := <-m.ch
			if ev.Kind == kindFlush {
				close(ev.done)
				continue
			}
			m.fold(&ev)
			m.Recycle(&ev)
		}
		if n > 0 {
			empty = 0
			continue
		}
		if empty++; empty < idleDrains {
			continue
		}
		// Asleep, then a last look: an event offered before asleep was
		// set saw it unset and did not rouse.
		m.asleep.Store(true)
		if len(m.ch) == 0 {
			tick.Stop()
			select {
			case <-m.stop:
				return
			case <-m.wake:
			}
			tick.Reset(drainEvery)
		}
		m.asleep.Store(false)
		empty = 0
	}
}

// function is one function's state: bin edges per feature (shared by its
// versions, so that any two windows or versions are binned alike) and the
// windows.
type function struct {
	features map[featureKey]*feature
	tensors  map[[2]string][]*feature // side, tensor: its features
	admitted map[string]int           // tensors per side
	windows  map[windowKey]*window
	newest   int64 // start of the newest window, for pruning
}

type featureKey struct {
	side, tensor string
	index        int
}

type windowKey struct {
	version int
	start   int64 // Unix seconds
}

type window struct {
	events  int64
	feats   map[featureKey]*Summary
	sums    map[[2]string][]*Summary // by tensor, in feature order
	classes map[[2]string]map[string]int64
}

// feature is where a feature's bin edges are learned: values wait (in
// their windows' summaries) until Learn of them have come, then the edges
// freeze and the waiting values are binned.
type feature struct {
	edges   []float64
	frozen  bool
	learn   []float64
	waiting []*Summary
}

func (m *Monitor) fold(ev *Event) {
	var in, out []Tensor
	var err error
	m.dec.reset()
	switch ev.Kind {
	case KindOIP:
		if in, err = m.dec.oip(ev.Request, ev.RequestHeaderLen, "inputs"); err == nil {
			out, err = m.dec.oip(ev.Response, ev.ResponseHeaderLen, "outputs")
		}
	case KindJSON:
		var fi, fo []Field
		if fi, err = JSONFields(ev.Request, m.cfg.MaxFeatures); err == nil {
			fo, err = JSONFields(ev.Response, m.cfg.MaxFeatures)
		}
		in, out = fieldTensors(fi), fieldTensors(fo)
	default:
		err = errors.New("unknown kind")
	}
	if err != nil {
		m.failed.Add(1)
		return
	}
	m.events.Add(1)
	inSide, outSide := SideInput, SideOutput
	if ev.Kind == KindJSON {
		inSide, outSide = SideEvent, SideResult
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fns[ev.Function]
	if f == nil {
		f = &function{features: map[featureKey]*feature{}, tensors: map[[2]string][]*feature{}, admitted: map[string]int{},
			windows: map[windowKey]*window{}}
		m.fns[ev.Function] = f
	}
	start := ev.At.Truncate(m.cfg.Window).Unix()
	wk := windowKey{ev.Version, start}
	w := f.windows[wk]
	if w == nil {
		w = &window{feats: map[featureKey]*Summary{}, sums: map[[2]string][]*Summary{}, classes: map[[2]string]map[string]int64{}}
		f.windows[wk] = w
		if start > f.newest {
			f.newest = start
			m.prune(f, time.Unix(start, 0))
		}
	}
	w.events++
	for i := range in {
		m.foldTensor(f, w, inSide, &in[i], false)
	}
	for i := range out {
		m.foldTensor(f, w, outSide, &out[i], ev.Kind == KindOIP)
	}
}

// fieldTensors carries JSON fields as tensors that say each value's
// feature.
func fieldTensors(fs []Field) []Tensor {
	ts := make([]Tensor, len(fs))
	for i, f := range fs {
		ts[i] = Tensor{Name: f.Name, Values: f.Values, index: f.Index}
	}
	return ts
}

// prune drops windows that ended Retention before now.
func (m *Monitor) prune(f *function, now time.Time) {
	oldest := now.Add(-m.cfg.Retention).Unix()
	for k := range f.windows {
		if k.start < oldest {
			delete(f.windows, k)
		}
	}
}

// foldTensor folds one tensor or JSON field. A tensor of rank 2 or more
// has a feature per element of its last axis, a lower rank is one feature;
// a field says each value's feature.
func (m *Monitor) foldTensor(f *function, w *window, side string, t *Tensor, classes bool) {
	if t.Values == nil {
		return
	}
	tk := [2]string{side, t.Name}
	feats, seen := f.tensors[tk]
	if !seen {
		// Names past the cap are not remembered either: events with ever
		// new keys must not grow the map.
		if f.admitted[side] >= m.cfg.MaxTensors {
			return
		}
		f.admitted[side]++
		feats = []*feature{}
		f.tensors[tk] = feats
	}
	indexed := t.index != nil
	width := 1
	if !indexed && len(t.Shape) >= 2 {
		width = int(t.Shape[len(t.Shape)-1])
	}
	nf := min(width, m.cfg.MaxFeatures)
	if indexed {
		for _, ix := range t.index {
			nf = max(nf, ix+1)
		}
	}
	for i := len(feats); i < nf; i++ {
		ft := &feature{}
		f.features[featureKey{side, t.Name, i}] = ft
		feats = append(feats, ft)
		f.tensors[tk] = feats
	}
	sums := w.sums[tk]
	for i := len(sums); i < nf; i++ {
		s := &Summary{}
		w.feats[featureKey{side, t.Name, i}] = s
		sums = append(sums, s)
		w.sums[tk] = sums
	}
	for i, v := range t.Values {
		j := 0
		switch {
		case indexed:
			j = t.index[i]
		case width > 1:
			j = i % width
			if j >= nf {
				continue
			}
		}
		m.add(feats[j], sums[j], v)
	}
	if classes {
		m.foldClasses(w, tk, t, width)
	}
}

// add folds v into s, binning it when the feature's edges are frozen.
func (m *Monitor) add(ft *feature, s *Summary, v float64) {
	if !s.Add(v) {
		return
	}
	if ft.frozen {
		if s.Hist == nil {
			s.Hist = make([]int64, len(ft.edges)+1)
		}
		s.Hist[Bin(ft.edges, v)]++
		return
	}
	ft.learn = append(ft.learn, v)
	if len(s.pending) == 0 {
		ft.waiting = append(ft.waiting, s)
	}
	s.pending = append(s.pending, v)
	if len(ft.learn) >= m.cfg.Learn {
		m.freeze(ft)
	}
}

// freeze fixes a feature's edges from what it learned and bins the values
// that waited for them.
func (m *Monitor) freeze(ft *feature) {
	if ft.frozen || len(ft.learn) == 0 {
		return
	}
	ft.edges = Edges(ft.learn, m.cfg.Bins)
	ft.frozen = true
	for _, s := range ft.waiting {
		if s.Hist == nil {
			s.Hist = make([]int64, len(ft.edges)+1)
		}
		for _, v := range s.pending {
			s.Hist[Bin(ft.edges, v)]++
		}
		s.pending = nil
	}
	ft.learn, ft.waiting = nil, nil
}

// foldClasses counts the classes an output names: the argmax of each row
// of a floating-point [batch, classes] output, or each element of an
// integer or bool output.
func (m *Monitor) foldClasses(w *window, tk [2]string, t *Tensor, width int) {
	isFloat := t.Datatype == "FP32" || t.Datatype == "FP64" || t.Datatype == "FP16" || t.Datatype == "BF16"
	var count func(v float64)
	cs := w.classes[tk]
	count = func(v float64) {
		if cs == nil {
			cs = map[string]int64{}
			w.classes[tk] = cs
		}
		k := classKey(v)
		if _, ok := cs[k]; !ok && len(cs) >= m.cfg.MaxClasses {
			k = otherClass
		}
		cs[k]++
	}
	switch {
	case isFloat && len(t.Shape) == 2 && width >= 2:
		for r := 0; r+width <= len(t.Values); r += width {
			best := 0
			for j, v := range t.Values[r : r+width] {
				if v > t.Values[r+best] {
					best = j
				}
			}
			count(float64(best))
		}
	case !isFloat && t.Datatype != "" && t.Datatype != "BYTES":
		for _, v := range t.Values {
			count(v)
		}
	}
}

// Query selects what a report covers: a version over [Since, Until), and
// the baseline it is compared with: BaselineVersion over [BaselineSince,
// BaselineUntil); BaselineVersion 0 is Version when BaselineSince is set,
// else there is no baseline.
type Query struct {
	Function                     string
	Version                      int
	Since, Until                 time.Time
	BaselineVersion              int
	BaselineSince, BaselineUntil time.Time
	// Series adds each feature's per-window points to the report.
	Series bool
}

// Report is what GET /v1/functions/{name}/monitor answers.
type Report struct {
	Function string    `json:"function"`
	Version  int       `json:"version"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	Window   string    `json:"window"`
	// Events is how many invocations the summaries hold.
	Events   int64     `json:"events"`
	Baseline *Baseline `json:"baseline,omitempty"`
	// MaxPSI is the largest PSI of any feature or class count; null
	// without a baseline with data.
	MaxPSI   *float64        `json:"max_psi"`
	Features []FeatureReport `json:"features"`
	Classes  []ClassReport   `json:"classes"`
	// Monitor is the node's totals: summarised, dropped (the summariser
	// was behind), failed (undecodable bodies).
	Monitor Counts `json:"monitor"`
}

// Baseline is what a report compares with.
type Baseline struct {
	Version int       `json:"version"`
	Since   time.Time `json:"since"`
	Until   time.Time `json:"until"`
	Events  int64     `json:"events"`
}

// FeatureReport is one feature's summary, histogram and drift.
type FeatureReport struct {
	// Name is side.tensor[index]: input.float_input[2], event.age[0].
	Name   string  `json:"name"`
	Side   string  `json:"side"`
	Tensor string  `json:"tensor"`
	Index  int     `json:"index"`
	Count  int64   `json:"count"`
	Mean   float64 `json:"mean"`
	Std    float64 `json:"std"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// NonFinite counts NaN and ±Inf values, which are in nothing else.
	NonFinite int64 `json:"non_finite,omitempty"`
	// Edges are the bin edges; Counts has one more entry: Counts[0] is
	// below Edges[0], Counts[i] is in [Edges[i-1], Edges[i]), the last is
	// at or above the last edge.
	Edges          []float64 `json:"edges"`
	Counts         []int64   `json:"counts"`
	BaselineCount  int64     `json:"baseline_count"`
	BaselineMean   float64   `json:"baseline_mean"`
	BaselineCounts []int64   `json:"baseline_counts,omitempty"`
	PSI            *float64  `json:"psi"`
	// Series, when asked for, is the feature over time: one point per
	// window with data, oldest first.
	Series []Point `json:"series,omitempty"`
}

// Point is one window of a feature.
type Point struct {
	Start time.Time `json:"start"`
	Count int64     `json:"count"`
	Mean  float64   `json:"mean"`
	Std   float64   `json:"std"`
}

// ClassReport is one output's class frequencies and their drift.
type ClassReport struct {
	Name           string           `json:"name"`
	Side           string           `json:"side"`
	Tensor         string           `json:"tensor"`
	Counts         map[string]int64 `json:"counts"`
	BaselineCounts map[string]int64 `json:"baseline_counts,omitempty"`
	PSI            *float64         `json:"psi"`
}

// Report merges the windows q selects. A window counts when it starts in
// [Since rounded down to the window, Until).
func (m *Monitor) Report(q Query) *Report {
	rep := &Report{Function: q.Function, Version: q.Version, Since: q.Since, Until: q.Until, Window: m.cfg.Window.String(),
		Features: []FeatureReport{}, Classes: []ClassReport{}, Monitor: m.Counts()}
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fns[q.Function]
	if f == nil {
		return rep
	}
	// A feature still learning is reported over provisional edges from
	// what it has seen so far; they are not frozen, so that a report (a
	// dashboard polling right after a deploy) cannot fix a feature's bins
	// from its first handful of values.
	provisional := map[featureKey][]float64{}
	edgesOf := func(k featureKey) []float64 {
		ft := f.features[k]
		if ft.frozen {
			return ft.edges
		}
		e, ok := provisional[k]
		if !ok {
			e = Edges(slices.Clone(ft.learn), m.cfg.Bins)
			provisional[k] = e
		}
		return e
	}
	if q.BaselineVersion == 0 && !q.BaselineSince.IsZero() {
		q.BaselineVersion = q.Version
	}
	cur := m.merge(f, q.Version, q.Since, q.Until, edgesOf)
	if q.Series {
		cur.series = map[featureKey][]Point{}
		m.points(f, q.Version, q.Since, q.Until, cur.series)
	}
	rep.Events = cur.events
	var base *merged
	if q.BaselineVersion > 0 {
		base = m.merge(f, q.BaselineVersion, q.BaselineSince, q.BaselineUntil, edgesOf)
		rep.Baseline = &Baseline{Version: q.BaselineVersion, Since: q.BaselineSince, Until: q.BaselineUntil, Events: base.events}
	}
	maxPSI := math.NaN()
	keys := make([]featureKey, 0, len(cur.feats))
	for k := range cur.feats {
		keys = append(keys, k)
	}
	if base != nil {
		for k := range base.feats {
			if _, ok := cur.feats[k]; !ok {
				keys = append(keys, k)
			}
		}
	}
	slices.SortFunc(keys, func(a, b featureKey) int {
		return cmp.Or(cmp.Compare(sideOrder(a.side), sideOrder(b.side)), cmp.Compare(a.tensor, b.tensor), cmp.Compare(a.index, b.index))
	})
	for _, k := range keys {
		s := cur.feats[k]
		if s == nil {
			s = &Summary{}
		}
		fr := FeatureReport{Name: fmt.Sprintf("%s.%s[%d]", k.side, k.tensor, k.index), Side: k.side, Tensor: k.tensor, Index: k.index,
			Count: s.Count, Mean: s.Mean, Std: s.Std(), Min: s.Min, Max: s.Max, NonFinite: s.NonFinite,
			Edges: edgesOf(k), Counts: hist(s.Hist, len(edgesOf(k))+1)}
		if fr.Edges == nil {
			fr.Edges = []float64{}
		}
		if cur.series != nil {
			fr.Series = cur.series[k]
		}
		if base != nil {
			b := base.feats[k]
			if b == nil {
				b = &Summary{}
			}
			fr.BaselineCount, fr.BaselineMean = b.Count, b.Mean
			fr.BaselineCounts = hist(b.Hist, len(fr.Counts))
			fr.PSI = finite(PSI(fr.Counts, fr.BaselineCounts))
			if fr.PSI != nil && !(*fr.PSI <= maxPSI) {
				maxPSI = *fr.PSI
			}
		}
		rep.Features = append(rep.Features, fr)
	}
	ckeys := make([][2]string, 0, len(cur.classes))
	for k := range cur.classes {
		ckeys = append(ckeys, k)
	}
	if base != nil {
		for k := range base.classes {
			if _, ok := cur.classes[k]; !ok {
				ckeys = append(ckeys, k)
			}
		}
	}
	slices.SortFunc(ckeys, func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(sideOrder(a[0]), sideOrder(b[0])), cmp.Compare(a[1], b[1]))
	})
	for _, k := range ckeys {
		cr := ClassReport{Name: k[0] + "." + k[1], Side: k[0], Tensor: k[1], Counts: cur.classes[k]}
		if cr.Counts == nil {
			cr.Counts = map[string]int64{}
		}
		if base != nil {
			cr.BaselineCounts = base.classes[k]
			if cr.BaselineCounts == nil {
				cr.BaselineCounts = map[string]int64{}
			}
			cr.PSI = finite(classPSI(cr.Counts, cr.BaselineCounts))
			if cr.PSI != nil && !(*cr.PSI <= maxPSI) {
				maxPSI = *cr.PSI
			}
		}
		rep.Classes = append(rep.Classes, cr)
	}
	rep.MaxPSI = finite(maxPSI)
	return rep
}

// OutputPSI is the largest PSI of the output and result features and the
// class counts; nil when none has one.
func (r *Report) OutputPSI() *float64 {
	var out *float64
	take := func(p *float64) {
		if p != nil && (out == nil || *p > *out) {
			out = p
		}
	}
	for i := range r.Features {
		if sideOrder(r.Features[i].Side) == 1 {
			take(r.Features[i].PSI)
		}
	}
	for i := range r.Classes {
		take(r.Classes[i].PSI)
	}
	return out
}

func sideOrder(s string) int {
	switch s {
	case SideInput, SideEvent:
		return 0
	}
	return 1
}

func hist(h []int64, n int) []int64 {
	out := make([]int64, n)
	copy(out, h)
	return out
}

func finite(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

type merged struct {
	series  map[featureKey][]Point
	events  int64
	feats   map[featureKey]*Summary
	classes map[[2]string]map[string]int64
}

// merge adds up the windows of version that start in [since, until);
// values still waiting for their feature's edges are binned over
// edgesOf's.
func (m *Monitor) merge(f *function, version int, since, until time.Time, edgesOf func(featureKey) []float64) *merged {
	out := &merged{feats: map[featureKey]*Summary{}, classes: map[[2]string]map[string]int64{}}
	from, to := since.Truncate(m.cfg.Window).Unix(), until.UnixNano()
	for k, w := range f.windows {
		// To the nanosecond: a window that began in until's second, before
		// until, is in the range.
		if k.version != version || k.start < from || k.start*int64(time.Second) >= to {
			continue
		}
		out.events += w.events
		for fk, s := range w.feats {
			d := out.feats[fk]
			if d == nil {
				d = &Summary{}
				out.feats[fk] = d
			}
			d.Merge(s)
			if len(s.pending) > 0 {
				e := edgesOf(fk)
				if len(d.Hist) < len(e)+1 {
					d.Hist = append(d.Hist, make([]int64, len(e)+1-len(d.Hist))...)
				}
				for _, v := range s.pending {
					d.Hist[Bin(e, v)]++
				}
			}
		}
		for ck, cs := range w.classes {
			d := out.classes[ck]
			if d == nil {
				d = map[string]int64{}
				out.classes[ck] = d
			}
			for c, n := range cs {
				d[c] += n
			}
		}
	}
	return out
}

// points collects the per-window points of version's windows in [since,
// until), oldest first.
func (m *Monitor) points(f *function, version int, since, until time.Time, out map[featureKey][]Point) {
	from, to := since.Truncate(m.cfg.Window).Unix(), until.UnixNano()
	for k, w := range f.windows {
		// To the nanosecond: a window that began in until's second, before
		// until, is in the range.
		if k.version != version || k.start < from || k.start*int64(time.Second) >= to {
			continue
		}
		for fk, s := range w.feats {
			if s.Count > 0 {
				out[fk] = append(out[fk], Point{Start: time.Unix(k.start, 0).UTC(), Count: s.Count, Mean: s.Mean, Std: s.Std()})
			}
		}
	}
	for _, ps := range out {
		slices.SortFunc(ps, func(a, b Point) int { return a.Start.Compare(b.Start) })
	}
}

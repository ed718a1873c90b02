package instance

import (
	"errors"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultWarmMax is how many holders of warm capacity a node keeps at most
// when WarmConfig.Max is zero.
const DefaultWarmMax = 128

// DefaultWarmEstimate is what a holder is assumed to cost before anything
// of its kind was measured on the node: a python zygote with a light import
// and its spare child measure about 15 MiB of PSS here, and the sandbox's
// pasta, which it keeps up, about 29 MiB more.
const DefaultWarmEstimate = 40 << 20

// MinWarmMemory is the least default budget (--warm-memory), however small
// the machine.
const MinWarmMemory = 256 << 20

// DefaultWarmMemory is the default budget for a machine of total bytes:
// a tenth of it, at least MinWarmMemory.
func DefaultWarmMemory(total uint64) uint64 { return max(total/10, MinWarmMemory) }

// errNoRoom says the warm budget has no room for what a start wanted to
// build ahead (or keep); the start goes without it.
var errNoRoom = errors.New("no room in the warm budget")

// Holder kinds, as WarmHolderStatus reports them.
const (
	KindZygote    = "zygote"     // a python zygote and its spare child
	KindONNXSpare = "onnx-spare" // an onnx process with ONNX Runtime up
	KindBoxSpare  = "box-spare"  // a sandbox set up ahead of its process
)

// WarmConfig sizes a node's budget for warm capacity.
type WarmConfig struct {
	// Bytes is the most memory (PSS) that holders may use together; 0
	// allows none.
	Bytes uint64
	// Max is the most holders at once; 0 means DefaultWarmMax, negative
	// none.
	Max int
	// Estimate is what a holder of a function never measured is assumed
	// to cost; 0 means DefaultWarmEstimate.
	Estimate uint64
	// Priority ranks holders by predicted demand, higher kept first; nil
	// means RecentUse. It is the hook for a keep-alive policy's
	// next-arrival estimate (sooner arrival, higher priority).
	Priority func(h HolderInfo, now time.Time) float64
	// Now is injected by tests; default time.Now.
	Now func() time.Time
}

// HolderInfo is what a Priority sees of a holder.
type HolderInfo struct {
	Function string
	Version  int
	Kind     string
	// LastUse is when a start of the version last ran; zero if never.
	LastUse time.Time
}

// RecentUse is the default Priority: the more recently a function was
// started, the sooner it is expected again. Never used ranks lowest.
func RecentUse(h HolderInfo, _ time.Time) float64 {
	if h.LastUse.IsZero() {
		return math.Inf(-1)
	}
	return float64(h.LastUse.UnixNano())
}

// WarmBudget is one node's budget for warm capacity: what is built ahead of
// need (python zygotes with their spare child, onnx spare processes, spare
// sandboxes) holds memory while no request uses it, so it is spent by
// predicted demand. A holder is built ahead only when the budget has room,
// or by evicting idle holders of lower priority; a request's own build (the
// cold path) may evict any idle holder, and goes without when even that
// leaves no room. Holders are accounted by their measured PSS, by an
// estimate before they are built (the function's last measurement, else
// WarmConfig.Estimate). Safe for concurrent use.
type WarmBudget struct {
	cfg WarmConfig

	mu        sync.Mutex // guards holders' budget fields, estimates, kinds
	holders   map[*warmHolder]struct{}
	estimates map[string]uint64 // last measurement by function name
	// kinds is the last measurement by holder kind, the estimate for a
	// function never measured.
	kinds map[string]uint64
	// seen is when functions were last used before this process began
	// (SeedUse): the last use of their holders until they are used again.
	seen map[string]time.Time
}

// NewWarmBudget makes a budget of cfg.
func NewWarmBudget(cfg WarmConfig) *WarmBudget {
	if cfg.Max == 0 {
		cfg.Max = DefaultWarmMax
	}
	cfg.Max = max(cfg.Max, 0)
	if cfg.Estimate == 0 {
		cfg.Estimate = DefaultWarmEstimate
	}
	if cfg.Priority == nil {
		cfg.Priority = RecentUse
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &WarmBudget{cfg: cfg, holders: map[*warmHolder]struct{}{}, estimates: map[string]uint64{}, kinds: map[string]uint64{}}
}

// warmHolder is one thing a starter builds ahead of need, accounted in a
// budget while it holds memory. A nil holder has no budget: admit always
// succeeds.
type warmHolder struct {
	b    *WarmBudget
	info HolderInfo // Function, Version, Kind fixed; LastUse guarded by b.mu
	// measure returns its current PSS in bytes, 0 when nothing runs.
	measure func() uint64
	// idle says it may be evicted now (no instance depends on it).
	idle func() bool
	// evict lets go of it unless it is busy; it calls release.
	evict func()

	// guarded by b.mu
	held  bool
	bytes uint64 // measured, or the estimate until measured
	since time.Time
}

func (b *WarmBudget) newHolder(fn string, version int, kind string, measure func() uint64, idle func() bool, evict func()) *warmHolder {
	if b == nil {
		return nil
	}
	h := &warmHolder{b: b, info: HolderInfo{Function: fn, Version: version, Kind: kind}, measure: measure, idle: idle, evict: evict}
	b.mu.Lock()
	h.info.LastUse = b.seen[fn]
	b.mu.Unlock()
	return h
}

// SeedUse tells the budget when functions were last used before this
// process began (read from the usage store at a restart): holders made for
// them afterwards rank by that use until they are used again, so that what
// a restart builds ahead, and what it evicts first, follows the traffic
// before it.
func (b *WarmBudget) SeedUse(last map[string]time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.seen = maps.Clone(last)
	b.mu.Unlock()
}

// used notes a start of the holder's function, for its priority.
func (h *warmHolder) used() {
	if h == nil {
		return
	}
	h.b.mu.Lock()
	h.info.LastUse = h.b.cfg.Now()
	h.b.mu.Unlock()
}

// holderView is what plan sees of a held holder.
type holderView struct {
	bytes     uint64
	priority  float64
	evictable bool
}

// plan decides whether a holder of need bytes fits in a budget of limit
// bytes and max holders, given those held (used bytes in all), evicting
// evictable holders of priority below prio, lowest first: it returns the
// indexes of the ones to evict, and false when even evicting every one
// allowed would leave no room (then nothing is evicted). A pure function.
func plan(held []holderView, need, limit uint64, maxCount int, prio float64) (victims []int, ok bool) {
	var used uint64
	for _, v := range held {
		used += v.bytes
	}
	count := len(held)
	if need > limit || maxCount < 1 {
		return nil, false
	}
	order := make([]int, 0, len(held))
	for i, v := range held {
		if v.evictable && v.priority < prio {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch pa, pb := held[a].priority, held[b].priority; {
		case pa < pb:
			return -1
		case pa > pb:
			return 1
		}
		// Among equals, the larger one first: fewer evictions.
		switch ba, bb := held[a].bytes, held[b].bytes; {
		case ba > bb:
			return -1
		case ba < bb:
			return 1
		}
		return 0
	})
	for _, i := range order {
		if used+need <= limit && count+1 <= maxCount {
			break
		}
		victims = append(victims, i)
		used -= held[i].bytes
		count--
	}
	if used+need > limit || count+1 > maxCount {
		return nil, false
	}
	return victims, true
}

// shrink picks the evictable holders to let go, lowest priority first, so
// that held fits in limit bytes and max holders again (after measurements
// grew); a pure function.
func shrink(held []holderView, limit uint64, maxCount int) (victims []int) {
	var used uint64
	for _, v := range held {
		used += v.bytes
	}
	count := len(held)
	order := make([]int, 0, len(held))
	for i, v := range held {
		if v.evictable {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch pa, pb := held[a].priority, held[b].priority; {
		case pa < pb:
			return -1
		case pa > pb:
			return 1
		}
		return 0
	})
	for _, i := range order {
		if used <= limit && count <= maxCount {
			break
		}
		victims = append(victims, i)
		used -= held[i].bytes
		count--
	}
	return victims
}

// admit reserves room for h, evicting idle holders of lower priority when
// needed: demand (a request's own build) ranks above every idle holder. It
// returns errNoRoom when there is none; true holders admit at once.
func (h *warmHolder) admit(demand bool) error {
	if h == nil {
		return nil
	}
	b := h.b
	for range 4 { // an evicted holder may have turned busy meanwhile
		b.mu.Lock()
		if h.held {
			b.mu.Unlock()
			return nil
		}
		now := b.cfg.Now()
		prio := math.Inf(1)
		if !demand {
			prio = b.cfg.Priority(h.info, now)
		}
		others := b.heldLocked(h)
		b.mu.Unlock()
		views := b.views(others, now)
		b.mu.Lock()
		if h.held {
			b.mu.Unlock()
			return nil
		}
		need := b.estimateLocked(h.info)
		victims, ok := plan(views, need, b.cfg.Bytes, b.cfg.Max, prio)
		if !ok {
			b.mu.Unlock()
			return errNoRoom
		}
		if len(victims) == 0 {
			// Others may have been admitted since the views were taken.
			var used uint64
			count := 0
			for o := range b.holders {
				if o.held {
					used += o.bytes
					count++
				}
			}
			if used+need <= b.cfg.Bytes && count+1 <= b.cfg.Max {
				h.held, h.bytes, h.since = true, need, now
				b.mu.Unlock()
				return nil
			}
			b.mu.Unlock()
			continue
		}
		b.mu.Unlock()
		for _, i := range victims {
			others[i].evict()
		}
	}
	return errNoRoom
}

// heldLocked lists the held holders other than except.
func (b *WarmBudget) heldLocked(except *warmHolder) []*warmHolder {
	var hs []*warmHolder
	for o := range b.holders {
		if o.held && o != except {
			hs = append(hs, o)
		}
	}
	return hs
}

// views ranks hs for plan; it asks whether each is idle, outside b.mu (the
// holders' launchers take their own locks).
func (b *WarmBudget) views(hs []*warmHolder, now time.Time) []holderView {
	idle := make([]bool, len(hs))
	for i, o := range hs {
		idle[i] = o.idle == nil || o.idle()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	views := make([]holderView, len(hs))
	for i, o := range hs {
		views[i] = holderView{bytes: o.bytes, priority: b.cfg.Priority(o.info, now), evictable: idle[i] && o.evict != nil}
	}
	return views
}

// estimateLocked is what a holder is assumed to cost until measured: its
// function's last measurement, else the last of its kind, else
// WarmConfig.Estimate.
func (b *WarmBudget) estimateLocked(h HolderInfo) uint64 {
	if e, ok := b.estimates[h.Function]; ok {
		return e
	}
	if e, ok := b.kinds[h.Kind]; ok {
		return e
	}
	return b.cfg.Estimate
}

// measuredLocked records a holder's measurement m.
func (b *WarmBudget) measuredLocked(h *warmHolder, m uint64) {
	h.bytes = m
	b.estimates[h.info.Function] = m
	b.kinds[h.info.Kind] = m
}

// register makes h count once admitted; unregister forgets it (at close).
func (h *warmHolder) register() {
	if h == nil {
		return
	}
	h.b.mu.Lock()
	h.b.holders[h] = struct{}{}
	h.b.mu.Unlock()
}

func (h *warmHolder) unregister() {
	if h == nil {
		return
	}
	h.release()
	h.b.mu.Lock()
	delete(h.b.holders, h)
	h.b.mu.Unlock()
}

// release gives h's room back; what it held is gone.
func (h *warmHolder) release() { h.releaseUnless(nil) }

// releaseUnless is release, unless superseded says (under the budget's
// lock, so no admission interleaves) that the hold has a new owner: what
// it accounted is gone, but something built since took over the hold.
// superseded must not take locks.
func (h *warmHolder) releaseUnless(superseded func() bool) {
	if h == nil {
		return
	}
	h.b.mu.Lock()
	if superseded == nil || !superseded() {
		h.held = false
	}
	h.b.mu.Unlock()
}

// refresh measures h (once what it holds is up, or changed) and, when the
// budget turns out overspent, evicts idle holders of the lowest priority
// until it fits again (h itself among the candidates).
func (h *warmHolder) refresh() {
	if h == nil {
		return
	}
	b := h.b
	m := h.measure()
	b.mu.Lock()
	if !h.held || m == 0 {
		b.mu.Unlock()
		return
	}
	b.measuredLocked(h, m)
	hs := b.heldLocked(nil)
	b.mu.Unlock()
	b.rebalance(hs)
}

func (b *WarmBudget) rebalance(hs []*warmHolder) {
	views := b.views(hs, b.cfg.Now())
	for _, i := range shrink(views, b.cfg.Bytes, b.cfg.Max) {
		hs[i].evict()
	}
}

// WarmStatus is what a version holds of the node's warm budget.
type WarmStatus struct {
	Kind    string
	Bytes   uint64 // measured PSS (the estimate until measured)
	Since   time.Time
	LastUse time.Time
}

// status reports h when it holds room; nil otherwise.
func (h *warmHolder) status() *WarmStatus {
	if h == nil {
		return nil
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if !h.held {
		return nil
	}
	return &WarmStatus{Kind: h.info.Kind, Bytes: h.bytes, Since: h.since, LastUse: h.info.LastUse}
}

// WarmHolderStatus is one holder in a WarmSnapshot.
type WarmHolderStatus struct {
	Function string
	Version  int
	WarmStatus
}

// WarmSnapshot is the node's budget and what holds it.
type WarmSnapshot struct {
	Limit   uint64 // bytes
	Max     int    // holders
	Used    uint64 // bytes, measured
	Holders []WarmHolderStatus
}

// Snapshot measures every holder and reports the budget; holders are
// listed by function and version.
func (b *WarmBudget) Snapshot() WarmSnapshot {
	b.mu.Lock()
	hs := b.heldLocked(nil)
	b.mu.Unlock()
	measured := make([]uint64, len(hs))
	for i, h := range hs {
		measured[i] = h.measure()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := WarmSnapshot{Limit: b.cfg.Bytes, Max: b.cfg.Max}
	for i, h := range hs {
		if !h.held {
			continue
		}
		if measured[i] > 0 {
			b.measuredLocked(h, measured[i])
		}
		s.Used += h.bytes
		s.Holders = append(s.Holders, WarmHolderStatus{Function: h.info.Function, Version: h.info.Version,
			WarmStatus: WarmStatus{Kind: h.info.Kind, Bytes: h.bytes, Since: h.since, LastUse: h.info.LastUse}})
	}
	slices.SortFunc(s.Holders, func(a, b WarmHolderStatus) int {
		if c := strings.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		return a.Version - b.Version
	})
	return s
}

// treePSS is the PSS in bytes of pid and its descendants, except those skip
// names (and theirs); 0 when pid is gone.
func treePSS(pid int, skip func(pid int) bool) uint64 {
	var total uint64
	stack := []int{pid}
	for seen := 0; len(stack) > 0 && seen < 4096; seen++ {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if p != pid && skip != nil && skip(p) {
			continue
		}
		_, pss := ReadPSS(p)
		total += pss
		stack = append(stack, childPids(p)...)
	}
	return total
}

// childPids lists pid's children, from /proc/PID/task/*/children.
func childPids(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var kids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for f := range strings.FieldsSeq(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids
}

// Package cost prices a workload four ways: as AWS Lambda, as Cloud Run, as
// a dedicated always-on instance sized to its peak, and as ebb's own node.
// The workload is either measured (ebb's usage records) or described (a
// what-if). Prices come from a dated table that names its source; a file
// can override any of them. Everything here is arithmetic on its inputs: no
// clock, no I/O.
package cost

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DaysPerMonth is the month every monthly figure is for.
const DaysPerMonth = 30

const hoursPerMonth = DaysPerMonth * 24

// Prices is a price table.
type Prices struct {
	// AsOf and Source say when the prices were read, and where.
	AsOf   string `json:"as_of"`
	Source string `json:"source"`
	Lambda struct {
		GBSecond           float64 `json:"gb_second"`
		PerMillionRequests float64 `json:"per_million_requests"`
	} `json:"lambda"`
	CloudRun struct {
		VCPUSecond         float64 `json:"vcpu_second"`
		GiBSecond          float64 `json:"gib_second"`
		PerMillionRequests float64 `json:"per_million_requests"`
	} `json:"cloud_run"`
	// Dedicated are the always-on instances to size a workload to.
	Dedicated []Instance `json:"dedicated"`
}

// Instance is a dedicated instance type.
type Instance struct {
	Name      string  `json:"name"`
	VCPU      float64 `json:"vcpu"`
	MemoryGiB float64 `json:"memory_gib"`
	GPU       bool    `json:"gpu,omitempty"`
	PerHour   float64 `json:"per_hour"`
}

// Default is the built-in table: on-demand us-east-1 list prices, with
// Lambda's GB-second and the Cloud Run terms as in the worked example ebb's
// cost report is checked against (Lambda's list price is $0.0000166667 per
// GB-second, which the example rounds to $0.0000167; the example prices
// Cloud Run on vCPU- and GiB-seconds alone, leaving out its request fee of
// $0.40 per million beyond two million a month, so this table does too:
// an override file can set it). No free tier is applied: free tiers are
// per account, not per function.
func Default() Prices {
	var p Prices
	p.AsOf = "2024-06-01"
	p.Source = "AWS Lambda and Amazon SageMaker real-time inference on-demand pricing (us-east-1, x86); Google Cloud Run request-based billing (tier 1); as in the worked serverless cost example"
	p.Lambda.GBSecond = 0.0000167
	p.Lambda.PerMillionRequests = 0.20
	p.CloudRun.VCPUSecond = 0.000024
	p.CloudRun.GiBSecond = 0.0000025
	p.Dedicated = []Instance{
		{Name: "ml.m5.large", VCPU: 2, MemoryGiB: 8, PerHour: 0.115},
		{Name: "ml.m5.xlarge", VCPU: 4, MemoryGiB: 16, PerHour: 0.23},
		{Name: "ml.m5.2xlarge", VCPU: 8, MemoryGiB: 32, PerHour: 0.461},
		{Name: "ml.m5.4xlarge", VCPU: 16, MemoryGiB: 64, PerHour: 0.922},
		{Name: "ml.m5.12xlarge", VCPU: 48, MemoryGiB: 192, PerHour: 2.765},
		{Name: "ml.g4dn.xlarge", VCPU: 4, MemoryGiB: 16, GPU: true, PerHour: 0.7364},
		{Name: "ml.g4dn.2xlarge", VCPU: 8, MemoryGiB: 32, GPU: true, PerHour: 0.94},
		{Name: "ml.g5.xlarge", VCPU: 4, MemoryGiB: 16, GPU: true, PerHour: 1.408},
	}
	return p
}

// Override returns p with the fields that data (a JSON price table, whole
// or in part) sets replaced; a dedicated list in data replaces p's.
func Override(p Prices, data []byte) (Prices, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	kept := p.Dedicated
	p.Dedicated = nil // decoded into afresh, not over the old elements
	if err := dec.Decode(&p); err != nil {
		return p, fmt.Errorf("read prices: %w", err)
	}
	if p.Dedicated == nil {
		p.Dedicated = kept
	}
	return p, p.Validate()
}

// Validate reports the first price that cannot be right.
func (p *Prices) Validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"lambda.gb_second", p.Lambda.GBSecond}, {"lambda.per_million_requests", p.Lambda.PerMillionRequests},
		{"cloud_run.vcpu_second", p.CloudRun.VCPUSecond}, {"cloud_run.gib_second", p.CloudRun.GiBSecond},
		{"cloud_run.per_million_requests", p.CloudRun.PerMillionRequests}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("prices: %s must be a price of 0 or more", f.name)
		}
	}
	for i, in := range p.Dedicated {
		if in.Name == "" || in.VCPU <= 0 || in.MemoryGiB <= 0 || in.PerHour <= 0 || math.IsInf(in.PerHour, 0) {
			return fmt.Errorf("prices: dedicated[%d] needs a name, vcpu, memory_gib and per_hour above 0", i)
		}
	}
	return nil
}

// Workload is a month of traffic to price.
type Workload struct {
	// Requests is invocations a month.
	Requests float64 `json:"requests"`
	// DurationMS is the mean billed duration.
	DurationMS float64 `json:"duration_ms"`
	// MemoryMB is the memory each instance is given (MiB, as Lambda's
	// "MB").
	MemoryMB float64 `json:"memory_mb"`
	// VCPU is the vCPUs an instance needs; default 1.
	VCPU float64 `json:"vcpu"`
	// Concurrency is how many requests an instance serves at once (Cloud
	// Run's concurrency, ebb's); default 1.
	Concurrency int `json:"concurrency"`
	// BusySeconds is the time a month with at least one request running;
	// 0 means unknown (a what-if): requests × duration is used.
	BusySeconds float64 `json:"busy_seconds,omitempty"`
	// PeakConcurrency sizes the dedicated instance; 0 means unknown:
	// three times the mean concurrency, rounded up.
	PeakConcurrency int `json:"peak_concurrency"`
	// GPU says the model needs one.
	GPU bool `json:"gpu,omitempty"`
	// IdleMiBSeconds is the warm capacity ebb kept idle a month.
	IdleMiBSeconds float64 `json:"idle_mib_seconds,omitempty"`
}

// Node is ebb's own machine, for its share of the bill.
type Node struct {
	// PerHour is what the machine costs; 0 leaves the ebb estimate out.
	PerHour   float64 `json:"per_hour"`
	MemoryMiB float64 `json:"memory_mib"`
}

// Estimate is a workload priced four ways, monthly, in US dollars.
type Estimate struct {
	Workload  Workload  `json:"workload"`
	Lambda    Lambda    `json:"lambda"`
	CloudRun  CloudRun  `json:"cloud_run"`
	Dedicated Dedicated `json:"dedicated"`
	Ebb       *EbbNode  `json:"ebb,omitempty"`
	Prices    struct {
		AsOf   string `json:"as_of"`
		Source string `json:"source"`
	} `json:"prices"`
}

// Lambda is the AWS Lambda price.
type Lambda struct {
	MonthlyUSD  float64 `json:"monthly_usd"`
	ComputeUSD  float64 `json:"compute_usd"`
	RequestsUSD float64 `json:"requests_usd"`
	GBSeconds   float64 `json:"gb_seconds"`
}

// CloudRun is the Cloud Run price under request-based billing.
type CloudRun struct {
	MonthlyUSD      float64 `json:"monthly_usd"`
	VCPUUSD         float64 `json:"vcpu_usd"`
	MemoryUSD       float64 `json:"memory_usd"`
	RequestsUSD     float64 `json:"requests_usd"`
	InstanceSeconds float64 `json:"instance_seconds"`
	Concurrency     int     `json:"concurrency"`
	// AlwaysOnUSD is one instance kept warm all month (min instances 1).
	AlwaysOnUSD float64 `json:"always_on_usd"`
}

// Dedicated is the always-on instance sized to the peak.
type Dedicated struct {
	MonthlyUSD float64 `json:"monthly_usd"`
	Instance   string  `json:"instance"`
	Count      int     `json:"count"`
	// Utilisation is the share of the instance's time spent serving.
	Utilisation float64 `json:"utilisation"`
}

// EbbNode is the workload's share of ebb's node.
type EbbNode struct {
	MonthlyUSD float64 `json:"monthly_usd"`
	// NodeMonthlyUSD is the whole node; BusyUSD and IdleUSD the shares of
	// it (by memory-time) that ran the workload and that kept it warm
	// while idle.
	NodeMonthlyUSD float64 `json:"node_monthly_usd"`
	BusyUSD        float64 `json:"busy_usd"`
	IdleUSD        float64 `json:"idle_usd"`
}

// ErrNoInstance is returned when no dedicated instance in the table fits.
var ErrNoInstance = errors.New("no dedicated instance in the price table fits")

// Price prices w with p (and n, when its price is known).
func Price(w Workload, p Prices, n Node) (*Estimate, error) {
	if w.VCPU == 0 {
		w.VCPU = 1
	}
	if w.Concurrency == 0 {
		w.Concurrency = 1
	}
	if w.Requests < 0 || w.DurationMS < 0 || w.MemoryMB <= 0 || w.VCPU < 0 || w.Concurrency < 0 || w.BusySeconds < 0 {
		return nil, errors.New("price workload: requests and duration must be 0 or more, memory above 0")
	}
	e := &Estimate{Workload: w}
	e.Prices.AsOf, e.Prices.Source = p.AsOf, p.Source
	seconds := w.Requests * w.DurationMS / 1000 // handler-seconds

	e.Lambda.GBSeconds = seconds * w.MemoryMB / 1024
	e.Lambda.ComputeUSD = cents(e.Lambda.GBSeconds * p.Lambda.GBSecond)
	e.Lambda.RequestsUSD = cents(w.Requests / 1e6 * p.Lambda.PerMillionRequests)
	e.Lambda.MonthlyUSD = cents(e.Lambda.ComputeUSD + e.Lambda.RequestsUSD)

	// Request-based billing charges an instance while it serves at least
	// one request: with one request per instance that is every request's
	// time; with more, overlapping requests share it (the measured busy
	// time), but never less than the handler-seconds divided by how many
	// one instance takes.
	inst := seconds
	if w.Concurrency > 1 {
		inst = max(seconds/float64(w.Concurrency), w.BusySeconds)
		if w.BusySeconds == 0 {
			inst = seconds / float64(w.Concurrency)
		}
		inst = min(inst, seconds)
	}
	e.CloudRun.InstanceSeconds, e.CloudRun.Concurrency = inst, w.Concurrency
	e.CloudRun.VCPUUSD = cents(inst * w.VCPU * p.CloudRun.VCPUSecond)
	e.CloudRun.MemoryUSD = cents(inst * w.MemoryMB / 1024 * p.CloudRun.GiBSecond)
	e.CloudRun.RequestsUSD = cents(w.Requests / 1e6 * p.CloudRun.PerMillionRequests)
	e.CloudRun.MonthlyUSD = cents(e.CloudRun.VCPUUSD + e.CloudRun.MemoryUSD + e.CloudRun.RequestsUSD)
	e.CloudRun.AlwaysOnUSD = cents(hoursPerMonth * 3600 * (w.VCPU*p.CloudRun.VCPUSecond + w.MemoryMB/1024*p.CloudRun.GiBSecond))

	peak := w.PeakConcurrency
	if peak <= 0 {
		mean := seconds / (hoursPerMonth * 3600)
		peak = max(1, int(math.Ceil(3*mean)))
	}
	e.Workload.PeakConcurrency = peak
	in, count, err := size(p.Dedicated, peak, w)
	if err != nil {
		return nil, err
	}
	e.Dedicated = Dedicated{Instance: in.Name, Count: count, MonthlyUSD: cents(float64(count) * in.PerHour * hoursPerMonth),
		Utilisation: math.Round(seconds/(hoursPerMonth*3600)/float64(peak)*1000) / 1000}

	if n.PerHour > 0 && n.MemoryMiB > 0 {
		node := n.PerHour * hoursPerMonth
		month := n.MemoryMiB * hoursPerMonth * 3600 // MiB-seconds the node has a month
		busy := node * (seconds * w.MemoryMB) / month
		idle := node * w.IdleMiBSeconds / month
		e.Ebb = &EbbNode{NodeMonthlyUSD: cents(node), BusyUSD: cents(busy), IdleUSD: cents(idle), MonthlyUSD: cents(busy + idle)}
	}
	return e, nil
}

// size picks the cheapest way to hold peak requests at once: the cheapest
// instance type (GPU ones only when a GPU is needed) times the fewest of it
// that give each request its vCPU and memory.
func size(types []Instance, peak int, w Workload) (Instance, int, error) {
	needCPU, needMiB := float64(peak)*w.VCPU/float64(w.Concurrency), float64(peak)*w.MemoryMB
	needCPU = max(needCPU, w.VCPU)
	var best Instance
	bestCount, bestCost := 0, math.Inf(1)
	for _, in := range types {
		if in.GPU != w.GPU || in.VCPU < w.VCPU || in.MemoryGiB*1024 < w.MemoryMB {
			continue
		}
		count := int(max(math.Ceil(needCPU/in.VCPU), math.Ceil(needMiB/(in.MemoryGiB*1024)), 1))
		if c := float64(count) * in.PerHour; c < bestCost {
			best, bestCount, bestCost = in, count, c
		}
	}
	if bestCount == 0 {
		return best, 0, fmt.Errorf("%w: %g vCPU and %g MiB per request%s", ErrNoInstance, w.VCPU, w.MemoryMB, map[bool]string{true: " with a GPU"}[w.GPU])
	}
	return best, bestCount, nil
}

// cents rounds to the cent, half away from zero.
func cents(usd float64) float64 { return math.Round(usd*100) / 100 }

// ParseWhatIf reads a described workload: comma-separated key=value pairs
// with keys requests_per_day, duration_ms, memory_mb, vcpu, concurrency,
// peak_concurrency and gpu.
func ParseWhatIf(s string) (Workload, error) {
	var w Workload
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return w, fmt.Errorf("what-if: %q is not key=value", kv)
		}
		if seen[k] {
			return w, fmt.Errorf("what-if: %s is given twice", k)
		}
		seen[k] = true
		if k == "gpu" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return w, fmt.Errorf("what-if: gpu=%q is not true or false", v)
			}
			w.GPU = b
			continue
		}
		switch k {
		case "requests_per_day", "duration_ms", "memory_mb", "vcpu", "concurrency", "peak_concurrency":
		default:
			return w, fmt.Errorf("what-if: unknown key %q (requests_per_day, duration_ms, memory_mb, vcpu, concurrency, peak_concurrency, gpu)", k)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > 1e15 {
			return w, fmt.Errorf("what-if: %s=%q is not a number of 0 or more", k, v)
		}
		switch k {
		case "requests_per_day":
			w.Requests = f * DaysPerMonth
		case "duration_ms":
			w.DurationMS = f
		case "memory_mb":
			w.MemoryMB = f
		case "vcpu":
			w.VCPU = f
		case "concurrency", "peak_concurrency":
			if f != math.Trunc(f) || f > 1e6 {
				return w, fmt.Errorf("what-if: %s=%q is not a whole number", k, v)
			}
			if k == "concurrency" {
				w.Concurrency = int(f)
			} else {
				w.PeakConcurrency = int(f)
			}
		}
	}
	var missing []string
	for _, k := range []string{"requests_per_day", "duration_ms", "memory_mb"} {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return w, fmt.Errorf("what-if: %s missing", strings.Join(missing, ", "))
	}
	if w.MemoryMB == 0 {
		return w, errors.New("what-if: memory_mb must be above 0")
	}
	if seen["concurrency"] && w.Concurrency == 0 {
		return w, errors.New("what-if: concurrency must be 1 or more")
	}
	return w, nil
}

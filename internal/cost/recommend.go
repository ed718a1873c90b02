package cost

import (
	"fmt"
	"math"
)

// Shape is how traffic is spread over time.
type Shape struct {
	// Kind is "constant", "bursty", "idle" (no traffic) or "unknown" (a
	// what-if, or too few points).
	Kind string `json:"kind"`
	// CV is the coefficient of variation of requests per step; Active the
	// share of steps with any.
	CV     float64 `json:"cv"`
	Active float64 `json:"active"`
	Steps  int     `json:"steps"`
}

// ShapeOf classifies a series of request counts per step: traffic is
// constant when nearly every step has some and the counts vary little
// (CV < 0.5), bursty otherwise. Fewer than 12 steps tell nothing.
func ShapeOf(counts []float64) Shape {
	s := Shape{Kind: "unknown", Steps: len(counts)}
	if len(counts) < 12 {
		return s
	}
	var sum, active float64
	for _, c := range counts {
		sum += c
		if c > 0 {
			active++
		}
	}
	if sum == 0 {
		s.Kind = "idle"
		return s
	}
	mean := sum / float64(len(counts))
	var v float64
	for _, c := range counts {
		v += (c - mean) * (c - mean)
	}
	s.CV = math.Round(math.Sqrt(v/float64(len(counts)))/mean*100) / 100
	s.Active = math.Round(active/float64(len(counts))*100) / 100
	if s.Active >= 0.9 && s.CV < 0.5 {
		s.Kind = "constant"
	} else {
		s.Kind = "bursty"
	}
	return s
}

// Needs are what the workload demands beyond its traffic.
type Needs struct {
	// ModelMB is the model's size; 0 unknown.
	ModelMB float64 `json:"model_mb"`
	// P99TargetMS is the latency the callers need at the 99th percentile;
	// 0 none.
	P99TargetMS float64 `json:"p99_target_ms"`
	// P99MS and ColdStartP99MS are measured: the handler's p99 and cold
	// starts' init p99 (0: unknown).
	P99MS          float64 `json:"p99_ms"`
	ColdStartP99MS float64 `json:"cold_start_p99_ms"`
	// ColdShare is the share of requests that were cold.
	ColdShare float64 `json:"cold_share"`
	GPU       bool    `json:"gpu"`
	Shape     Shape   `json:"shape"`
}

// Recommendation is the choice with the numbers that drove it.
type Recommendation struct {
	Choice  string   `json:"choice"`
	Reasons []string `json:"reasons"`
}

// Serverless platforms' limits that rule them out.
const (
	lambdaMaxMemoryMB = 10240 // Lambda's largest function memory (and image size, in MB)
	// utilisationForDedicated is the busy share from which an always-on
	// instance usually wins.
	utilisationForDedicated = 0.6
)

// Recommend follows the decision framework for serving a model: GPU need
// and model size rule platforms out; a p99 target that cold starts break on
// bursty traffic needs warm capacity; constant, well-used traffic favours an
// always-on instance; otherwise scale-to-zero serverless, the cheapest of
// what is left.
func Recommend(e *Estimate, n Needs) Recommendation {
	var r Recommendation
	say := func(format string, args ...any) { r.Reasons = append(r.Reasons, fmt.Sprintf(format, args...)) }
	ded := fmt.Sprintf("dedicated %d× %s", e.Dedicated.Count, e.Dedicated.Instance)

	if n.GPU {
		say("the model needs a GPU: Lambda and CPU Cloud Run offer none")
		r.Choice = ded + " (or ebb on a GPU node)"
		say("%s costs $%.2f a month", ded, e.Dedicated.MonthlyUSD)
		return r
	}
	if n.ModelMB > lambdaMaxMemoryMB || e.Workload.MemoryMB > lambdaMaxMemoryMB {
		say("model %.0f MB / memory %.0f MB exceed Lambda's %d MB", n.ModelMB, e.Workload.MemoryMB, lambdaMaxMemoryMB)
		r.Choice = ded
		say("%s costs $%.2f a month", ded, e.Dedicated.MonthlyUSD)
		return r
	}
	if e.Workload.Requests == 0 {
		r.Choice = "serverless, scaled to zero (ebb or Lambda)"
		say("no traffic in the period: an always-on instance would cost $%.2f a month for nothing", e.Dedicated.MonthlyUSD)
		return r
	}
	coldBreaksTarget := n.P99TargetMS > 0 && n.ColdStartP99MS > 0 && n.ColdStartP99MS+n.P99MS > n.P99TargetMS
	if n.P99TargetMS > 0 && n.P99MS > n.P99TargetMS {
		say("warm p99 %.0f ms is over the %.0f ms target: no platform meets it without a faster model or more vCPU", n.P99MS, n.P99TargetMS)
	}
	if coldBreaksTarget && n.Shape.Kind == "bursty" {
		say("cold starts (p99 %.0f ms, %.1f%% of requests) break the p99 target of %.0f ms on bursty traffic (active in %.0f%% of steps)",
			n.ColdStartP99MS, n.ColdShare*100, n.P99TargetMS, n.Shape.Active*100)
		r.Choice = "serverless with warm capacity: ebb min_instances: 1 (Lambda provisioned concurrency)"
		say("one warm instance costs about $%.2f a month on Cloud Run rates; %s $%.2f", e.CloudRun.AlwaysOnUSD, ded, e.Dedicated.MonthlyUSD)
		return r
	}
	cheapest, price := "Lambda", e.Lambda.MonthlyUSD
	if e.CloudRun.MonthlyUSD < price {
		cheapest, price = "Cloud Run", e.CloudRun.MonthlyUSD
	}
	if e.Ebb != nil && e.Ebb.MonthlyUSD < price {
		cheapest, price = "ebb on this node", e.Ebb.MonthlyUSD
	}
	switch {
	case n.Shape.Kind == "constant" && (e.Dedicated.Utilisation >= utilisationForDedicated || e.Dedicated.MonthlyUSD < price):
		say("traffic is constant (active in %.0f%% of steps, CV %.2f) and would keep an always-on instance %.0f%% busy",
			n.Shape.Active*100, n.Shape.CV, e.Dedicated.Utilisation*100)
		r.Choice = ded
	case e.Dedicated.MonthlyUSD < price:
		say("%s ($%.2f) is cheaper than the cheapest serverless option, %s ($%.2f)", ded, e.Dedicated.MonthlyUSD, cheapest, price)
		r.Choice = ded
	default:
		switch n.Shape.Kind {
		case "bursty":
			say("traffic is bursty (active in %.0f%% of steps, CV %.2f): scale to zero pays only for use", n.Shape.Active*100, n.Shape.CV)
		case "unknown":
			say("traffic shape unknown (a described workload): priced as steady")
		}
		say("an always-on instance would be %.0f%% busy", e.Dedicated.Utilisation*100)
		r.Choice = cheapest
	}
	say("monthly: Lambda $%.2f, Cloud Run $%.2f, %s $%.2f%s", e.Lambda.MonthlyUSD, e.CloudRun.MonthlyUSD, ded, e.Dedicated.MonthlyUSD, ebbPart(e))
	return r
}

func ebbPart(e *Estimate) string {
	if e.Ebb == nil {
		return ""
	}
	return fmt.Sprintf(", ebb $%.2f (of which idle warm capacity $%.2f)", e.Ebb.MonthlyUSD, e.Ebb.IdleUSD)
}

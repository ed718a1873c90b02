package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/cost"
	meter "github.com/ebb-run/ebb/internal/usage"
)

func runUsage(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("usage", flag.ContinueOnError)
	mk := clientFlags(fs)
	since := fs.String("since", "24h", "from when: a duration back (90m, 24h, 30d) or an RFC 3339 time")
	step := fs.String("step", "", "width of the series' points (1m, 1h); default: about 120 points or fewer")
	asJSON := fs.Bool("json", false, "print JSON, with the series")
	series := fs.Bool("series", false, "print the series too")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: ebb usage NAME [--since 24h] [--step 1h] [--series] [--json]")
	}
	r, err := mk().Usage(ctx, pos[0], *since, *step)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	if *asJSON {
		return printJSON(r)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "function\t%s\n", r.Function)
	fmt.Fprintf(tw, "period\t%s to %s\n", r.Since.Local().Format(time.DateTime), r.Until.Local().Format(time.DateTime))
	fmt.Fprintf(tw, "invocations\t%d (%s)\n", r.Invocations, triggers(r.Triggers))
	fmt.Fprintf(tw, "errors\t%d\n", r.Errors)
	fmt.Fprintf(tw, "cold starts\t%d (init p50 %s ms, p99 %s ms)\n", r.ColdStarts, num(r.ColdStart.P50), num(r.ColdStart.P99))
	fmt.Fprintf(tw, "duration\tp50 %s ms, p95 %s ms, p99 %s ms\n", num(r.Duration.P50), num(r.Duration.P95), num(r.Duration.P99))
	fmt.Fprintf(tw, "billed\t%d ms, %s GB-s\n", r.BilledMS, num(r.GBSeconds))
	fmt.Fprintf(tw, "busy\t%s s, at most %d at once\n", num(r.BusySeconds), r.Peak)
	fmt.Fprintf(tw, "idle warm memory\t%s MiB-s\n", num(r.IdleMiBs))
	if err := tw.Flush(); err != nil || !*series {
		return err
	}
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TIME\tINVOCATIONS\tERRORS\tCOLD\tP50 MS\tP99 MS\tGB-S\tIDLE MIB-S\t")
	for _, p := range r.Series {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", p.Time.Local().Format("01-02 15:04"), p.Invocations, p.Errors,
			p.ColdStarts, num(p.P50MS), num(p.P99MS), num(p.GBSeconds), num(p.IdleMiBs))
	}
	return tw.Flush()
}

func triggers(m map[string]uint64) string {
	var parts []string
	for _, k := range []ebb.Trigger{ebb.TriggerSync, ebb.TriggerAsync, ebb.TriggerSchedule, ebb.TriggerEvent, ebb.TriggerShadow} {
		if n := m[string(k)]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// num prints a float without trailing zeros, to three decimals at most.
func num(f float64) string {
	s := fmt.Sprintf("%.3f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		return "0"
	}
	return s
}

func runCost(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cost", flag.ContinueOnError)
	mk := clientFlags(fs)
	since := fs.String("since", "30d", "the traffic to price: a duration back (30d, 24h) or an RFC 3339 time")
	asJSON := fs.Bool("json", false, "print JSON")
	whatIf := fs.String("what-if", "", "price a described workload instead: requests_per_day=…,duration_ms=…,memory_mb=…[,vcpu=…,concurrency=…,peak_concurrency=…,gpu=true]")
	pricesFile := fs.String("prices", "", "a JSON file overriding the built-in price table (any of its fields)")
	nodeCost := fs.Float64("node-cost-per-hour", 0, "what this ebb node costs an hour (USD), to price its share")
	nodeMem := fs.Int64("node-memory-mib", 0, "the node's memory for --what-if (observed traffic asks the server)")
	p99 := fs.Duration("p99-target", 0, "the latency callers need at the 99th percentile, for the recommendation")
	modelMB := fs.Float64("model-size-mb", 0, "the model's size in MB, for the recommendation (default: an onnx function's bundle size)")
	gpu := fs.Bool("gpu", false, "the model needs a GPU")
	vcpu := fs.Float64("vcpu", 1, "vCPUs an instance of the function needs (observed traffic)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 || (*whatIf != "" && len(pos) > 0) {
		return errors.New("usage: ebb cost [NAME] [--since 30d] [--json] | ebb cost --what-if requests_per_day=…,duration_ms=…,memory_mb=…")
	}
	if *nodeCost < 0 || *nodeMem < 0 || *modelMB < 0 || *vcpu <= 0 || math.IsInf(*nodeCost, 0) {
		return errors.New("cost: --node-cost-per-hour, --node-memory-mib and --model-size-mb must be 0 or more, --vcpu above 0")
	}
	prices := cost.Default()
	if *pricesFile != "" {
		data, err := os.ReadFile(*pricesFile)
		if err != nil {
			return fmt.Errorf("cost: %w", err)
		}
		if prices, err = cost.Override(prices, data); err != nil {
			return fmt.Errorf("cost: %s: %w", *pricesFile, err)
		}
	}
	var rep cost.Report
	var w cost.Workload
	node := cost.Node{PerHour: *nodeCost, MemoryMiB: float64(*nodeMem)}
	if *whatIf != "" {
		if w, err = cost.ParseWhatIf(*whatIf); err != nil {
			return fmt.Errorf("cost: %w", err)
		}
	} else {
		c := mk()
		all, err := c.AllUsage(ctx, *since)
		if err != nil {
			return fmt.Errorf("cost: %w", err)
		}
		if node.MemoryMiB == 0 {
			node.MemoryMiB = float64(all.Node.MemoryMiB)
		}
		name := ""
		if len(pos) == 1 {
			name = pos[0]
		}
		if w, err = observe(ctx, c, all, name, *since, &rep); err != nil {
			return fmt.Errorf("cost: %w", err)
		}
		w.VCPU = *vcpu
		rep.Function = name
	}
	rep.Needs.ModelMB = max(rep.Needs.ModelMB, *modelMB)
	rep.Needs.P99TargetMS, rep.Needs.GPU = float64(*p99)/float64(time.Millisecond), *gpu
	w.GPU = w.GPU || *gpu
	if rep.Needs.Shape.Kind == "" {
		rep.Needs.Shape.Kind = "unknown"
	}
	if rep.Estimate, err = cost.Price(w, prices, node); err != nil {
		return fmt.Errorf("cost: %w", err)
	}
	rep.Recommendation = cost.Recommend(rep.Estimate, rep.Needs)
	if rep.Observed != nil {
		td := cost.Back(rep.Estimate, *rep.Observed)
		rep.ToDate = &td
	}
	if *asJSON {
		return printJSON(rep)
	}
	printCost(&rep)
	return nil
}

// observe turns measured usage into a month's workload. Without a name,
// every function's traffic is priced as one workload.
func observe(ctx context.Context, c *client.Client, all *api.UsageAll, name, since string, rep *cost.Report) (cost.Workload, error) {
	var reps []meter.Report
	for _, r := range all.Functions {
		if name == "" || r.Function == name {
			reps = append(reps, r)
		}
	}
	var st *api.FunctionStatus
	if name != "" {
		var err error
		if st, err = c.Status(ctx, name); err != nil {
			return cost.Workload{}, err
		}
		r, err := c.Usage(ctx, name, since, cost.SeriesStep(all.Until.Sub(all.Since)).String())
		if err != nil {
			return cost.Workload{}, err
		}
		reps = []meter.Report{*r}
	}
	w, needs, ob, err := cost.FromUsage(reps, all.Since, all.Until)
	if err != nil {
		return w, err
	}
	if st != nil {
		w.MemoryMB, w.Concurrency = float64(st.Spec.Memory), max(st.Spec.Concurrency, 1)
		if st.Runtime == ebb.RuntimeONNX {
			needs.ModelMB = float64(st.Size) / 1e6
		}
	}
	rep.Needs, rep.Observed = needs, &ob
	return w, nil
}

func printCost(r *cost.Report) {
	e, w := r.Estimate, &r.Estimate.Workload
	if r.Observed != nil {
		what := "all functions"
		if r.Function != "" {
			what = r.Function
		}
		fmt.Printf("%s: %d invocations from %s to %s, priced as a 30-day month (× %s)\n", what, r.Observed.Invocations,
			r.Observed.Since.Local().Format(time.DateTime), r.Observed.Until.Local().Format(time.DateTime), num(r.Observed.Scale))
	}
	fmt.Printf("workload: %s requests a month, %s ms each, %s MB, %s vCPU, concurrency %d, peak %d at once\n",
		num(math.Round(w.Requests)), num(w.DurationMS), num(w.MemoryMB), num(w.VCPU), w.Concurrency, w.PeakConcurrency)
	fmt.Printf("prices as of %s: %s\n\n", e.Prices.AsOf, e.Prices.Source)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tMONTHLY\tBREAKDOWN")
	fmt.Fprintf(tw, "Lambda\t$%.2f\tcompute $%.2f (%s GB-s), requests $%.2f\n", e.Lambda.MonthlyUSD, e.Lambda.ComputeUSD, num(e.Lambda.GBSeconds), e.Lambda.RequestsUSD)
	fmt.Fprintf(tw, "Cloud Run\t$%.2f\tvCPU $%.2f, memory $%.2f, requests $%.2f (%s instance-s at concurrency %d)\n", e.CloudRun.MonthlyUSD,
		e.CloudRun.VCPUUSD, e.CloudRun.MemoryUSD, e.CloudRun.RequestsUSD, num(math.Round(e.CloudRun.InstanceSeconds)), e.CloudRun.Concurrency)
	fmt.Fprintf(tw, "%s ×%d\t$%.2f\talways on, %s%% busy\n", e.Dedicated.Instance, e.Dedicated.Count, e.Dedicated.MonthlyUSD, num(e.Dedicated.Utilisation*100))
	if e.Ebb != nil {
		fmt.Fprintf(tw, "ebb (this node)\t$%.2f\tbusy $%.2f, idle warm capacity $%.2f, of the node's $%.2f\n", e.Ebb.MonthlyUSD, e.Ebb.BusyUSD, e.Ebb.IdleUSD, e.Ebb.NodeMonthlyUSD)
	} else {
		fmt.Fprintln(tw, "ebb (this node)\t-\tgive --node-cost-per-hour to price it")
	}
	tw.Flush()
	if td := r.ToDate; td != nil {
		fmt.Printf("\nthe period itself: Lambda $%.2f, Cloud Run $%.2f, %s $%.2f", td.LambdaUSD, td.CloudRunUSD, e.Dedicated.Instance, td.DedicatedUSD)
		if td.EbbUSD != nil {
			fmt.Printf(", ebb $%.2f", *td.EbbUSD)
		}
		fmt.Println()
	}
	fmt.Printf("\nrecommendation: %s\n", r.Recommendation.Choice)
	for _, s := range r.Recommendation.Reasons {
		fmt.Printf("  - %s\n", s)
	}
}

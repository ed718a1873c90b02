package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
)

// runMonitor is `ebb monitor NAME`: per-feature summaries and drift.
func runMonitor(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("monitor", flag.ContinueOnError)
	mk := clientFlags(fs)
	since := fs.String("since", "1h", "from when: a duration back (1h) or an RFC 3339 time")
	until := fs.String("until", "", "until when (default now)")
	version := fs.Int("version", 0, "the version (default the newest)")
	baseVersion := fs.Int("baseline-version", 0, "compare with this version")
	baseSince := fs.String("baseline-since", "", "compare with this period (default: the period before --since)")
	baseUntil := fs.String("baseline-until", "", "end of the baseline period")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: ebb monitor NAME [--since 1h] [--version N] [--baseline-version M | --baseline-since T [--baseline-until T]]")
	}
	q := url.Values{}
	set := func(k, v string) {
		if v != "" && v != "0" {
			q.Set(k, v)
		}
	}
	set("since", *since)
	set("until", *until)
	set("version", strconv.Itoa(*version))
	set("baseline_version", strconv.Itoa(*baseVersion))
	set("baseline_since", *baseSince)
	set("baseline_until", *baseUntil)
	rep, err := mk().Monitor(ctx, pos[0], q)
	if err != nil {
		return fmt.Errorf("monitor: %w", err)
	}
	if *asJSON {
		return printJSON(rep)
	}
	base := "none"
	if rep.Baseline != nil {
		base = fmt.Sprintf("version %d, %d events", rep.Baseline.Version, rep.Baseline.Events)
	}
	fmt.Printf("%s version %d: %d events; baseline %s; max PSI %s\n", rep.Function, rep.Version, rep.Events, base, psiText(rep.MaxPSI))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tCOUNT\tMEAN\tSTD\tMIN\tMAX\tBASELINE MEAN\tPSI")
	for _, f := range rep.Features {
		fmt.Fprintf(tw, "%s\t%d\t%.4g\t%.4g\t%.4g\t%.4g\t%.4g\t%s\n", f.Name, f.Count, f.Mean, f.Std, f.Min, f.Max, f.BaselineMean, psiText(f.PSI))
	}
	for _, c := range rep.Classes {
		fmt.Fprintf(tw, "%s (classes)\t%v\t\t\t\t\t%v\t%s\n", c.Name, c.Counts, c.BaselineCounts, psiText(c.PSI))
	}
	return tw.Flush()
}

func psiText(p *float64) string {
	switch {
	case p == nil:
		return "-"
	case *p >= 0.25:
		return fmt.Sprintf("%.3f (major shift)", *p)
	case *p >= 0.1:
		return fmt.Sprintf("%.3f (moderate shift)", *p)
	}
	return fmt.Sprintf("%.3f", *p)
}

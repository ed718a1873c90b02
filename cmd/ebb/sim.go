package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ebb-run/ebb/internal/keepalive"
	"github.com/ebb-run/ebb/internal/keepalive/sim"
	"github.com/ebb-run/ebb/internal/keepalive/trace"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// runSim replays Azure Functions 2019 traces through keep-alive policies
// (ebb sim --trace FILE… --policy P…), or writes a synthetic trace
// (ebb sim --synthesize N --seed S OUT).
func runSim(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var traces, policies listFlag
	fs.Var(&traces, "trace", "invocations file (HashOwner,HashApp,HashFunction,Trigger,1..1440), one per day, in order; repeatable")
	memory := fs.String("memory", "", "memory file (HashOwner,HashApp,AverageAllocatedMb); without it every app weighs 1")
	fs.Var(&policies, "policy", "keep-alive policy: fixed:DURATION, hybrid or hybrid:key=value,…; repeatable (fixed:10m is always simulated as the baseline)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	synth := fs.Int("synthesize", 0, "write a synthetic trace of N apps to the directory OUT instead")
	seed := fs.Uint64("seed", 1, "--synthesize: random seed (the same seed writes the same trace)")
	days := fs.Int("days", 2, "--synthesize: days to write")
	mix := fs.String("mix", trace.MixPaper, "--synthesize: paper (the distributions Shahrad et al. measured) or poisson-rare (a third of the apps rare and Poisson, a stress case)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *synth != 0 {
		if len(pos) != 1 {
			return errors.New("sim --synthesize N: want one OUT directory")
		}
		if *synth < 0 || *days < 1 || *days > 14 {
			return errors.New("sim --synthesize: N must be positive and --days 1..14")
		}
		return synthesize(pos[0], *mix, *synth, *days, *seed)
	}
	if len(pos) > 0 {
		return fmt.Errorf("sim: unexpected argument %q", pos[0])
	}
	if len(traces) == 0 {
		return errors.New("sim: --trace FILE is required (or --synthesize N OUT)")
	}
	if len(policies) == 0 {
		policies = listFlag{"hybrid"}
	}
	var ps []keepalive.Policy
	for _, s := range policies {
		p, err := keepalive.Parse(s)
		if err != nil {
			return fmt.Errorf("sim: --policy: %w", err)
		}
		ps = append(ps, p)
	}
	tr := trace.New()
	for _, name := range traces {
		if err := readInto(name, func(f *os.File) error { return tr.ReadDay(f, name) }); err != nil {
			return err
		}
	}
	var mem map[trace.AppKey]float64
	if *memory != "" {
		if err := readInto(*memory, func(f *os.File) error {
			mem, err = trace.ReadMemory(f, *memory)
			return err
		}); err != nil {
			return err
		}
	}
	rep := sim.Run(tr.Apps(), tr.Minutes(), tr.Days(), mem, ps)
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Print(rep.Text())
	return nil
}

func readInto(name string, read func(*os.File) error) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	defer f.Close()
	if err := read(f); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	return nil
}

// synthesize writes OUT/invocations.dNN.csv for each day and OUT/memory.csv.
func synthesize(out, mix string, apps, days int, seed uint64) error {
	s, err := trace.SynthesizeNamed(mix, apps, days, seed)
	if err != nil {
		return fmt.Errorf("sim --mix: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	write := func(name string, w func(*os.File) error) error {
		f, err := os.Create(filepath.Join(out, name))
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		if err := w(f); err != nil {
			f.Close()
			return fmt.Errorf("sim: write %s: %w", f.Name(), err)
		}
		return f.Close()
	}
	var files []string
	for d := range days {
		name := fmt.Sprintf("invocations.d%02d.csv", d+1)
		if err := write(name, func(f *os.File) error { return s.WriteDay(f, d) }); err != nil {
			return err
		}
		files = append(files, "--trace "+filepath.Join(out, name))
	}
	if err := write("memory.csv", func(f *os.File) error { return s.WriteMemory(f) }); err != nil {
		return err
	}
	st := s.Stats()
	fmt.Printf("wrote %d apps over %d day(s) to %s (mix %s): %.0f%% invoked at most once an hour, %.0f%% at most once a minute (paper: 45%%, 81%%); of the %d apps invoked at most once a minute with 2 or more inter-arrival times (minute resolution), %.0f%% have a CV above 1, %.0f%% at most 0.05 (paper, Figure 6: 43%%, about 24%%)\n",
		apps, days, out, mix, 100*st.PerHour, 100*st.PerMinute, st.CVApps, 100*st.CVAbove1, 100*st.CVPeriodic)
	fmt.Printf("replay: ebb sim %s --memory %s --policy hybrid\n", strings.Join(files, " "), filepath.Join(out, "memory.csv"))
	return nil
}

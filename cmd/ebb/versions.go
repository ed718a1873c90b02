package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/shadow"
)

// splitString writes shares as "3=90 4=10".
func splitString(s ebb.Split) string {
	parts := make([]string, 0, len(s))
	for _, w := range s {
		parts = append(parts, fmt.Sprintf("%d=%d%%", w.Version, w.Percent))
	}
	return strings.Join(parts, " ")
}

// printVersions prints a function's versions and routes, or its JSON.
func printVersions(vs *api.Versions, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(vs)
	}
	fmt.Printf("%s  route %s", vs.Name, splitString(vs.Route))
	if vs.Rollback != 0 {
		fmt.Printf("  (rollback: %d)", vs.Rollback)
	}
	fmt.Println()
	if sh := vs.Shadow; sh != nil {
		fmt.Printf("  shadow → version %d (%d%% mirrored)\n", sh.Version, sh.Percent)
	}
	for _, a := range vs.Aliases {
		fmt.Printf("  alias %s → %s\n", a.Name, splitString(a.Split))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tTRAFFIC\tALIASES\tRUNTIME\tDIGEST\tDEPLOYED\tINVOCATIONS\tERRORS\tCOLD\tP50 MS\tP99 MS")
	for _, v := range vs.Versions {
		aliases := strings.Join(v.Aliases, ",")
		if aliases == "" {
			aliases = "-"
		}
		fmt.Fprintf(tw, "%d\t%d%%\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%.2f\t%.2f\n", v.Version, v.Percent, aliases, v.Runtime, v.Digest[:12],
			v.DeployedAt.Local().Format(time.DateTime), v.Invocations, v.Errors, v.ColdStarts, v.P50MS, v.P99MS)
	}
	return tw.Flush()
}

func runVersions(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("versions", flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ebb versions NAME [--json]")
	}
	vs, err := mk().Versions(ctx, pos[0])
	if err != nil {
		return err
	}
	return printVersions(vs, *asJSON)
}

// runTraffic serves promote, rollback and route.
func runTraffic(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	var vs *api.Versions
	switch {
	case cmd == "route" && len(pos) >= 2:
		s, perr := ebb.ParseSplit(pos[1:])
		if perr != nil {
			return perr
		}
		vs, err = mk().SetRoute(ctx, pos[0], s)
	case cmd == "route":
		return fmt.Errorf("usage: ebb route NAME VERSION=PERCENT... (e.g. ebb route fn 3=90 4=10)")
	case len(pos) != 1:
		return fmt.Errorf("usage: ebb %s NAME", cmd)
	case cmd == "promote":
		vs, err = mk().Promote(ctx, pos[0])
	default:
		vs, err = mk().Rollback(ctx, pos[0])
	}
	if err != nil {
		return err
	}
	return printVersions(vs, *asJSON)
}

func runAlias(ctx context.Context, args []string) error {
	const usage = "usage: ebb alias set NAME ALIAS VERSION [--weight V=P]... | ls NAME | rm NAME ALIAS"
	if len(args) == 0 {
		return fmt.Errorf(usage)
	}
	fs := flag.NewFlagSet("alias "+args[0], flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	var weights []string
	if args[0] == "set" {
		fs.Func("weight", "give another version a share: V=P (repeatable); the alias's version keeps the rest", func(s string) error {
			weights = append(weights, s)
			return nil
		})
	}
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	var vs *api.Versions
	switch {
	case args[0] == "set" && len(pos) == 3:
		v, err := strconv.Atoi(pos[2])
		if err != nil || v < 1 {
			return fmt.Errorf("%q is not a version number", pos[2])
		}
		extra, err := ebb.ParseSplit(weights)
		if err != nil {
			return fmt.Errorf("--weight: %w", err)
		}
		rest := 100
		for _, w := range extra {
			rest -= w.Percent
		}
		s := append(ebb.Split{{Version: v, Percent: rest}}, extra...)
		vs, err = mk().SetAlias(ctx, pos[0], pos[1], s)
		if err != nil {
			return err
		}
	case (args[0] == "ls" || args[0] == "list") && len(pos) == 1:
		if vs, err = mk().Versions(ctx, pos[0]); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(vs.Aliases)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ALIAS\tVERSIONS\tADDRESS")
		for _, a := range vs.Aliases {
			fmt.Fprintf(tw, "%s\t%s\t%s:%s\n", a.Name, splitString(a.Split), vs.Name, a.Name)
		}
		return tw.Flush()
	case (args[0] == "rm" || args[0] == "remove") && len(pos) == 2:
		if vs, err = mk().RemoveAlias(ctx, pos[0], pos[1]); err != nil {
			return err
		}
	default:
		return fmt.Errorf(usage)
	}
	return printVersions(vs, *asJSON)
}

func runShadow(ctx context.Context, args []string) error {
	const usage = "usage: ebb shadow NAME --version N --percent P [--tolerance 1e-6] | ebb shadow report NAME [--json] | ebb shadow stop NAME"
	sub := ""
	if len(args) > 0 && (args[0] == "report" || args[0] == "stop") {
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("shadow", flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	version := fs.Int("version", 0, "the version that gets the mirrored requests")
	percent := fs.Int("percent", 100, "the share of unqualified requests mirrored")
	tolerance := fs.Float64("tolerance", ebb.DefaultShadowTolerance, "relative difference under which numbers agree")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf(usage)
	}
	c := mk()
	var rep *shadow.Report
	switch sub {
	case "report":
		rep, err = c.ShadowReport(ctx, pos[0])
	case "stop":
		rep, err = c.StopShadow(ctx, pos[0])
	default:
		if *version < 1 {
			return fmt.Errorf("--version is required\n%s", usage)
		}
		rep, err = c.SetShadow(ctx, pos[0], ebb.Shadow{Version: *version, Percent: *percent, Tolerance: tolerance})
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(rep)
	}
	state := "stopped"
	if rep.Active {
		state = "running"
	}
	fmt.Printf("shadow of %s: version %d, %d%% mirrored, tolerance %g (%s since %s)\n", pos[0], rep.Version, rep.Percent, rep.Tol(),
		state, rep.Since.Local().Format(time.DateTime))
	fmt.Printf("  mirrored %d: equal %d, differ %d, shadow errors %d (dropped %d)\n", rep.Mirrored, rep.Equal, rep.Differ, rep.ShadowErrors, rep.Dropped)
	fmt.Printf("  latency  primary p50 %.2f ms, p99 %.2f ms; shadow p50 %.2f ms, p99 %.2f ms\n", rep.PrimaryP50MS, rep.PrimaryP99MS, rep.ShadowP50MS, rep.ShadowP99MS)
	for _, e := range rep.Examples {
		switch {
		case e.Error != "":
			fmt.Printf("  %s  shadow error: %s\n", e.RequestID, e.Error)
		default:
			fmt.Printf("  %s  differs at %s\n    primary: %s\n    shadow:  %s\n", e.RequestID, e.Path, e.Primary, e.Shadow)
		}
	}
	return nil
}

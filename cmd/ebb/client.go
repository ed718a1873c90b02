package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/bundle"
	"github.com/ebb-run/ebb/internal/client"
	"github.com/ebb-run/ebb/internal/logbuf"
	"github.com/ebb-run/ebb/internal/manifest"
)

// clientFlags adds --url and --key to fs.
func clientFlags(fs *flag.FlagSet) func() *client.Client {
	u := os.Getenv("EBB_URL")
	if u == "" {
		u = "http://127.0.0.1:8080"
	}
	url := fs.String("url", u, "ebb server URL (env EBB_URL)")
	key := fs.String("key", os.Getenv("EBB_API_KEY"), "API key (env EBB_API_KEY)")
	return func() *client.Client { return client.New(*url, *key) }
}

// parse parses flags that may come before or after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runDeploy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	mk := clientFlags(fs)
	canary := fs.Int("canary", -1, "give the new version this share (percent) of the traffic; the others keep theirs in proportion")
	noTraffic := fs.Bool("no-traffic", false, "deploy a version that takes no traffic until it is routed (ebb route, promote, alias)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	dir := "."
	if len(pos) > 0 {
		dir = pos[0]
	}
	raw, err := os.ReadFile(filepath.Join(dir, manifest.FileName))
	if err != nil {
		return fmt.Errorf("read manifest: %w", err)
	}
	spec, err := manifest.Parse(raw)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if _, err := bundle.Pack(dir, &buf); err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	size := buf.Len()
	var opt api.DeployOptions
	if *canary >= 0 {
		if *canary > 100 {
			return fmt.Errorf("--canary %d is not a percent from 0 to 100", *canary)
		}
		opt.Canary = canary
	}
	if *noTraffic {
		if opt.Canary != nil {
			return fmt.Errorf("--canary and --no-traffic exclude each other")
		}
		opt.NoTraffic = true
	}
	c := mk()
	rep, err := c.DeployWith(ctx, spec.Name, &buf, opt)
	if err != nil {
		return fmt.Errorf("deploy %s: %w", spec.Name, err)
	}
	fmt.Printf("deployed %s version %d (%s, %d bytes)\n  invoke: %s\n  url:    %s\n", rep.Name, rep.Version, rep.Digest[:12], size, rep.URL, rep.FunctionURL)
	if vs, err := c.Versions(ctx, spec.Name); err == nil {
		fmt.Printf("  route:  %s\n", splitString(vs.Route))
	}
	return nil
}

func runInvoke(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	mk := clientFlags(fs)
	data := fs.String("d", "", "event JSON")
	file := fs.String("f", "", "read the event from FILE (- for stdin)")
	verbose := fs.Bool("v", false, "print request id, cold start and status to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ebb invoke NAME [-d JSON | -f FILE]")
	}
	payload := []byte(*data)
	switch {
	case *file == "-":
		payload, err = io.ReadAll(os.Stdin)
	case *file != "":
		payload, err = os.ReadFile(*file)
	}
	if err != nil {
		return err
	}
	res, err := mk().Invoke(ctx, pos[0], payload)
	if err != nil {
		return err
	}
	if *verbose {
		fmt.Fprintf(os.Stderr, "status=%d request_id=%s cold_start=%v version=%d\n", res.Status, res.RequestID, res.ColdStart, res.Version)
	}
	out := res.Body
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	if res.Status/100 != 2 {
		os.Stderr.Write(out)
		return exitCode(1)
	}
	os.Stdout.Write(out)
	return nil
}

func runList(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	mk := clientFlags(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	fns, err := mk().List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tRUNTIME\tINSTANCES\tINVOCATIONS\tCOLD STARTS\tERRORS")
	for _, f := range fns {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\n", f.Name, f.Version, f.Runtime, len(f.Instances), f.Invocations, f.ColdStarts, f.Errors)
	}
	return tw.Flush()
}

// runWarm shows the node's budget for warm capacity and what holds it.
func runWarm(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("warm", flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("usage: ebb warm [--json]")
	}
	rep, err := mk().Warm(ctx)
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Printf("warm budget  %.1f of %.1f MiB, %d of %d holders\n", float64(rep.UsedBytes)/(1<<20), float64(rep.LimitBytes)/(1<<20), rep.Count, rep.MaxHolders)
	if len(rep.Holders) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FUNCTION\tVERSION\tKIND\tMIB\tSINCE\tLAST USE")
	for _, h := range rep.Holders {
		last := "never"
		if !h.LastUse.IsZero() {
			last = time.Since(h.LastUse).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.1f\t%s ago\t%s\n", h.Function, h.Version, h.Kind, float64(h.Bytes)/(1<<20), time.Since(h.Since).Round(time.Second), last)
	}
	return tw.Flush()
}

func runStatus(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	nodes := fs.Bool("nodes", false, "list the cluster's nodes, their capacity and load, instead of a function")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *nodes {
		if len(pos) != 0 {
			return fmt.Errorf("usage: ebb status --nodes")
		}
		return printNodes(ctx, mk(), *asJSON)
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ebb status NAME | ebb status --nodes")
	}
	st, err := mk().Status(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("status %s: %w", pos[0], err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	s := st.Spec
	fmt.Printf("%s  version %d  (%s %s)\n", st.Name, st.Version, st.Runtime, s.Handler)
	fmt.Printf("  deployed     %s\n", st.DeployedAt.Local().Format(time.RFC3339))
	fmt.Printf("  url          %s\n", st.URL)
	fmt.Printf("  limits       memory %d MiB, timeout %s, concurrency %d, instances %d..%d, idle %s\n",
		s.Memory, s.Timeout, s.Concurrency, s.MinInstances, s.MaxInstances, s.IdleTimeout)
	fmt.Printf("  invocations  %d (cold starts %d, errors %d), in flight %d, waiting %d\n",
		st.Invocations, st.ColdStarts, st.Errors, st.InFlight, st.Waiting)
	if len(st.Versions) > 1 || len(st.Aliases) > 0 {
		fmt.Printf("  route        %s\n", splitString(st.Route))
		for _, a := range st.Aliases {
			fmt.Printf("  alias        %s → %s\n", a.Name, splitString(a.Split))
		}
		for _, v := range st.Versions {
			fmt.Printf("  version %-4d %3d%%  %d invocations (cold starts %d, errors %d), p50 %.2f ms, p99 %.2f ms\n",
				v.Version, v.Percent, v.Invocations, v.ColdStarts, v.Errors, v.P50MS, v.P99MS)
		}
	}
	if len(st.Draining) > 0 {
		fmt.Printf("  draining     versions %v\n", st.Draining)
	}
	switch sb := st.Sandbox; {
	case sb.UID != 0:
		fmt.Printf("  sandbox      on: uid %d, network %s\n", sb.UID, sb.Network)
	case sb.Mode != "":
		fmt.Printf("  sandbox      %s\n", sb.Mode)
	}
	if z := st.Zygote; z != nil {
		switch {
		case z.Fallback != "":
			fmt.Printf("  zygote       off: %s\n", z.Fallback)
		case z.PID != 0:
			fmt.Printf("  zygote       pid %d, built in %.0f ms, RSS %.1f MiB, PSS %.1f MiB, %d children, spare %v\n",
				z.PID, z.BuildMS, float64(z.RSS)/(1<<20), float64(z.PSS)/(1<<20), z.Children, z.Spare)
		}
	}
	if sp := st.Spare; sp != nil {
		fmt.Printf("  spare        pid %d, ready %s ago, RSS %.1f MiB, PSS %.1f MiB (ONNX Runtime up; the next cold start loads the model in it)\n",
			sp.PID, time.Since(sp.Since).Round(time.Second), float64(sp.RSS)/(1<<20), float64(sp.PSS)/(1<<20))
	}
	if w := st.Warm; w != nil {
		fmt.Printf("  warm         holds %.1f MiB of the node's warm budget (%s, since %s ago; ebb warm)\n",
			float64(w.Bytes)/(1<<20), w.Kind, time.Since(w.Since).Round(time.Second))
	} else if st.Runtime == ebb.RuntimePython || st.Runtime == ebb.RuntimeONNX {
		fmt.Println("  warm         none held (the next cold start builds its own; ebb warm)")
	}
	if ka := st.KeepAlive; ka != nil {
		fmt.Printf("  keep-alive   %s\n", keepAliveLine(ka, time.Now()))
	}
	if len(st.Instances) == 0 {
		fmt.Println("  instances    none (scaled to zero)")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tVERSION\tSTATE\tPID\tIN FLIGHT\tREQUESTS\tSTARTED\tLAST USED")
	for _, in := range st.Instances {
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%d\t%d\t%d\t%s ago\t%s ago\n", in.ID, in.Version, in.Phase, in.Pid, in.InFlight, in.Requests,
			time.Since(in.StartedAt).Round(time.Second), time.Since(in.LastUsed).Round(time.Millisecond))
	}
	return tw.Flush()
}

func runLogs(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	mk := clientFlags(fs)
	follow := fs.Bool("f", false, "follow: keep printing new lines")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ebb logs NAME [-f]")
	}
	err = mk().Logs(ctx, pos[0], 0, *follow, func(l logbuf.Line) {
		rid := l.RequestID
		if rid == "" {
			rid = "-"
		}
		fmt.Printf("%s %s %s %s\n", l.Time.Local().Format("15:04:05.000"), rid, l.Stream, strings.TrimRight(l.Text, "\r"))
	})
	if err != nil {
		return fmt.Errorf("logs of %s: %w", pos[0], err)
	}
	return nil
}

func runRemove(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rm", flag.ContinueOnError)
	mk := clientFlags(fs)
	version := fs.Int("version", 0, "remove only this version (refused while it takes traffic)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ebb rm NAME [--version N]")
	}
	if *version != 0 {
		if err := mk().RemoveVersion(ctx, pos[0], *version); err != nil {
			return err
		}
		fmt.Printf("removed %s version %d\n", pos[0], *version)
		return nil
	}
	if err := mk().Remove(ctx, pos[0]); err != nil {
		return fmt.Errorf("remove %s: %w", pos[0], err)
	}
	fmt.Printf("removed %s\n", pos[0])
	return nil
}

// keepAliveLine is the status line of a function's keep-alive: its policy,
// why it decided as it did, what comes next, and for an adaptive one what
// its pre-warms did.
func keepAliveLine(ka *api.KeepAliveStatus, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s", ka.Policy, ka.Why)
	in := func(t time.Time) string { return max(t.Sub(now), 0).Round(time.Second).String() }
	switch {
	case !ka.NextPrewarm.IsZero():
		fmt.Fprintf(&b, "; pre-warm in %s", in(ka.NextPrewarm))
		if !ka.NextUnload.IsZero() {
			fmt.Fprintf(&b, ", unload in %s if no call", in(ka.NextUnload))
		}
	case !ka.NextUnload.IsZero():
		fmt.Fprintf(&b, "; warm, unload in %s", in(ka.NextUnload))
	default:
		b.WriteString("; nothing warm")
	}
	if strings.HasPrefix(ka.Policy, "adaptive") {
		fmt.Fprintf(&b, "; %d pre-warms (%d used, %d unused), %s idle warm", ka.Prewarms, ka.PrewarmedStarts, ka.UnusedPrewarms,
			(time.Duration(ka.IdleWarmSeconds * float64(time.Second))).Round(time.Second))
	}
	return b.String()
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb/internal/queue"
)

const jobsUsage = `Usage:
  ebb jobs ls NAME [--status S] [--limit N]   list a function's async jobs, newest first
  ebb jobs get ID                             show one job as JSON
  ebb jobs redrive NAME                       re-queue a function's dead-letter jobs
`

func runJobs(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, jobsUsage)
		return exitCode(2)
	}
	fs := flag.NewFlagSet("jobs "+args[0], flag.ContinueOnError)
	mk := clientFlags(fs)
	status := fs.String("status", "", "only jobs with this status: queued, running, failed, succeeded or dead")
	limit := fs.Int("limit", 100, "at most this many jobs")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprint(os.Stderr, jobsUsage)
		return exitCode(2)
	}
	c := mk()
	switch args[0] {
	case "ls", "list":
		jobs, err := c.Jobs(ctx, pos[0], queue.Status(*status), *limit)
		if err != nil {
			return fmt.Errorf("list jobs of %s: %w", pos[0], err)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tATTEMPTS\tENQUEUED\tFINISHED\tERROR")
		for _, j := range jobs {
			fin, msg := "-", ""
			if !j.FinishedAt.IsZero() {
				fin = j.FinishedAt.Local().Format(time.DateTime)
			}
			if j.Error != nil {
				msg = j.Error.Type + ": " + j.Error.Message
				if len(msg) > 60 {
					msg = msg[:57] + "..."
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", j.ID, j.Status, j.Attempts, j.EnqueuedAt.Local().Format(time.DateTime), fin, msg)
		}
		return tw.Flush()
	case "get":
		j, err := c.Job(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("get job %s: %w", pos[0], err)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	case "redrive":
		n, err := c.Redrive(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("redrive %s: %w", pos[0], err)
		}
		fmt.Printf("re-queued %d dead-letter job(s) of %s\n", n, pos[0])
		return nil
	}
	fmt.Fprint(os.Stderr, jobsUsage)
	return exitCode(2)
}

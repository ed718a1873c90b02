package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb/internal/client"
)

// printNodes is `ebb status --nodes`: the nodes whose heartbeat is live.
func printNodes(ctx context.Context, c *client.Client, asJSON bool) error {
	ns, err := c.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ns)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tVERSION\tCPUS\tMEMORY\tWARM BUDGET\tIN FLIGHT\tINSTANCES\tUP\tSEEN")
	for _, n := range ns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%d MiB\t%d\t%d\t%s\t%s ago\n", n.Name, n.Addr, n.Version, n.Capacity.CPUs,
			n.Capacity.MemoryMiB, n.Capacity.WarmBytes>>20, n.Load.InFlight, n.Load.Instances,
			time.Since(n.StartedAt).Round(time.Second), time.Since(n.Seen).Round(100*time.Millisecond))
	}
	return tw.Flush()
}

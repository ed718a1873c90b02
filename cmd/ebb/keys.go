package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
)

const keysUsage = `usage:
  ebb keys create --role admin|deploy|invoke|read [--functions GLOB[,GLOB]] [--name N] [--expires 30d] [--rps N] [--json]
  ebb keys ls [--json]
  ebb keys revoke ID
  ebb keys rotate ID [--json]`

func runKeys(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(keysUsage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	mk := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	switch sub {
	case "create":
		role := fs.String("role", "", "admin, deploy, invoke or read (required)")
		fns := fs.String("functions", "", "comma-separated globs of the functions the key acts on (default: all)")
		name := fs.String("name", "", "a name for the key, shown in listings and the audit log")
		expires := fs.String("expires", "", "lifetime, e.g. 30d or 12h (default: never expires)")
		rps := fs.Float64("rps", 0, "requests a second the key may make (default: no limit)")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		if *role == "" {
			return errors.New("keys create: --role is required (admin, deploy, invoke or read)")
		}
		req := api.KeyRequest{Role: ebb.Role(*role), Functions: splitList(*fns), Name: *name, Expires: *expires, RPS: *rps}
		k, err := mk().CreateKey(ctx, req)
		if err != nil {
			return fmt.Errorf("keys create: %w", err)
		}
		return printCreated(k, *asJSON)
	case "rotate":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("usage: ebb keys rotate ID")
		}
		k, err := mk().RotateKey(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("keys rotate %s: %w", pos[0], err)
		}
		return printCreated(k, *asJSON)
	case "revoke", "rm":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("usage: ebb keys revoke ID")
		}
		if err := mk().RevokeKey(ctx, pos[0]); err != nil {
			return fmt.Errorf("keys revoke %s: %w", pos[0], err)
		}
		fmt.Printf("revoked key %s\n", pos[0])
		return nil
	case "ls", "list":
		if _, err := parse(fs, args); err != nil {
			return err
		}
		keys, err := mk().Keys(ctx)
		if err != nil {
			return fmt.Errorf("keys ls: %w", err)
		}
		if *asJSON {
			return printJSON(keys)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tROLE\tFUNCTIONS\tRPS\tCREATED\tEXPIRES\tLAST USED")
		for _, k := range keys {
			fns := "*"
			if len(k.Functions) > 0 {
				fns = strings.Join(k.Functions, ",")
			}
			rps := "-"
			if k.RPS > 0 {
				rps = fmt.Sprint(k.RPS)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, orDash(k.Name), k.Role, fns, rps,
				k.CreatedAt.Local().Format(time.DateTime), timeOrDash(k.Expires), timeOrDash(k.LastUsed))
		}
		return tw.Flush()
	}
	return fmt.Errorf("keys: unknown subcommand %q\n%s", sub, keysUsage)
}

func printCreated(k *api.KeyCreated, asJSON bool) error {
	if asJSON {
		return printJSON(k.KeyIssued) // exactly the fields the CLI promises
	}
	fmt.Printf("key %s (role %s", k.ID, k.Role)
	if len(k.Functions) > 0 {
		fmt.Printf(", functions %s", strings.Join(k.Functions, ","))
	}
	if k.Expires != nil {
		fmt.Printf(", expires %s", k.Expires.Local().Format(time.DateTime))
	}
	fmt.Printf("); its secrets are shown only now, store them safely:\n\n")
	fmt.Printf("    key:               %s\n    access_key_id:     %s\n    secret_access_key: %s\n\n", k.Key, k.AccessKeyID, k.SecretAccessKey)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

func runAudit(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	mk := clientFlags(fs)
	since := fs.String("since", "24h", "from when: a duration back (24h, 7d) or an RFC 3339 time; \"all\" for everything kept")
	limit := fs.Int("limit", 1000, "most records to show")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *since == "all" {
		*since = ""
	}
	recs, err := mk().Audit(ctx, *since, *limit)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if *asJSON {
		return printJSON(recs)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKEY\tACTION\tTARGET\tSTATUS\tFROM")
	for _, r := range recs {
		key := orDash(r.KeyID)
		if r.KeyName != "" {
			key += " (" + r.KeyName + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Time.Local().Format(time.DateTime), key, r.Action, orDash(r.Target), r.Status, orDash(r.Remote))
	}
	return tw.Flush()
}

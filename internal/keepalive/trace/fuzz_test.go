package trace

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// FuzzReadDay: any input either fails with a ParseError or reads into apps
// whose arrivals are in order, positive and inside the horizon; writing
// them back as one function per app reads back the same apps.
func FuzzReadDay(f *testing.F) {
	// The invitro fixture's first rows, cut to 3 minutes: the whole file
	// (18 KB) makes each minimization take minutes.
	if b, err := os.ReadFile("testdata/invitro/invocations.csv"); err == nil {
		var rows []string
		for _, line := range strings.SplitN(string(b), "\n", 3)[:2] {
			rows = append(rows, strings.Join(strings.SplitN(line, ",", 8)[:7], ","))
		}
		f.Add([]byte(strings.Join(rows, "\n") + "\n"))
	}
	f.Add([]byte(header(3) + "o,a,f,http,1,0,2\no,a,g,timer,0,0,1\n"))
	f.Add([]byte(header(2) + "o,\"a,b\",f,http,1,2\n"))
	f.Add([]byte("HashOwner,HashApp,HashFunction,Trigger,1\r\no,a,f,http,4\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		tr := New()
		if err := tr.ReadDay(bytes.NewReader(in), "fuzz"); err != nil {
			if tr.Days() != 0 || len(tr.Apps()) != 0 {
				t.Fatal("a failed read changed the trace")
			}
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		apps := tr.Apps()
		cols := tr.Minutes()
		var out bytes.Buffer
		out.WriteString(header(cols))
		for _, a := range apps {
			prev := -1
			row := make([]int64, cols)
			for _, ar := range a.Arrivals {
				if ar.Minute <= prev || ar.Minute >= cols || ar.Count <= 0 {
					t.Fatalf("app %q: arrival %+v after minute %d (horizon %d)", a.App, ar, prev, cols)
				}
				prev = ar.Minute
				row[ar.Minute] = ar.Count
			}
			fmt.Fprintf(&out, "%s,%s,f,http", csvQuote(a.Owner), csvQuote(a.App))
			for _, c := range row {
				fmt.Fprintf(&out, ",%d", c)
			}
			out.WriteString("\n")
		}
		back := New()
		if err := back.ReadDay(&out, "back"); err != nil {
			// counts merged from several functions may exceed one field's
			// uint32; only then may the round trip fail
			if !strings.Contains(err.Error(), "is not a count") {
				t.Fatalf("round trip: %v", err)
			}
			return
		}
		got := back.Apps()
		if fmt.Sprint(got) != fmt.Sprint(apps) {
			t.Fatalf("round trip: %v, want %v", got, apps)
		}
	})
}

func csvQuote(s string) string {
	if strings.ContainsAny(s, ",\"\r\n") || strings.TrimSpace(s) != s {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}

// FuzzReadMemory: any input either fails naming the file or gives
// non-negative, finite memory per app.
func FuzzReadMemory(f *testing.F) {
	if b, err := os.ReadFile("testdata/invitro/memory.csv"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("HashOwner,HashApp,AverageAllocatedMb\no,a,12.5\no,a,3\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		mem, err := ReadMemory(bytes.NewReader(in), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for k, v := range mem {
			if !(v >= 0) || v > 1e308 || k.Owner == "" || k.App == "" {
				t.Fatalf("app %+v: memory %v", k, v)
			}
		}
	})
}

package trace

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

func header(n int) string {
	var b strings.Builder
	b.WriteString("HashOwner,HashApp,HashFunction,Trigger")
	for m := 1; m <= n; m++ {
		b.WriteString("," + strconv.Itoa(m))
	}
	return b.String() + "\n"
}

// TestInvitroFixture reads the example trace of vhive-serverless/invitro
// (MIT, see testdata/invitro/NOTICE): 4 functions of 4 apps over a day.
func TestInvitroFixture(t *testing.T) {
	f, err := os.Open("testdata/invitro/invocations.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := New()
	if err := tr.ReadDay(f, "invocations.csv"); err != nil {
		t.Fatal(err)
	}
	apps := tr.Apps()
	if len(apps) != 4 || tr.Minutes() != 1440 || tr.Days() != 1 {
		t.Fatalf("%d apps over %d minutes, %d days; want 4, 1440, 1", len(apps), tr.Minutes(), tr.Days())
	}
	for _, a := range apps {
		if a.Invocations == 0 || len(a.Arrivals) == 0 {
			t.Errorf("app %s: no invocations", a.App)
		}
	}
	m, err := os.Open("testdata/invitro/memory.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mem, err := ReadMemory(m, "memory.csv")
	if err != nil {
		t.Fatal(err)
	}
	if len(mem) != 4 {
		t.Fatalf("memory for %d apps, want 4", len(mem))
	}
	for _, a := range apps {
		if mem[a.AppKey] <= 0 {
			t.Errorf("app %s: memory %v", a.App, mem[a.AppKey])
		}
	}
}

// TestDaysAndApps: day files are read in order (day d minute m is minute
// 1440·d + m − 1), and functions of one app merge per minute.
func TestDaysAndApps(t *testing.T) {
	tr := New()
	zeros := strings.Repeat(",0", 1437)
	day1 := header(1440) + "o,a,f1,http,2,0,1" + zeros + "\n" + "o,a,f2,timer,3,0,0" + zeros + "\n" + "o,b,f3,http,0,0,0" + zeros + "\n"
	day2 := header(1440) + "o,a,f1,http,0,5,0" + zeros + "\n"
	for i, d := range []string{day1, day2} {
		if err := tr.ReadDay(strings.NewReader(d), "d"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	apps := tr.Apps()
	if len(apps) != 2 || apps[0].App != "a" || apps[1].App != "b" {
		t.Fatalf("apps %+v, want a and b", apps)
	}
	want := []Arrival{{0, 5}, {2, 1}, {1441, 5}}
	if got := apps[0].Arrivals; len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("app a arrivals %v, want %v", got, want)
	}
	if apps[0].Invocations != 11 || apps[1].Invocations != 0 {
		t.Fatalf("invocations %d, %d; want 11, 0", apps[0].Invocations, apps[1].Invocations)
	}
	if tr.Minutes() != 2880 {
		t.Fatalf("minutes %d, want 2880", tr.Minutes())
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "inv.csv:1: empty file"},
		{"HashOwner,HashApp,HashFunc,Trigger,1\n", `inv.csv:1: field column 3: got "HashFunc", want "HashFunction"`},
		{"HashOwner,HashApp,HashFunction,Trigger,1,3\n", `inv.csv:1: field column 6: got "3", want minute 2`},
		{"HashOwner,HashApp,HashFunction,Trigger\n", "inv.csv:1: header has 4 columns"},
		{header(2) + "o,a,f,http,1,2\no,a,f,http,1,x\n", `inv.csv:3: field minute 2: "x" is not a count of invocations`},
		{header(2) + "o,a,f,http,1,-2\n", `inv.csv:2: field minute 2: "-2" is not a count`},
		{header(2) + "o,a,f,http,1\n", "inv.csv:2: 5 fields, the header has 6"},
		{header(2) + ",a,f,http,1,1\n", "inv.csv:2: field HashOwner: empty"},
		{header(2) + "o,\"a,f,http,1,1\n", "inv.csv:2: field column"},
		{header(1441), "1441 minute columns, at most 1440"},
	} {
		tr := New()
		err := tr.ReadDay(strings.NewReader(c.in), "inv.csv")
		var pe *ParseError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &pe) {
			t.Errorf("ReadDay(%.60q) = %v, want a ParseError containing %q", c.in, err, c.want)
		}
		if tr.Days() != 0 || len(tr.Apps()) != 0 {
			t.Errorf("ReadDay(%.60q) failed but changed the trace", c.in)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"", "mem.csv:1: empty file"},
		{"HashOwner,HashApp,SampleCount\n", "mem.csv:1: field AverageAllocatedMb: missing"},
		{"HashOwner,HashApp,AverageAllocatedMb\no,a,12\no,b,big\n", `mem.csv:3: field AverageAllocatedMb: "big" is not`},
		{"HashOwner,HashApp,AverageAllocatedMb\no,a,-1\n", `mem.csv:2: field AverageAllocatedMb: "-1"`},
		{"HashOwner,HashApp,AverageAllocatedMb\no,,1\n", "mem.csv:2: field HashApp: empty"},
	} {
		_, err := ReadMemory(strings.NewReader(c.in), "mem.csv")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ReadMemory(%q) = %v, want an error containing %q", c.in, err, c.want)
		}
	}
}

// TestSynthesize: the same seed writes the same bytes, another seed other
// bytes; the mix lands near the paper's shares; the written trace reads
// back with every invocation.
func TestSynthesize(t *testing.T) {
	write := func(seed uint64) ([]byte, *Synthetic) {
		s := Synthesize(200, 2, seed)
		var b bytes.Buffer
		for d := range 2 {
			if err := s.WriteDay(&b, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.WriteMemory(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes(), s
	}
	a, s := write(7)
	b, _ := write(7)
	c, _ := write(8)
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("synthesize is not a function of the seed")
	}
	st := s.Stats()
	if st.PerHour < 0.30 || st.PerHour > 0.55 || st.PerMinute < 0.70 || st.PerMinute > 0.92 {
		t.Errorf("mix: %.2f of apps at most once an hour, %.2f at most once a minute; the paper has 0.45 and 0.81", st.PerHour, st.PerMinute)
	}
	kinds := map[Kind]int{}
	for _, k := range s.Kinds {
		kinds[k]++
	}
	for _, m := range []Share{{TimerOnly, shareTimerOnly}, {TimerOther, shareTimerOther}, {Other, 1 - shareTimerOnly - shareTimerOther}} {
		if got := float64(kinds[m.Kind]) / 200; got < m.Share/2 || got > m.Share*1.5 {
			t.Errorf("kind %s: %.2f of apps, want about %.2f", m.Kind, got, m.Share)
		}
	}
	tr := New()
	for d := range 2 {
		var day bytes.Buffer
		s.WriteDay(&day, d)
		if err := tr.ReadDay(&day, "synthetic"); err != nil {
			t.Fatal(err)
		}
	}
	var want, got int64
	for _, f := range s.Functions {
		for _, c := range f.Counts {
			want += int64(c)
		}
	}
	for _, a := range tr.Apps() {
		got += a.Invocations
	}
	if got != want || len(tr.Apps()) != 200 {
		t.Fatalf("read back %d invocations of %d apps, wrote %d of 200", got, len(tr.Apps()), want)
	}
}

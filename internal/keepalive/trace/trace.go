// Package trace reads and writes invocation traces in the schema of the
// Azure Functions 2019 public dataset (Shahrad et al., ATC'20):
//
//   - invocations, one file per day: HashOwner,HashApp,HashFunction,Trigger,1,…,1440
//     with the number of invocations of the function in each minute;
//   - memory: HashOwner,HashApp,AverageAllocatedMb (other columns, such as
//     SampleCount or the percentiles, are ignored).
//
// Keep-alive is decided per application, as in the paper, so a Trace
// aggregates functions into apps (owner, app). It also synthesizes traces
// with the paper's mix of patterns (Synthesize).
package trace

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// MinutesPerDay is the number of minute columns in a full day file.
const MinutesPerDay = 1440

// AppKey names an application: keep-alive is per app.
type AppKey struct {
	Owner, App string
}

// Arrival is one minute with invocations of an app.
type Arrival struct {
	Minute int // absolute minute: day·1440 + column − 1
	Count  int64
}

// App is an app's arrivals over the whole trace, in minute order, one per
// minute with invocations.
type App struct {
	AppKey
	Arrivals    []Arrival
	Invocations int64
}

// Trace accumulates day files read in order.
type Trace struct {
	days    int
	minutes int // horizon: minutes covered by the days read
	apps    map[AppKey][]Arrival
}

// New returns an empty trace.
func New() *Trace { return &Trace{apps: map[AppKey][]Arrival{}} }

// Days is the number of day files read.
func (t *Trace) Days() int { return t.days }

// Minutes is the trace's horizon: every arrival's minute is below it.
func (t *Trace) Minutes() int { return t.minutes }

// ParseError names the file, line and field of bad input.
type ParseError struct {
	File  string
	Line  int
	Field string
	Err   error
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	if e.Field == "" {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: field %s: %v", e.File, e.Line, e.Field, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

var invocationHeader = []string{"HashOwner", "HashApp", "HashFunction", "Trigger"}

// ReadDay reads the next day's invocations file; name is used in errors.
// A day may have fewer than 1440 minute columns (a partial day); the next
// day still starts at minute 1440·day.
func (t *Trace) ReadDay(r io.Reader, name string) error {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		return csvError(name, err, "empty file, want the header "+strings.Join(invocationHeader, ",")+",1,…,1440")
	}
	if len(header) < len(invocationHeader)+1 {
		return &ParseError{File: name, Line: 1, Err: fmt.Errorf("header has %d columns, want %s,1,…,1440", len(header), strings.Join(invocationHeader, ","))}
	}
	for i, want := range invocationHeader {
		if strings.TrimPrefix(header[i], "\ufeff") != want {
			return &ParseError{File: name, Line: 1, Field: fmt.Sprintf("column %d", i+1), Err: fmt.Errorf("got %q, want %q", header[i], want)}
		}
	}
	cols := len(header) - len(invocationHeader)
	if cols > MinutesPerDay {
		return &ParseError{File: name, Line: 1, Err: fmt.Errorf("%d minute columns, at most %d in a day", cols, MinutesPerDay)}
	}
	for i, h := range header[len(invocationHeader):] {
		if h != strconv.Itoa(i+1) {
			return &ParseError{File: name, Line: 1, Field: fmt.Sprintf("column %d", len(invocationHeader)+i+1), Err: fmt.Errorf("got %q, want minute %d", h, i+1)}
		}
	}
	base := t.days * MinutesPerDay
	// Rows are validated whole before any is added, so a bad file leaves
	// the trace as it was.
	added := map[AppKey][]Arrival{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return csvError(name, err, "")
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != len(header) {
			return &ParseError{File: name, Line: line, Err: fmt.Errorf("%d fields, the header has %d", len(rec), len(header))}
		}
		for i, f := range invocationHeader[:2] {
			if rec[i] == "" {
				return &ParseError{File: name, Line: line, Field: f, Err: errors.New("empty")}
			}
		}
		key := AppKey{Owner: rec[0], App: rec[1]}
		arr := added[key]
		for i, s := range rec[len(invocationHeader):] {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return &ParseError{File: name, Line: line, Field: fmt.Sprintf("minute %d", i+1), Err: fmt.Errorf("%q is not a count of invocations", s)}
			}
			if n > 0 {
				arr = append(arr, Arrival{Minute: base + i, Count: int64(n)})
			}
		}
		added[key] = arr
	}
	for k, arr := range added {
		t.apps[k] = append(t.apps[k], arr...)
	}
	t.days++
	t.minutes = base + cols
	return nil
}

func csvError(name string, err error, emptyMsg string) error {
	if err == io.EOF {
		return &ParseError{File: name, Line: 1, Err: errors.New(emptyMsg)}
	}
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &ParseError{File: name, Line: pe.Line, Field: fmt.Sprintf("column %d", pe.Column), Err: pe.Err}
	}
	return &ParseError{File: name, Err: err} // a read error: no line to name
}

// Apps returns the apps, sorted by key, each with its functions' arrivals
// merged per minute.
func (t *Trace) Apps() []App {
	apps := make([]App, 0, len(t.apps))
	for k, arr := range t.apps {
		arr = slices.Clone(arr)
		slices.SortStableFunc(arr, func(a, b Arrival) int { return a.Minute - b.Minute })
		merged := arr[:0]
		var total int64
		for _, a := range arr {
			total += a.Count
			if n := len(merged); n > 0 && merged[n-1].Minute == a.Minute {
				merged[n-1].Count += a.Count
				continue
			}
			merged = append(merged, a)
		}
		apps = append(apps, App{AppKey: k, Arrivals: merged, Invocations: total})
	}
	slices.SortFunc(apps, func(a, b App) int {
		if c := strings.Compare(a.Owner, b.Owner); c != 0 {
			return c
		}
		return strings.Compare(a.App, b.App)
	})
	return apps
}

// ReadMemory reads a memory file: each app's average allocated memory in
// MB. Several rows for one app (files with a row per function) keep the
// largest.
func ReadMemory(r io.Reader, name string) (map[AppKey]float64, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		return nil, csvError(name, err, "empty file, want a header with HashOwner,HashApp,AverageAllocatedMb")
	}
	col := map[string]int{"HashOwner": -1, "HashApp": -1, "AverageAllocatedMb": -1}
	for i, h := range header {
		h = strings.TrimPrefix(h, "\ufeff")
		if j, ok := col[h]; ok && j < 0 {
			col[h] = i
		}
	}
	for _, f := range []string{"HashOwner", "HashApp", "AverageAllocatedMb"} {
		if col[f] < 0 {
			return nil, &ParseError{File: name, Line: 1, Field: f, Err: errors.New("missing from the header")}
		}
	}
	mem := map[AppKey]float64{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return mem, nil
		}
		if err != nil {
			return nil, csvError(name, err, "")
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != len(header) {
			return nil, &ParseError{File: name, Line: line, Err: fmt.Errorf("%d fields, the header has %d", len(rec), len(header))}
		}
		for _, f := range []string{"HashOwner", "HashApp"} {
			if rec[col[f]] == "" {
				return nil, &ParseError{File: name, Line: line, Field: f, Err: errors.New("empty")}
			}
		}
		s := rec[col["AverageAllocatedMb"]]
		mb, err := strconv.ParseFloat(s, 64)
		if err != nil || mb < 0 || math.IsInf(mb, 0) || math.IsNaN(mb) {
			return nil, &ParseError{File: name, Line: line, Field: "AverageAllocatedMb", Err: fmt.Errorf("%q is not a non-negative number of MB", s)}
		}
		k := AppKey{Owner: rec[col["HashOwner"]], App: rec[col["HashApp"]]}
		if old, ok := mem[k]; !ok || mb > old {
			mem[k] = mb
		}
	}
}

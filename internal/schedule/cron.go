// Package schedule runs functions on a timetable: standard five-field cron
// expressions ("*/5 * * * *"), the usual macros (@hourly, @daily …) and fixed
// intervals ("@every 30s").
//
// The scheduler persists the time of each function's last tick, so that a
// restart neither loses the schedule nor replays every tick missed while ebb
// was down: at most one catch-up tick fires, then the schedule resumes from
// the present.
package schedule

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule says when a function runs.
type Schedule interface {
	// Next returns the first tick strictly after t, or the zero time when
	// there is none within the search horizon (an impossible date such as
	// 30 February).
	Next(t time.Time) time.Time
}

// Limits of an interval schedule: a shorter one is a busy loop, a longer one
// is better written as cron.
const (
	MinEvery = time.Second
	MaxEvery = 366 * 24 * time.Hour
	// maxExpr bounds the expression so that parsing cost is bounded too.
	maxExpr = 256
)

// Every is an interval schedule; ticks are aligned to multiples of D since
// the Unix epoch so that they do not drift with restarts.
type Every struct{ D time.Duration }

// Next implements Schedule.
func (e Every) Next(t time.Time) time.Time {
	n := t.Truncate(e.D).Add(e.D)
	if !n.After(t) {
		n = n.Add(e.D)
	}
	return n
}

// Cron is a parsed five-field cron expression, evaluated in Location.
type Cron struct {
	minute, hour, dom, month, dow uint64 // bit sets
	// domStar and dowStar record a '*' (or '?') in the day fields: as in
	// Vixie cron, when both day fields are restricted a day matches either.
	domStar, dowStar bool
	Location         *time.Location
}

var macros = map[string]string{
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
	"@monthly":  "0 0 1 * *",
	"@weekly":   "0 0 * * 0",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@hourly":   "0 * * * *",
}

var monthNames = []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}
var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Parse parses a schedule. Cron expressions are evaluated in UTC.
func Parse(expr string) (Schedule, error) {
	if len(expr) > maxExpr {
		return nil, fmt.Errorf("schedule is longer than %d bytes", maxExpr)
	}
	s := strings.TrimSpace(expr)
	if s == "" {
		return nil, errors.New("schedule is empty")
	}
	if rest, ok := strings.CutPrefix(s, "@every"); ok {
		if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return nil, fmt.Errorf("%q: want @every DURATION, e.g. @every 30s", expr)
		}
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("%q: %q is not a duration (e.g. 30s, 5m)", expr, strings.TrimSpace(rest))
		}
		if d < MinEvery || d > MaxEvery {
			return nil, fmt.Errorf("%q: the interval must be from %s to %s", expr, MinEvery, MaxEvery)
		}
		return Every{d}, nil
	}
	if m, ok := macros[strings.ToLower(s)]; ok {
		s = m
	} else if strings.HasPrefix(s, "@") {
		return nil, fmt.Errorf("%q: unknown macro (known: @yearly, @monthly, @weekly, @daily, @hourly, @every DURATION)", expr)
	}
	f := strings.Fields(s)
	if len(f) != 5 {
		return nil, fmt.Errorf("%q: want 5 fields (minute hour day-of-month month day-of-week), got %d", expr, len(f))
	}
	c := &Cron{Location: time.UTC}
	var err error
	if c.minute, _, err = field(f[0], 0, 59, nil); err != nil {
		return nil, fmt.Errorf("%q: minute: %w", expr, err)
	}
	if c.hour, _, err = field(f[1], 0, 23, nil); err != nil {
		return nil, fmt.Errorf("%q: hour: %w", expr, err)
	}
	if c.dom, c.domStar, err = field(f[2], 1, 31, nil); err != nil {
		return nil, fmt.Errorf("%q: day of month: %w", expr, err)
	}
	if c.month, _, err = field(f[3], 1, 12, monthNames); err != nil {
		return nil, fmt.Errorf("%q: month: %w", expr, err)
	}
	// Day of week accepts 0-7, both 0 and 7 meaning Sunday.
	if c.dow, c.dowStar, err = field(f[4], 0, 7, dayNames); err != nil {
		return nil, fmt.Errorf("%q: day of week: %w", expr, err)
	}
	if c.dow&(1<<7) != 0 {
		c.dow |= 1
		c.dow &^= 1 << 7
	}
	if c.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("%q: never matches a real date", expr)
	}
	return c, nil
}

// field parses one cron field into a bit set of the values in [lo, hi].
func field(s string, lo, hi int, names []string) (uint64, bool, error) {
	if s == "*" || s == "?" {
		return span(lo, hi, 1), true, nil
	}
	var bits uint64
	for _, part := range strings.Split(s, ",") {
		rng, stepStr, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepStr)
			if err != nil || n < 1 || n > hi-lo+1 {
				return 0, false, fmt.Errorf("step %q must be a number from 1 to %d", stepStr, hi-lo+1)
			}
			step = n
		}
		var a, b int
		switch {
		case rng == "*":
			a, b = lo, hi
		default:
			from, to, isRange := strings.Cut(rng, "-")
			var err error
			if a, err = value(from, lo, hi, names); err != nil {
				return 0, false, err
			}
			b = a
			if isRange {
				if b, err = value(to, lo, hi, names); err != nil {
					return 0, false, err
				}
				if b < a {
					return 0, false, fmt.Errorf("range %q runs backwards", rng)
				}
			} else if hasStep {
				// "5/15" means from 5 to the end, every 15.
				b = hi
			}
		}
		bits |= span(a, b, step)
	}
	return bits, false, nil
}

func value(s string, lo, hi int, names []string) (int, error) {
	for i, n := range names {
		if strings.EqualFold(s, n) {
			return i + lo, nil
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%q is not a value from %d to %d", s, lo, hi)
	}
	return n, nil
}

func span(a, b, step int) uint64 {
	var bits uint64
	for i := a; i <= b; i += step {
		bits |= 1 << uint(i)
	}
	return bits
}

// horizon bounds the search of Next: every valid expression matches within
// a few years (29 February in a leap year is the rarest), so an expression
// that has not matched in eight is impossible.
const horizon = 8

// Next implements Schedule.
func (c *Cron) Next(t time.Time) time.Time {
	loc := c.Location
	if loc == nil {
		loc = time.UTC
	}
	t = t.In(loc).Truncate(time.Minute).Add(time.Minute)
	end := t.Year() + horizon
	for t.Year() <= end {
		if c.month&(1<<uint(t.Month())) == 0 {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, loc)
			continue
		}
		if !c.dayMatches(t) {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
			continue
		}
		if c.hour&(1<<uint(t.Hour())) == 0 {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
			continue
		}
		if c.minute&(1<<uint(t.Minute())) == 0 {
			t = t.Add(time.Minute)
			continue
		}
		return t
	}
	return time.Time{}
}

func (c *Cron) dayMatches(t time.Time) bool {
	dom := c.dom&(1<<uint(t.Day())) != 0
	dow := c.dow&(1<<uint(t.Weekday())) != 0
	if c.domStar || c.dowStar {
		return dom && dow
	}
	return dom || dow
}

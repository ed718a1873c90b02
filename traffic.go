package ebb

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Weight is one version's share of a route, in percent.
type Weight struct {
	Version int `json:"version"`
	Percent int `json:"percent"`
}

// Split is how a route shares requests among versions: shares in percent
// that sum to 100, in version order. A version with 0% is left out.
type Split []Weight

// Alias is a named route: NAME:alias addresses it.
type Alias struct {
	Name  string `json:"name"`
	Split Split  `json:"split"`
}

// Traffic is a function's routing state: where its unqualified requests go,
// which version had them before, and its aliases.
type Traffic struct {
	// Route is where unqualified requests go; empty means the newest
	// version (as a function deployed before versions were kept has).
	Route Split `json:"route"`
	// Rollback is the version that last had all of Route before the
	// current route; 0 when there is none.
	Rollback int     `json:"rollback,omitempty"`
	Aliases  []Alias `json:"aliases,omitempty"`
	// Shadow, when set, mirrors a share of unqualified requests to a
	// version whose answers are compared and never returned.
	Shadow *Shadow `json:"shadow,omitempty"`
}

// Shadow is a shadow run's configuration.
type Shadow struct {
	Version int `json:"version"`
	// Percent of unqualified requests mirrored, 1 to 100.
	Percent int `json:"percent"`
	// Tolerance is the relative difference under which numbers in the two
	// answers agree: 0 compares them exactly; absent (nil) means
	// DefaultShadowTolerance.
	Tolerance *float64 `json:"tolerance,omitempty"`
}

// DefaultShadowTolerance is the tolerance of a shadow run that names none.
const DefaultShadowTolerance = 1e-6

// Tol is s's tolerance with the default filled in.
func (s Shadow) Tol() float64 {
	if s.Tolerance == nil {
		return DefaultShadowTolerance
	}
	return *s.Tolerance
}

// Validate checks s against the versions that exist.
func (s Shadow) Validate(exists func(int) bool) error {
	switch {
	case s.Version < 1 || exists != nil && !exists(s.Version):
		return fmt.Errorf("version %d does not exist", s.Version)
	case s.Percent < 1 || s.Percent > 100:
		return fmt.Errorf("shadow share %d%% is not 1 to 100", s.Percent)
	case s.Tolerance != nil && !(*s.Tolerance >= 0 && *s.Tolerance < 1):
		return fmt.Errorf("tolerance %g is not a relative difference from 0 to 1", *s.Tolerance)
	}
	return nil
}

// SplitBuckets is how finely a split is drawn: a routing key hashes to one
// of this many buckets, each 1/100 of a percent.
const SplitBuckets = 10000

// RoutingKeyHeader names the header whose value keeps a caller on one version
// while a route's shares hold.
const RoutingKeyHeader = "Ebb-Routing-Key"

// Single returns the version that takes all of s, or 0 when s is split.
func (s Split) Single() int {
	if len(s) == 1 && s[0].Percent == 100 {
		return s[0].Version
	}
	return 0
}

// Has says whether v has a share of s.
func (s Split) Has(v int) bool {
	for _, w := range s {
		if w.Version == v && w.Percent > 0 {
			return true
		}
	}
	return false
}

// Pick chooses the version for one request: by the routing key's stable hash
// when key is not empty (the same key lands on the same version while s
// holds), else by draw, a uniform random number. It is a pure function of
// its arguments. s must be valid (Validate).
func (s Split) Pick(key string, draw uint32) int {
	if len(s) == 1 {
		return s[0].Version
	}
	b := draw % SplitBuckets
	if key != "" {
		b = KeyBucket(key)
	}
	acc := uint32(0)
	for _, w := range s {
		acc += uint32(w.Percent) * (SplitBuckets / 100)
		if b < acc {
			return w.Version
		}
	}
	return s[len(s)-1].Version
}

// KeyBucket is the bucket in [0, SplitBuckets) a routing key hashes to
// (FNV-1a, 32 bits): stable across restarts, nodes and releases.
func KeyBucket(key string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return h % SplitBuckets
}

// Validate checks that s is shares of existing versions (exists says which
// do), each 0 to 100, summing to 100, and puts them in version order with
// zero shares left out.
func (s Split) Validate(exists func(int) bool) (Split, error) {
	if len(s) == 0 {
		return nil, errors.New("a route needs at least one version")
	}
	out := make(Split, 0, len(s))
	sum := 0
	seen := map[int]bool{}
	for _, w := range s {
		if w.Version < 1 {
			return nil, fmt.Errorf("version %d is not a version number", w.Version)
		}
		if seen[w.Version] {
			return nil, fmt.Errorf("version %d is given twice", w.Version)
		}
		seen[w.Version] = true
		if w.Percent < 0 || w.Percent > 100 {
			return nil, fmt.Errorf("version %d: share %d%% is not 0 to 100", w.Version, w.Percent)
		}
		if exists != nil && !exists(w.Version) {
			return nil, fmt.Errorf("version %d does not exist", w.Version)
		}
		sum += w.Percent
		if w.Percent > 0 {
			out = append(out, w)
		}
	}
	if sum != 100 {
		return nil, fmt.Errorf("shares sum to %d%%, not 100%%", sum)
	}
	slices.SortFunc(out, func(a, b Weight) int { return a.Version - b.Version })
	return out, nil
}

// Canary gives version v percent of s and the other versions the rest, in
// proportion to their shares now (largest remainders get the odd percents).
func (s Split) Canary(v, percent int) Split {
	if percent >= 100 || len(s) == 0 {
		return Split{{Version: v, Percent: 100}}
	}
	rest := 100 - percent
	total := 0
	for _, w := range s {
		if w.Version != v {
			total += w.Percent
		}
	}
	type part struct {
		w   Weight
		rem int
	}
	var parts []part
	given := 0
	for _, w := range s {
		if w.Version == v || w.Percent == 0 {
			continue
		}
		n := w.Percent * rest
		parts = append(parts, part{Weight{w.Version, n / total}, n % total})
		given += n / total
	}
	order := make([]int, len(parts))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return parts[b].rem - parts[a].rem })
	for i := 0; given < rest; i++ {
		parts[order[i%len(order)]].w.Percent++
		given++
	}
	out := Split{}
	for _, p := range parts {
		if p.w.Percent > 0 {
			out = append(out, p.w)
		}
	}
	if percent > 0 {
		out = append(out, Weight{Version: v, Percent: percent})
	}
	slices.SortFunc(out, func(a, b Weight) int { return a.Version - b.Version })
	return out
}

// SetRoute replaces t's route with s, remembering for Rollback the version
// that had all of the old route when the new one is different.
func (t *Traffic) SetRoute(s Split) {
	if old := t.Route.Single(); old != 0 && s.Single() != old {
		t.Rollback = old
	}
	t.Route = s
}

// Alias returns the alias called name, or nil.
func (t *Traffic) Alias(name string) *Alias {
	for i := range t.Aliases {
		if t.Aliases[i].Name == name {
			return &t.Aliases[i]
		}
	}
	return nil
}

// Uses says what routes v: "" when nothing does, else a description such
// as "the route (20%)" or "alias prod".
func (t *Traffic) Uses(v int) string {
	var uses []string
	for _, w := range t.Route {
		if w.Version == v && w.Percent > 0 {
			uses = append(uses, fmt.Sprintf("the function's route (%d%%)", w.Percent))
		}
	}
	for _, a := range t.Aliases {
		if a.Split.Has(v) {
			uses = append(uses, "alias "+strconv.Quote(a.Name))
		}
	}
	if t.Shadow != nil && t.Shadow.Version == v {
		uses = append(uses, "the shadow run (ebb shadow stop)")
	}
	return strings.Join(uses, " and ")
}

// Versions returns every version t routes to (its route and aliases), in
// order.
func (t *Traffic) Versions() []int {
	var vs []int
	add := func(s Split) {
		for _, w := range s {
			if w.Percent > 0 && !slices.Contains(vs, w.Version) {
				vs = append(vs, w.Version)
			}
		}
	}
	add(t.Route)
	for _, a := range t.Aliases {
		add(a.Split)
	}
	if t.Shadow != nil && !slices.Contains(vs, t.Shadow.Version) {
		vs = append(vs, t.Shadow.Version)
	}
	slices.Sort(vs)
	return vs
}

var aliasRE = regexp.MustCompile(`^[a-z]([a-z0-9_-]{0,62})$`)

// ValidAlias checks an alias name: a lowercase letter, then up to 62
// lowercase letters, digits, '-' or '_'. Names that start with a digit
// would read as version numbers.
func ValidAlias(name string) error {
	if !aliasRE.MatchString(name) {
		return &FieldError{Field: "alias", Reason: fmt.Sprintf("%q is not an alias name (a lowercase letter, then letters, digits, '-' or '_', at most 63)", name)}
	}
	if name == "latest" {
		return &FieldError{Field: "alias", Reason: `"latest" is reserved: NAME:latest (or NAME:$LATEST) is always the newest version`}
	}
	return nil
}

// SplitQualified splits "NAME:QUALIFIER" into its function name and
// qualifier (an alias, a version number, or "latest"/"$LATEST"); a name
// without ':' has an empty qualifier.
func SplitQualified(s string) (name, qualifier string) {
	name, qualifier, _ = strings.Cut(s, ":")
	return name, qualifier
}

// ParseSplit reads shares written as "3=90 4=10" (one argument each).
func ParseSplit(args []string) (Split, error) {
	var s Split
	for _, a := range args {
		v, p, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not VERSION=PERCENT", a)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: %q is not a version number", a, v)
		}
		pc, err := strconv.Atoi(strings.TrimSuffix(p, "%"))
		if err != nil {
			return nil, fmt.Errorf("%q: %q is not a whole percent", a, p)
		}
		s = append(s, Weight{Version: n, Percent: pc})
	}
	return s, nil
}

// Package manifest parses ebb.yaml, the file that describes a function.
//
// It walks the YAML node tree by hand instead of unmarshalling into a struct
// so that every error names the field (and line) the user has to fix, and so
// that unknown fields are refused rather than silently ignored: a typo in
// "max_instance" must not deploy a function with the default.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/schedule"
)

// FileName is the manifest's name inside a function directory.
const FileName = "ebb.yaml"

// MaxSize bounds the manifest; a larger one is refused before parsing.
const MaxSize = 64 << 10

// Error is a manifest problem: the field, the line where it is (0 if unknown)
// and what is wrong.
type Error struct {
	Field  string
	Line   int
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(FileName)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Parse parses and validates a manifest, applying defaults. Every error is an
// *Error that names the field.
func Parse(data []byte) (*ebb.Spec, error) {
	if len(data) > MaxSize {
		return nil, &Error{Reason: fmt.Sprintf("is %d bytes; the limit is %d", len(data), MaxSize)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{Reason: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &Error{Reason: "is empty"}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Line: root.Line, Reason: "must be a mapping of fields (name: …, runtime: …)"}
	}
	var s ebb.Spec
	p := parser{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, &Error{Line: k.Line, Reason: "field names must be plain strings"}
		}
		name := k.Value
		if seen[name] {
			return nil, &Error{Field: name, Line: k.Line, Reason: "appears twice"}
		}
		seen[name] = true
		switch name {
		case "name":
			s.Name = p.str(name, v)
		case "runtime":
			s.Runtime = ebb.Runtime(p.str(name, v))
		case "handler":
			s.Handler = p.str(name, v)
		case "memory":
			s.MemoryMiB = p.memory(name, v)
		case "timeout":
			s.Timeout = p.duration(name, v)
		case "concurrency":
			s.Concurrency = p.positive(name, v)
		case "min_instances":
			s.MinInstances = p.nonNegative(name, v)
		case "max_instances":
			s.MaxInstances = p.positive(name, v)
		case "idle_timeout":
			s.IdleTimeout = p.duration(name, v)
		case "max_queue":
			s.MaxQueue = p.nonNegative(name, v)
			if s.MaxQueue == 0 && p.err == nil {
				s.MaxQueue = -1 // explicit zero: no queue; see below
			}
		case "queue_timeout":
			s.QueueTimeout = p.duration(name, v)
		case "preload":
			s.Preload = p.strList(name, v)
		case "env":
			s.Env = p.strMap(name, v)
		case "batching":
			s.Batching = p.batching(name, v)
		case "zygote":
			b := p.boolean(name, v)
			s.Zygote = &b
		case "python":
			s.Python = p.str(name, v)
		case "async":
			s.Async = p.async(name, v)
		case "schedule":
			s.Schedule = p.schedule(name, v)
		case "events":
			s.Events = p.events(name, v)
		case "target":
			s.Target = p.str(name, v)
		case "warmup":
			s.Warmup = p.jsonValue(name, v)
		case "network":
			s.Network = p.str(name, v)
		case "function_url":
			s.FunctionURL = p.functionURL(name, v)
		case "rate_limit":
			s.RateLimit = p.rateLimit(name, v)
		case "monitor":
			b := p.boolean(name, v)
			s.Monitor = &b
		case "keep_alive":
			s.KeepAlive = p.keepAlive(name, v)
		default:
			return nil, &Error{Field: name, Line: k.Line, Reason: "unknown field" + suggest(name)}
		}
		if p.err != nil {
			return nil, p.err
		}
	}
	// idle_timeout: D is keep_alive: fixed:D, whatever the server's
	// --keep-alive; the two together would say the same thing twice, or
	// contradict each other.
	switch {
	case seen["keep_alive"] && seen["idle_timeout"]:
		return nil, &Error{Field: "keep_alive", Line: lineOf(root, "keep_alive"),
			Reason: "give keep_alive or idle_timeout, not both (idle_timeout: D is keep_alive: fixed:D)"}
	case seen["idle_timeout"]:
		s.KeepAlive, _, _ = ebb.ParseKeepAlive("fixed:" + s.IdleTimeout.String())
	}
	explicitNoQueue := s.MaxQueue == -1
	if explicitNoQueue {
		s.MaxQueue = 0
	}
	s.Defaults()
	if explicitNoQueue {
		s.MaxQueue = 0
	}
	if err := s.Validate(); err != nil {
		var fe *ebb.FieldError
		if errors.As(err, &fe) {
			return nil, &Error{Field: fe.Field, Line: lineOf(root, fe.Field), Reason: fe.Reason}
		}
		return nil, &Error{Reason: err.Error()}
	}
	return &s, nil
}

var fields = []string{"name", "runtime", "handler", "memory", "timeout", "concurrency", "min_instances",
	"max_instances", "idle_timeout", "max_queue", "queue_timeout", "preload", "env", "batching", "zygote", "python",
	"async", "schedule", "events", "target", "warmup", "network", "function_url", "rate_limit", "monitor", "keep_alive"}

// suggest proposes a known field for a misspelt one.
func suggest(name string) string {
	best, bestD := "", 3
	for _, f := range fields {
		if d := distance(name, f); d < bestD {
			best, bestD = f, d
		}
	}
	if best == "" {
		return " (known fields: " + strings.Join(fields, ", ") + ")"
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// distance is the Levenshtein distance, for short field names.
func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func lineOf(root *yaml.Node, field string) int {
	top, _, _ := strings.Cut(field, ".")
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == top {
			return root.Content[i].Line
		}
	}
	return 0
}

// parser records the first error; its methods return zero values after it.
type parser struct{ err *Error }

func (p *parser) fail(field string, n *yaml.Node, format string, args ...any) {
	if p.err == nil {
		p.err = &Error{Field: field, Line: n.Line, Reason: fmt.Sprintf(format, args...)}
	}
}

func (p *parser) scalar(field string, n *yaml.Node) (string, bool) {
	if n.Kind == yaml.AliasNode {
		p.fail(field, n, "aliases are not supported")
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		p.fail(field, n, "must be a single value, not a %s", kindName(n.Kind))
		return "", false
	}
	if n.Tag == "!!null" {
		p.fail(field, n, "must not be empty")
		return "", false
	}
	return n.Value, true
}

func (p *parser) str(field string, n *yaml.Node) string {
	v, _ := p.scalar(field, n)
	return v
}

func (p *parser) boolean(field string, n *yaml.Node) bool {
	v, ok := p.scalar(field, n)
	if !ok {
		return false
	}
	switch strings.ToLower(v) {
	case "true", "yes", "on":
		return true
	case "false", "no", "off":
		return false
	}
	p.fail(field, n, "%q is not true or false", v)
	return false
}

func (p *parser) integer(field string, n *yaml.Node) (int, bool) {
	v, ok := p.scalar(field, n)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(v)
	if err != nil || n.Tag != "!!int" {
		p.fail(field, n, "%q is not a whole number", v)
		return 0, false
	}
	return i, true
}

func (p *parser) positive(field string, n *yaml.Node) int {
	i, ok := p.integer(field, n)
	if ok && i < 1 {
		p.fail(field, n, "must be at least 1, not %d", i)
	}
	return i
}

func (p *parser) nonNegative(field string, n *yaml.Node) int {
	i, ok := p.integer(field, n)
	if ok && i < 0 {
		p.fail(field, n, "must not be negative, not %d", i)
	}
	return i
}

// memory accepts MiB as a number (512) or with a unit (512Mi, 512MB, 2Gi, 2GB).
func (p *parser) memory(field string, n *yaml.Node) int {
	v, ok := p.scalar(field, n)
	if !ok {
		return 0
	}
	num, mult := v, 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"Gi", 1024}, {"GiB", 1024}, {"GB", 1024}, {"G", 1024}, {"Mi", 1}, {"MiB", 1}, {"MB", 1}, {"M", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	i, err := strconv.Atoi(num)
	if err != nil || i < 1 || i > ebb.MaxMemoryMiB/mult {
		p.fail(field, n, "%q is not a memory size in MiB (e.g. 512, 512Mi or 2Gi)", v)
		return 0
	}
	return i * mult
}

// duration accepts Go durations (30s, 1m30s, 250ms) and bare seconds (30).
func (p *parser) duration(field string, n *yaml.Node) time.Duration {
	v, ok := p.scalar(field, n)
	if !ok {
		return 0
	}
	if n.Tag == "!!int" {
		s, err := strconv.Atoi(v)
		if err != nil || s < 0 || s > 1e6 {
			p.fail(field, n, "%q is not a duration (e.g. 30s, 5m, 250ms)", v)
			return 0
		}
		if s == 0 {
			p.fail(field, n, "must be more than zero")
		}
		return time.Duration(s) * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail(field, n, "%q is not a duration (e.g. 30s, 5m, 250ms)", v)
		return 0
	}
	if d <= 0 {
		p.fail(field, n, "must be more than zero, not %s", v)
	}
	return d
}

// keepAlive parses adaptive or fixed:DURATION.
func (p *parser) keepAlive(field string, n *yaml.Node) string {
	v, ok := p.scalar(field, n)
	if !ok {
		return ""
	}
	c, _, err := ebb.ParseKeepAlive(v)
	if err != nil {
		p.fail(field, n, "%s", err.Error())
		return ""
	}
	return c
}

func (p *parser) strList(field string, n *yaml.Node) []string {
	if n.Kind != yaml.SequenceNode {
		p.fail(field, n, "must be a list, like [numpy, sklearn]")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		v, ok := p.scalar(fmt.Sprintf("%s[%d]", field, i), c)
		if !ok {
			return nil
		}
		out = append(out, v)
	}
	return out
}

func (p *parser) strMap(field string, n *yaml.Node) map[string]string {
	if n.Kind != yaml.MappingNode {
		p.fail(field, n, "must be a mapping, like {KEY: value}")
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key, ok := p.scalar(field, k)
		if !ok {
			return nil
		}
		if _, dup := out[key]; dup {
			p.fail(field+"."+key, k, "appears twice")
			return nil
		}
		val, ok := p.scalar(field+"."+key, v)
		if !ok {
			return nil
		}
		out[key] = val
	}
	return out
}

func (p *parser) functionURL(field string, n *yaml.Node) *ebb.FunctionURL {
	if n.Kind != yaml.MappingNode {
		p.fail(field, n, "must be a mapping, like {auth: none}")
		return nil
	}
	u := &ebb.FunctionURL{Auth: ebb.FunctionURLAuthKey}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "auth":
			u.Auth = p.str(field+".auth", v)
			if p.err == nil && u.Auth != ebb.FunctionURLAuthKey && u.Auth != ebb.FunctionURLAuthNone {
				p.fail(field+".auth", v, "%q is not key or none", u.Auth)
			}
		default:
			p.fail(field+"."+k.Value, k, "unknown field (known: auth)")
		}
	}
	return u
}

func (p *parser) rateLimit(field string, n *yaml.Node) *ebb.RateLimit {
	if n.Kind != yaml.MappingNode {
		p.fail(field, n, "must be a mapping, like {rps: 50, burst: 100}")
		return nil
	}
	l := &ebb.RateLimit{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "rps":
			s, ok := p.scalar(field+".rps", v)
			if !ok {
				return nil
			}
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || !(f > 0) || f > ebb.MaxRateLimitRPS {
				p.fail(field+".rps", v, "%q is not a rate above 0 and at most %d", s, ebb.MaxRateLimitRPS)
				return nil
			}
			l.RPS = f
		case "burst":
			l.Burst = p.positive(field+".burst", v)
		default:
			p.fail(field+"."+k.Value, k, "unknown field (known: rps, burst)")
		}
	}
	if p.err == nil && l.RPS == 0 {
		p.fail(field+".rps", n, "is required")
		return nil
	}
	if l.Burst == 0 {
		// A bucket must hold at least one token; a second's worth is the
		// burst a client expects from "N per second".
		l.Burst = max(1, int(math.Ceil(l.RPS)))
	}
	return l
}

func (p *parser) batching(field string, n *yaml.Node) *ebb.Batching {
	if n.Kind != yaml.MappingNode {
		p.fail(field, n, "must be a mapping, like {max_batch_size: 32, max_delay: 2ms}")
		return nil
	}
	b := &ebb.Batching{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "max_batch_size":
			b.MaxBatchSize = p.positive(field+".max_batch_size", v)
		case "max_delay":
			v2, ok := p.scalar(field+".max_delay", v)
			if !ok {
				return nil
			}
			d, err := time.ParseDuration(v2)
			if err != nil || d < 0 {
				p.fail(field+".max_delay", v, "%q is not a duration (e.g. 2ms)", v2)
				return nil
			}
			b.MaxDelay = d
		default:
			p.fail(field+"."+k.Value, k, "unknown field (known: max_batch_size, max_delay)")
		}
	}
	return b
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	}
	return "value"
}

// async parses {max_retries, max_age, on_success, on_failure}; an absent
// max_retries is the default, an explicit 0 means no retries.
func (p *parser) async(field string, n *yaml.Node) *ebb.AsyncConfig {
	if n.Kind != yaml.MappingNode {
		p.fail(field, n, "must be a mapping, like {max_retries: 2, max_age: 1h, on_failure: https://…}")
		return nil
	}
	a := &ebb.AsyncConfig{MaxRetries: ebb.DefaultAsyncMaxRetries}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub := field + "." + k.Value
		if seen[k.Value] {
			p.fail(sub, k, "appears twice")
			return nil
		}
		seen[k.Value] = true
		switch k.Value {
		case "max_retries":
			a.MaxRetries = p.nonNegative(sub, v)
		case "max_age":
			a.MaxAge = p.duration(sub, v)
		case "on_success":
			a.OnSuccess = p.str(sub, v)
		case "on_failure":
			a.OnFailure = p.str(sub, v)
		default:
			p.fail(sub, k, "unknown field (known: max_retries, max_age, on_success, on_failure)")
		}
	}
	return a
}

func (p *parser) schedule(field string, n *yaml.Node) string {
	v, ok := p.scalar(field, n)
	if !ok {
		return ""
	}
	if _, err := schedule.Parse(v); err != nil {
		p.fail(field, n, "%s", err.Error())
		return ""
	}
	return v
}

// events parses a list of {subject} or {bucket, prefix, suffix} entries.
func (p *parser) events(field string, n *yaml.Node) []ebb.EventSource {
	if n.Kind != yaml.SequenceNode {
		p.fail(field, n, "must be a list, like [{subject: orders.*}, {bucket: uploads, suffix: .csv}]")
		return nil
	}
	out := make([]ebb.EventSource, 0, len(n.Content))
	for i, c := range n.Content {
		item := fmt.Sprintf("%s[%d]", field, i)
		if c.Kind != yaml.MappingNode {
			p.fail(item, c, "must be a mapping, like {subject: orders.*} or {bucket: uploads, prefix: in/}")
			return nil
		}
		var e ebb.EventSource
		seen := map[string]bool{}
		for j := 0; j+1 < len(c.Content); j += 2 {
			k, v := c.Content[j], c.Content[j+1]
			sub := item + "." + k.Value
			if seen[k.Value] {
				p.fail(sub, k, "appears twice")
				return nil
			}
			seen[k.Value] = true
			switch k.Value {
			case "subject":
				e.Subject = p.str(sub, v)
			case "bucket":
				e.Bucket = p.str(sub, v)
			case "prefix":
				e.Prefix = p.str(sub, v)
			case "suffix":
				e.Suffix = p.str(sub, v)
			default:
				p.fail(sub, k, "unknown field (known: subject, bucket, prefix, suffix)")
			}
		}
		if p.err != nil {
			return nil
		}
		out = append(out, e)
	}
	return out
}

// jsonValue turns any YAML value into the JSON the handler will get as its
// event. It is converted here, node by node, so that what YAML has and JSON
// lacks (non-string keys, .inf, aliases, tags like !!binary) is refused with
// the line it is on rather than changed silently.
func (p *parser) jsonValue(field string, n *yaml.Node) json.RawMessage {
	if n.Tag == "!!null" {
		p.fail(field, n, "must not be empty (write {} for an empty event)")
		return nil
	}
	v, ok := p.toJSON(field, n, 0)
	if !ok {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		p.fail(field, n, "cannot be written as JSON: %v", err)
		return nil
	}
	return b
}

func (p *parser) toJSON(field string, n *yaml.Node, depth int) (any, bool) {
	if depth > 64 {
		p.fail(field, n, "is nested too deeply")
		return nil, false
	}
	switch n.Kind {
	case yaml.AliasNode:
		p.fail(field, n, "aliases are not supported")
		return nil, false
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			v, ok := p.toJSON(fmt.Sprintf("%s[%d]", field, i), c, depth+1)
			if !ok {
				return nil, false
			}
			out = append(out, v)
		}
		return out, true
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, c := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!int") {
				p.fail(field, k, "keys must be strings (JSON has no other keys)")
				return nil, false
			}
			if _, dup := out[k.Value]; dup {
				p.fail(field+"."+k.Value, k, "appears twice")
				return nil, false
			}
			v, ok := p.toJSON(field+"."+k.Value, c, depth+1)
			if !ok {
				return nil, false
			}
			out[k.Value] = v
		}
		return out, true
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, true
		case "!!str":
			return n.Value, true
		case "!!bool", "!!int", "!!float":
			var v any
			if err := n.Decode(&v); err != nil {
				p.fail(field, n, "%q: %v", n.Value, err)
				return nil, false
			}
			if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
				p.fail(field, n, "%q has no JSON form", n.Value)
				return nil, false
			}
			return v, true
		}
		p.fail(field, n, "YAML type %s has no JSON form", n.Tag)
		return nil, false
	}
	p.fail(field, n, "must be a YAML value")
	return nil, false
}

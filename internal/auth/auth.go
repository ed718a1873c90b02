// Package auth decides who a request is and what it may do: API keys with a
// role and function globs, presented as a bearer secret, in X-Api-Key, or as
// an AWS SigV4 signature for AWS SDKs and tools. Keys are held in memory
// (Keyring) so that checking one never touches the store on the request path;
// only hashes of bearer secrets are kept anywhere.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strings"

	"github.com/ebb-run/ebb"
)

// KeyPrefix starts every ebb API key, so that leaked keys are easy to spot
// (and so that ebb knows which credentials are its own to strip).
const KeyPrefix = "ebb_"

// NewSecret returns a new random bearer secret and its hash.
func NewSecret() (secret, hash string) {
	var b [24]byte
	rand.Read(b[:])
	secret = KeyPrefix + hex.EncodeToString(b[:])
	return secret, Hash(secret)
}

// NewID returns a new random key ID (8 lowercase hex).
func NewID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Hash is the hex sha256 of a key: what is stored and compared.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// IsLoopback reports whether a listen address only accepts local connections.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = listen
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Perm is one thing a route needs a key to be allowed.
type Perm string

// The permissions routes ask for. A role is a set of them (see Allows).
const (
	PermDeploy   Perm = "deploy"   // deploy and remove functions, redrive jobs
	PermInvoke   Perm = "invoke"   // every invocation protocol
	PermDescribe Perm = "describe" // a function's status, description and listing
	PermLogs     Perm = "logs"     // a function's output
	PermJobs     Perm = "jobs"     // async job records (payloads and results)
	PermMetrics  Perm = "metrics"  // /metrics
	PermBuckets  Perm = "buckets"  // /v1/buckets (uploads trigger functions)
	PermKeys     Perm = "keys"     // create, list, rotate and revoke keys
	PermAudit    Perm = "audit"    // read the audit log
)

// FunctionScoped says whether a permission applies to named functions (and
// so is narrowed by a key's globs).
func (p Perm) FunctionScoped() bool {
	switch p {
	case PermDeploy, PermInvoke, PermDescribe, PermLogs, PermJobs:
		return true
	}
	return false
}

// roles is what each role may do. Admin may do everything.
var roles = map[ebb.Role][]Perm{
	ebb.RoleDeploy: {PermDeploy, PermDescribe, PermLogs, PermJobs},
	ebb.RoleInvoke: {PermInvoke, PermDescribe, PermJobs},
	ebb.RoleRead:   {PermDescribe, PermLogs, PermJobs, PermMetrics},
}

// Allows says whether role has perm.
func Allows(role ebb.Role, perm Perm) bool {
	if role == ebb.RoleAdmin {
		return true
	}
	for _, p := range roles[role] {
		if p == perm {
			return true
		}
	}
	return false
}

// Principal is the key a request authenticated with.
type Principal struct {
	Key ebb.Key
	// Via says how it was presented: "bearer", "x-api-key", "sigv4".
	Via string
}

// ForbiddenError is a key acting outside its role or functions: 403, with a
// message naming what is missing.
type ForbiddenError struct {
	KeyID    string
	Role     ebb.Role
	Perm     Perm
	Function string // empty for permissions not scoped to a function
}

func (e *ForbiddenError) Error() string {
	if e.Function != "" && Allows(e.Role, e.Perm) {
		return fmt.Sprintf("key %s (role %s) lacks permission %q on function %q: it is limited to other functions", e.KeyID, e.Role, e.Perm, e.Function)
	}
	if e.Function != "" {
		return fmt.Sprintf("key %s (role %s) lacks permission %q (needed on function %q)", e.KeyID, e.Role, e.Perm, e.Function)
	}
	return fmt.Sprintf("key %s (role %s) lacks permission %q", e.KeyID, e.Role, e.Perm)
}

// Can says whether p may use perm on function fn ("" for routes that name
// none); nil p means keys are not required, and everything is allowed.
func (p *Principal) Can(perm Perm, fn string) error {
	if p == nil {
		return nil
	}
	if !Allows(p.Key.Role, perm) || (fn != "" && perm.FunctionScoped() && !p.Key.Covers(fn)) {
		return &ForbiddenError{KeyID: p.Key.ID, Role: p.Key.Role, Perm: perm, Function: fn}
	}
	return nil
}

// Covers says whether p may see function fn at all (for filtering lists).
func (p *Principal) Covers(fn string) bool { return p == nil || p.Key.Covers(fn) }

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the request's principal, nil when keys are not
// required (everything allowed).
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// Check is Can for the request's principal: handlers whose function is known
// only after a lookup (a job's) call it themselves.
func Check(ctx context.Context, perm Perm, fn string) error {
	return FromContext(ctx).Can(perm, fn)
}

// IsEbbSecret says whether s looks like an ebb bearer secret.
func IsEbbSecret(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), KeyPrefix) }

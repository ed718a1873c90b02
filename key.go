package ebb

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// Role is what an API key may do. Each role is a fixed set of permissions
// (package auth has the table); Functions narrows it to some functions.
type Role string

// The roles a key can have.
const (
	// RoleAdmin may do everything, on every function, keys included.
	RoleAdmin Role = "admin"
	// RoleDeploy deploys and removes functions, redrives their jobs and
	// reads their status and logs.
	RoleDeploy Role = "deploy"
	// RoleInvoke invokes functions on every protocol and reads the jobs
	// and descriptions of the functions it may invoke.
	RoleInvoke Role = "invoke"
	// RoleRead reads status, logs, jobs and metrics.
	RoleRead Role = "read"
)

// Roles lists every role, most powerful first.
var Roles = []Role{RoleAdmin, RoleDeploy, RoleInvoke, RoleRead}

// ParseRole checks a role's name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("role %q is not admin, deploy, invoke or read", s)
}

// Key is an API key as stored: who it is and what it may do, never its
// secret. The bearer secret is kept only as its hash; the SigV4 secret access
// key, which a verifier needs in the clear to compute signatures (as AWS IAM
// does), is kept sealed under the node's key-encryption key.
type Key struct {
	// ID names the key in listings, revocation and the audit log.
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	Role Role   `json:"role"`
	// Functions are globs (path.Match syntax) of the function names the
	// key acts on; empty means every function.
	Functions []string `json:"functions,omitempty"`
	// RPS bounds the requests a second the key may make (0: no bound).
	RPS       float64   `json:"rps,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt, when set, is when the key stops working.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// LastUsed is when the key last authenticated a request (written
	// back periodically, so up to a minute behind).
	LastUsed time.Time `json:"last_used,omitzero"`
	// Hash is the lowercase hex sha256 of the bearer secret.
	Hash string `json:"hash"`
	// AccessKeyID and SealedSecret are the key's AWS-style credential, for
	// SigV4-signed requests from AWS SDKs and tools.
	AccessKeyID  string `json:"access_key_id,omitempty"`
	SealedSecret string `json:"sealed_secret,omitempty"`
}

// MaxKeyFunctions bounds a key's function globs.
const MaxKeyFunctions = 64

// Validate checks what a client chose: role, globs, rate.
func (k *Key) Validate() error {
	if _, err := ParseRole(string(k.Role)); err != nil {
		return &FieldError{"role", err.Error()}
	}
	if len(k.Name) > 128 {
		return &FieldError{"name", "is longer than 128 bytes"}
	}
	if k.Role == RoleAdmin && len(k.Functions) > 0 {
		return &FieldError{"functions", "an admin key acts on every function; give another role to scope a key"}
	}
	if len(k.Functions) > MaxKeyFunctions {
		return &FieldError{"functions", fmt.Sprintf("has %d globs; the limit is %d", len(k.Functions), MaxKeyFunctions)}
	}
	for _, g := range k.Functions {
		if g == "" || len(g) > 128 || strings.ContainsAny(g, "/\\") {
			return &FieldError{"functions", fmt.Sprintf("%q is not a function name glob", g)}
		}
		if _, err := path.Match(g, ""); err != nil {
			return &FieldError{"functions", fmt.Sprintf("%q is not a valid glob: %v", g, err)}
		}
	}
	if k.RPS < 0 || k.RPS > MaxRateLimitRPS {
		return &FieldError{"rps", fmt.Sprintf("%v is out of range (0 to %d)", k.RPS, MaxRateLimitRPS)}
	}
	return nil
}

// Covers says whether the key acts on the function called name.
func (k *Key) Covers(name string) bool {
	if len(k.Functions) == 0 {
		return true
	}
	for _, g := range k.Functions {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// Expired says whether the key has expired at now.
func (k *Key) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

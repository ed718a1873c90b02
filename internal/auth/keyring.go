package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ebb-run/ebb"
)

// Errors of Authenticate that callers branch on; all but ErrRateLimited are
// 401 at the edge.
var (
	ErrNoCredentials = errors.New("a valid API key is required (Authorization: Bearer KEY, X-Api-Key: KEY, or an AWS SigV4 signature)")
	ErrUnknownKey    = errors.New("the API key is not valid: it is unknown, revoked or rotated")
	ErrExpired       = errors.New("the API key has expired")
)

// RateLimitedError is a key over its --rps: 429.
type RateLimitedError struct {
	KeyID      string
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("key %s is over its rate limit; retry after %s", e.KeyID, e.RetryAfter.Round(time.Millisecond))
}

// entry is one key in memory.
type entry struct {
	key      ebb.Key
	hash     [sha256.Size]byte
	secret   string        // SigV4 secret access key, in the clear, in memory only
	limiter  *rate.Limiter // nil: no --rps
	lastUsed atomic.Int64  // unix nanoseconds of the last authenticated request
	flushed  atomic.Int64  // lastUsed as last written back by Used
}

// Keyring is the set of valid keys, indexed by secret hash, access key ID and
// key ID.
type Keyring struct {
	mu       sync.RWMutex // guards the three maps
	byHash   map[[sha256.Size]byte]*entry
	byAccess map[string]*entry
	byID     map[string]*entry
}

// Put adds k (replacing the key with the same ID, so that a rotated secret
// stops working at once). sigv4Secret is its secret access key in the clear.
func (kr *Keyring) Put(k ebb.Key, sigv4Secret string) error {
	h, err := hex.DecodeString(k.Hash)
	if err != nil || len(h) != sha256.Size {
		return fmt.Errorf("add key %s: hash is not a hex sha256", k.ID)
	}
	e := &entry{key: k, secret: sigv4Secret}
	copy(e.hash[:], h)
	if k.RPS > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(k.RPS), max(1, int(math.Ceil(k.RPS))))
	}
	if !k.LastUsed.IsZero() {
		e.lastUsed.Store(k.LastUsed.UnixNano())
		e.flushed.Store(k.LastUsed.UnixNano())
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if kr.byID == nil {
		kr.byHash, kr.byAccess, kr.byID = map[[sha256.Size]byte]*entry{}, map[string]*entry{}, map[string]*entry{}
	}
	if old := kr.byID[k.ID]; old != nil {
		kr.removeLocked(old)
	}
	kr.byID[k.ID] = e
	kr.byHash[e.hash] = e
	if k.AccessKeyID != "" {
		kr.byAccess[k.AccessKeyID] = e
	}
	return nil
}

func (kr *Keyring) removeLocked(e *entry) {
	delete(kr.byID, e.key.ID)
	if kr.byHash[e.hash] == e {
		delete(kr.byHash, e.hash)
	}
	if e.key.AccessKeyID != "" && kr.byAccess[e.key.AccessKeyID] == e {
		delete(kr.byAccess, e.key.AccessKeyID)
	}
}

// Remove revokes the key with this ID at once.
func (kr *Keyring) Remove(id string) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if e := kr.byID[id]; e != nil {
		kr.removeLocked(e)
	}
}

// Len is the number of keys.
func (kr *Keyring) Len() int {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return len(kr.byID)
}

// Get returns the key with this ID, with its last use.
func (kr *Keyring) Get(id string) (ebb.Key, bool) {
	kr.mu.RLock()
	e := kr.byID[id]
	kr.mu.RUnlock()
	if e == nil {
		return ebb.Key{}, false
	}
	return e.current(), true
}

func (e *entry) current() ebb.Key {
	k := e.key
	if n := e.lastUsed.Load(); n != 0 {
		k.LastUsed = time.Unix(0, n).UTC()
	}
	return k
}

// Used returns the keys used since the last call, with their last use, for
// writing back to the store.
func (kr *Keyring) Used() []ebb.Key {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	var out []ebb.Key
	for _, e := range kr.byID {
		n := e.lastUsed.Load()
		if n != 0 && e.flushed.Swap(n) != n {
			out = append(out, e.current())
		}
	}
	return out
}

// Authenticator finds the key a request carries.
type Authenticator struct {
	Keys *Keyring
	// MaxSignedBody bounds the body read to check a SigV4 payload hash.
	MaxSignedBody int64
	Now           func() time.Time
}

// ErrSignedBodyTooLarge is a SigV4-signed body over MaxSignedBody: 413.
var ErrSignedBodyTooLarge = errors.New("the signed request body is larger than the limit")

// Authenticate returns the principal of r: a bearer secret (Authorization:
// Bearer or X-Api-Key) or a SigV4 signature (header or query string). A
// SigV4-signed body is read to check its hash and put back in r.Body.
func (a *Authenticator) Authenticate(r *http.Request) (*Principal, error) {
	now := a.Now()
	authz := r.Header.Get("Authorization")
	switch {
	case isSigV4Header(authz):
		q, err := parseSigV4Header(authz, r.Header)
		if err != nil {
			return nil, err
		}
		return a.sigv4(r, q, now)
	case authz != "" && len(authz) > 7 && strings.EqualFold(authz[:7], "bearer "):
		return a.bearer(strings.TrimSpace(authz[7:]), "bearer", now)
	case r.Header.Get("X-Api-Key") != "":
		return a.bearer(strings.TrimSpace(r.Header.Get("X-Api-Key")), "x-api-key", now)
	case isSigV4Query(r.URL.RawQuery):
		q, err := parseSigV4Query(r.URL.Query())
		if err != nil {
			return nil, err
		}
		return a.sigv4(r, q, now)
	}
	return nil, ErrNoCredentials
}

func (a *Authenticator) bearer(secret, via string, now time.Time) (*Principal, error) {
	if secret == "" {
		return nil, ErrNoCredentials
	}
	h := sha256.Sum256([]byte(secret))
	a.Keys.mu.RLock()
	e := a.Keys.byHash[h]
	a.Keys.mu.RUnlock()
	if e == nil {
		return nil, ErrUnknownKey
	}
	return a.admit(e, via, now)
}

func (a *Authenticator) admit(e *entry, via string, now time.Time) (*Principal, error) {
	if e.key.Expired(now) {
		return nil, ErrExpired
	}
	if e.limiter != nil && !e.limiter.AllowN(now, 1) {
		return nil, &RateLimitedError{KeyID: e.key.ID, RetryAfter: TokenWait(e.limiter, now)}
	}
	e.lastUsed.Store(now.UnixNano())
	return &Principal{Key: e.key, Via: via}, nil
}

func (a *Authenticator) sigv4(r *http.Request, q *sigv4Request, now time.Time) (*Principal, error) {
	if err := q.checkTime(now); err != nil {
		return nil, err
	}
	a.Keys.mu.RLock()
	e := a.Keys.byAccess[q.accessKey]
	a.Keys.mu.RUnlock()
	if e == nil || e.secret == "" {
		return nil, errUnrecognized
	}
	if e.key.Expired(now) {
		return nil, &SigV4Error{"UnrecognizedClientException", "The security token included in the request has expired."}
	}
	body, err := a.readBody(r)
	if err != nil {
		return nil, err
	}
	if err := verifySigV4(r, q, e.secret, hashBody(body)); err != nil {
		return nil, err
	}
	return a.admit(e, "sigv4", now)
}

// readBody reads a signed body (bounded) and puts it back for the handler.
func (a *Authenticator) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, nil
	}
	limit := a.MaxSignedBody
	if limit <= 0 {
		limit = 6 << 20
	}
	if r.ContentLength > limit {
		return nil, ErrSignedBodyTooLarge
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read signed body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, ErrSignedBodyTooLarge
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, nil
}

// TokenWait is how long until l has a whole token at now. AllowN, unlike a
// cancelled reservation, takes nothing from a bucket it refuses, so that
// refused requests never eat the tokens of later ones.
func TokenWait(l *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - l.TokensAt(now)
	if missing <= 0 || l.Limit() <= 0 {
		return time.Second
	}
	return time.Duration(missing / float64(l.Limit()) * float64(time.Second))
}

// NewAccessKey returns a new AWS-style credential pair: an access key ID
// ("EBB" and 17 base32 characters, the shape of AWS's "AKIA…") and a
// 40-character secret.
func NewAccessKey() (id, secret string) {
	var b [11]byte
	rand.Read(b[:])
	id = "EBB" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])[:17]
	var s [30]byte
	rand.Read(s[:])
	secret = base64.StdEncoding.EncodeToString(s[:])
	return id, secret
}

// Strip removes ebb's credentials from r before the function sees it: an
// Authorization header with an ebb secret or a SigV4 signature, X-Api-Key
// (any value when keyed is set, an ebb secret otherwise), the SigV4 headers,
// and the SigV4 query parameters. A public URL's own Authorization header
// (keyed false, not ebb's) passes through unchanged.
func Strip(r *http.Request, keyed bool) {
	h := r.Header
	if v, ok := h["Authorization"]; ok && len(v) > 0 {
		a := v[0]
		if isSigV4Header(a) || (len(a) > 7 && strings.EqualFold(a[:7], "bearer ") && IsEbbSecret(a[7:])) {
			delete(h, "Authorization")
		}
	}
	if v, ok := h["X-Api-Key"]; ok && (keyed || len(v) > 0 && IsEbbSecret(v[0])) {
		delete(h, "X-Api-Key")
	}
	for _, k := range sigv4Headers {
		if _, ok := h[k]; ok {
			delete(h, k)
		}
	}
	// A parameter's name may come percent-encoded (X%2DAmz-Signature is
	// X-Amz-Signature to the query parser that authenticated it), so only
	// a query with neither is certain to carry none.
	if q := r.URL.RawQuery; q != "" && (strings.Contains(q, "X-Amz-") || strings.Contains(q, "%")) {
		r.URL.RawQuery = stripQuery(q)
		r.URL.ForceQuery = false
	}
}

var sigv4Headers = []string{"X-Amz-Date", "X-Amz-Content-Sha256", "X-Amz-Security-Token"}

var sigv4Params = map[string]bool{
	"X-Amz-Algorithm": true, "X-Amz-Credential": true, "X-Amz-Date": true, "X-Amz-Expires": true,
	"X-Amz-SignedHeaders": true, "X-Amz-Signature": true, "X-Amz-Security-Token": true,
}

// stripQuery drops the SigV4 parameters from a raw query, keeping the rest
// as it was sent (order and encoding).
func stripQuery(q string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(q, "&") {
		name, _, _ := strings.Cut(part, "=")
		if n, err := urlUnescape(name); err == nil && sigv4Params[n] {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

func urlUnescape(s string) (string, error) { return url.QueryUnescape(s) }

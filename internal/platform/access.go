package platform

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/ebb-run/ebb"
	"github.com/ebb-run/ebb/internal/api"
	"github.com/ebb-run/ebb/internal/auth"
	"github.com/ebb-run/ebb/internal/gateway"
	"github.com/ebb-run/ebb/internal/logbuf"
	"github.com/ebb-run/ebb/internal/route"
	"github.com/ebb-run/ebb/internal/store"
	"github.com/ebb-run/ebb/web"
)

// This file is access control as the platform wires it: keys (kept in the
// store, held in an auth.Keyring), the audit log, function URLs' auth and
// rate limits, and the route table that puts them in front of every handler.

// kekFile, under the data directory, holds the key-encryption key that seals
// SigV4 secrets in the store. It never enters the store: a copy of the
// keys bucket alone yields no credential.
const kekFile = "keys.kek"

// lastUsedFlush is how often keys' last-use times are written back.
const lastUsedFlush = time.Minute

// openSealer reads (or makes, 0600) the key-encryption key.
func (p *Platform) openSealer() error {
	path := filepath.Join(p.cfg.DataDir, kekFile)
	kek, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		kek = make([]byte, 32)
		rand.Read(kek)
		f, cerr := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if cerr != nil {
			return fmt.Errorf("create key-encryption key: %w", cerr)
		}
		_, werr := f.Write(kek)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(path)
			return fmt.Errorf("write key-encryption key: %w", werr)
		}
	} else if err != nil {
		return fmt.Errorf("read key-encryption key: %w", err)
	}
	s, err := auth.NewSealer(kek)
	if err != nil {
		return fmt.Errorf("key-encryption key %s: %w", path, err)
	}
	p.sealer = s
	return nil
}

// loadKeys reads the API keys into memory, and makes an admin key when auth
// is required and there is no live one (returned, to be shown once).
func (p *Platform) loadKeys(ctx context.Context) (string, error) {
	if err := p.openSealer(); err != nil {
		return "", err
	}
	keys, err := p.store.ListKeys(ctx)
	if err != nil {
		return "", fmt.Errorf("load api keys: %w", err)
	}
	admin := false
	for _, k := range keys {
		p.holdKey(k)
		admin = admin || (k.Role == ebb.RoleAdmin && !k.Expired(p.cfg.Now()))
	}
	// Keys made while none were required (on loopback) may all be scoped:
	// without a live admin key nobody could manage the others.
	if !p.cfg.RequireAuth || admin {
		return "", nil
	}
	created, err := p.CreateKey(ctx, api.KeyRequest{Role: ebb.RoleAdmin, Name: "admin"})
	if err != nil {
		return "", fmt.Errorf("store admin key: %w", err)
	}
	return created.Key, nil
}

// holdKey puts a stored key in the keyring, unsealing its SigV4 secret. A
// secret that cannot be unsealed (another node's key-encryption key) leaves
// the key usable as a bearer key only.
func (p *Platform) holdKey(k ebb.Key) {
	var secret string
	if k.SealedSecret != "" {
		s, err := p.sealer.Open(k.ID, k.SealedSecret)
		if err != nil {
			p.log.Warn("key's SigV4 secret cannot be unsealed; it works as a bearer key only", "key", k.ID, "err", err)
		}
		secret = s
	}
	if err := p.keys.Put(k, secret); err != nil {
		p.log.Error("skipping key", "key", k.ID, "err", err)
	}
}

// CreateKey implements api.Keys.
func (p *Platform) CreateKey(ctx context.Context, req api.KeyRequest) (*api.KeyCreated, error) {
	k := ebb.Key{Role: req.Role, Name: req.Name, Functions: req.Functions, RPS: req.RPS, CreatedAt: p.cfg.Now().UTC()}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	if req.Expires != "" {
		d, err := api.ParseLifetime(req.Expires)
		if err != nil {
			return nil, &ebb.FieldError{Field: "expires", Reason: err.Error()}
		}
		k.ExpiresAt = k.CreatedAt.Add(d)
	}
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	for range 8 {
		k.ID = auth.NewID()
		secret, sigSecret := p.newSecrets(&k)
		err := p.store.CreateKey(ctx, k)
		if errors.Is(err, store.ErrKeyIDInUse) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p.holdKey(k)
		return created(k, secret, sigSecret), nil
	}
	return nil, errors.New("create key: no free key id after 8 draws")
}

// newSecrets draws k's bearer secret and SigV4 pair, storing their hash and
// sealed form in k.
func (p *Platform) newSecrets(k *ebb.Key) (secret, sigSecret string) {
	secret, k.Hash = auth.NewSecret()
	k.AccessKeyID, sigSecret = auth.NewAccessKey()
	k.SealedSecret = p.sealer.Seal(k.ID, sigSecret)
	return secret, sigSecret
}

func created(k ebb.Key, secret, sigSecret string) *api.KeyCreated {
	c := &api.KeyCreated{KeyIssued: api.KeyIssued{ID: k.ID, Key: secret, AccessKeyID: k.AccessKeyID, SecretAccessKey: sigSecret, Role: k.Role,
		Functions: k.Functions}, Name: k.Name, RPS: k.RPS}
	if c.Functions == nil {
		c.Functions = []string{}
	}
	if !k.ExpiresAt.IsZero() {
		t := k.ExpiresAt
		c.Expires = &t
	}
	return c
}

// ListKeys implements api.Keys.
func (p *Platform) ListKeys(ctx context.Context) ([]api.KeyInfo, error) {
	keys, err := p.store.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.KeyInfo, 0, len(keys))
	for _, k := range keys {
		if held, ok := p.keys.Get(k.ID); ok && held.LastUsed.After(k.LastUsed) {
			k.LastUsed = held.LastUsed
		}
		info := api.KeyInfo{ID: k.ID, Name: k.Name, Role: k.Role, Functions: k.Functions, RPS: k.RPS,
			AccessKeyID: k.AccessKeyID, CreatedAt: k.CreatedAt}
		if info.Functions == nil {
			info.Functions = []string{}
		}
		if !k.ExpiresAt.IsZero() {
			t := k.ExpiresAt
			info.Expires = &t
		}
		if !k.LastUsed.IsZero() {
			t := k.LastUsed
			info.LastUsed = &t
		}
		out = append(out, info)
	}
	return out, nil
}

// RevokeKey implements api.Keys: the key stops working on this node before
// the call returns, and on others as soon as they see the store's change.
func (p *Platform) RevokeKey(ctx context.Context, id string) error {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	p.keys.Remove(id)
	if err := p.store.DeleteKey(ctx, id); err != nil {
		if k, gerr := p.store.GetKey(ctx, id); gerr == nil {
			p.holdKey(*k) // still stored: keep it working as stored
		}
		return err
	}
	return nil
}

// RotateKey implements api.Keys: the same key (ID, role, scope) with a new
// bearer secret and SigV4 pair; the old ones stop working at once.
func (p *Platform) RotateKey(ctx context.Context, id string) (*api.KeyCreated, error) {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	k, err := p.store.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	secret, sigSecret := p.newSecrets(k)
	if err := p.store.UpdateKey(ctx, *k); err != nil {
		return nil, err
	}
	p.holdKey(*k)
	return created(*k, secret, sigSecret), nil
}

// Audit implements api.Keys.
func (p *Platform) Audit(ctx context.Context, since time.Time, limit int) ([]api.AuditEntry, error) {
	recs, err := p.store.Audit(ctx, since, limit)
	if err != nil {
		return nil, err
	}
	out := make([]api.AuditEntry, len(recs))
	for i, r := range recs {
		out[i] = api.AuditEntry{Seq: r.Seq, Time: r.Time, KeyID: r.KeyID, KeyName: r.KeyName, Action: r.Action,
			Target: r.Target, Status: r.Status, Remote: r.Remote}
	}
	return out, nil
}

// auditor writes route.Records to the store's audit stream.
type auditor struct{ p *Platform }

func (a auditor) Audit(ctx context.Context, r route.Record) {
	// The action is done; its record must not be lost to the client going
	// away, so it gets its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	err := a.p.store.AppendAudit(ctx, store.AuditRecord{Time: r.Time.UTC(), KeyID: r.KeyID, KeyName: r.KeyName,
		Action: r.Action, Target: r.Target, Status: r.Status, Remote: r.Remote})
	if err != nil {
		a.p.log.Error("write audit record", "action", r.Action, "target", r.Target, "err", err)
	}
}

// keysLoop follows key changes made through other nodes and writes back
// last-use times, until the platform closes.
func (p *Platform) keysLoop(events <-chan store.KeyEvent) {
	t := time.NewTicker(lastUsedFlush)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			p.flushLastUsed()
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			p.syncKey(ev.ID)
		case <-t.C:
			p.flushLastUsed()
		}
	}
}

// syncKey makes the keyring hold key id as the store has it now. An event
// can be older than a change this node has made since (a create or rotate
// seen after the revoke or rotate that followed it): applying the event's
// key would bring a revoked key or a rotated secret back until the next
// event. Under keysMu, no change of this node's runs between the read and
// the keyring's update.
func (p *Platform) syncKey(id string) {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	ctx, cancel := context.WithTimeout(p.ctx, storeTimeout)
	k, err := p.store.GetKey(ctx, id)
	cancel()
	switch {
	case errors.Is(err, ebb.ErrNotFound):
		p.keys.Remove(id)
	case err != nil:
		p.log.Warn("read changed key", "key", id, "err", err)
	default:
		if held, ok := p.keys.Get(id); !ok || held.Hash != k.Hash || !slices.Equal(held.Functions, k.Functions) ||
			held.Role != k.Role || held.ExpiresAt != k.ExpiresAt || held.RPS != k.RPS {
			p.holdKey(*k)
		}
	}
}

func (p *Platform) flushLastUsed() {
	for _, k := range p.keys.Used() {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		stored, err := p.store.GetKey(ctx, k.ID)
		if err == nil && stored.Hash == k.Hash {
			stored.LastUsed = k.LastUsed
			err = p.store.UpdateKey(ctx, *stored)
		}
		cancel()
		if err != nil && !errors.Is(err, ebb.ErrNotFound) {
			p.log.Warn("write key last use", "key", k.ID, "err", err)
		}
	}
}

// PublicURL implements route.Functions.
func (p *Platform) PublicURL(name string) bool {
	p.mu.RLock()
	f := p.fns[name]
	public := f != nil && f.latest.fn.Spec.PublicURL()
	p.mu.RUnlock()
	return public
}

// AllowInvoke implements route.Functions: a token of the function's
// rate_limit, the same for every protocol.
func (p *Platform) AllowInvoke(name string) (bool, time.Duration) {
	p.mu.RLock()
	var lim *rate.Limiter
	if f := p.fns[name]; f != nil {
		lim = f.limiter
	}
	p.mu.RUnlock()
	if lim == nil {
		return true, 0
	}
	// The clock is read only for a function that has a limit.
	now := p.cfg.Now()
	if lim.AllowN(now, 1) {
		return true, 0
	}
	return false, auth.TokenWait(lim, now)
}

// newLimiter is a function's rate_limit as a token bucket, nil for none.
func newLimiter(s *ebb.Spec) *rate.Limiter {
	if s.RateLimit == nil {
		return nil
	}
	return rate.NewLimiter(rate.Limit(s.RateLimit.RPS), s.RateLimit.Burst)
}

// Function implements gateway.Catalog.
func (p *Platform) Function(t gateway.Target) (*ebb.Function, error) {
	if t.Qualifier == "" {
		// Unqualified, Lambda describes $LATEST: the newest version.
		t.Qualifier = "latest"
	}
	v, err := p.resolve(t)
	if err != nil {
		return nil, err
	}
	return v.fn, nil
}

// Functions implements gateway.Catalog.
func (p *Platform) Functions() []*ebb.Function {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*ebb.Function, 0, len(p.fns))
	for _, f := range p.fns {
		out = append(out, f.latest.fn)
	}
	return out
}

// tailBatch is how many log lines Tail reads at a time.
const tailBatch = 256

// LogMark implements gateway.Catalog.
func (p *Platform) LogMark(name string) uint64 {
	return p.logs.Next(name)
}

// Tail implements gateway.Catalog: the invocation's own log lines, the last
// gateway.MaxTailBytes of them, as Lambda's LogType Tail.
func (p *Platform) Tail(ctx context.Context, name, requestID string, mark uint64) []byte {
	var text []byte
	collect := func(lines []logbuf.Line) {
		for _, l := range lines {
			if l.RequestID == requestID {
				text = append(text, l.Text...)
				text = append(text, '\n')
			}
		}
	}
	// From the mark only, a bounded read at a time: a caller asking for
	// Tail on every invoke must not make ebb copy every line it keeps.
	lines, next := p.logs.Since(name, mark, tailBatch)
	collect(lines)
	// Every line is in: the invocation was made WithLogSync.
	for len(lines) == tailBatch {
		lines, next = p.logs.Since(name, next, tailBatch)
		collect(lines)
	}
	if len(text) > gateway.MaxTailBytes {
		text = text[len(text)-gateway.MaxTailBytes:]
	}
	return text
}

// buildHandler makes the route table of the whole HTTP surface.
func (p *Platform) buildHandler() error {
	gw, err := gateway.New(gateway.Config{Backend: p, MaxSyncPayload: p.cfg.MaxSyncPayload, Enqueuer: p,
		MaxAsyncPayload: p.async.queue.MaxPayload(), Catalog: p, Logger: p.log})
	if err != nil {
		return err
	}
	a, err := api.New(api.Config{Platform: p, Logs: p.logs, MaxBundleBytes: p.cfg.MaxBundleBytes, BaseURL: p.cfg.BaseURL,
		Keys: p, Usage: p, Node: api.Node{MemoryMiB: p.cfg.NodeMemoryMiB, CPUs: p.cfg.NodeCPUs}, NodeCostPerHour: p.cfg.NodeCostPerHour, Logger: p.log, Monitor: p, Warm: p,
		Nodes: p})
	if err != nil {
		return err
	}
	own := []route.Route{
		{Pattern: "GET /metrics", Perm: auth.PermMetrics, Handler: p.metrics.Handler().ServeHTTP},
		{Pattern: "GET /healthz", Handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"status":"ok","sandbox":"` + p.SandboxMode() + `"}` + "\n"))
		}},
	}
	rc := route.Config{Functions: p, Auditor: auditor{p}, Metrics: p.metrics, LoopbackHosts: p.cfg.LoopbackHosts,
		AllowedHosts: slices.Clone(p.cfg.AllowedHosts), CORSOrigins: p.cfg.CORSOrigins, Logger: p.log, Now: p.cfg.Now}
	if p.cfg.RequireAuth {
		rc.Auth = &auth.Authenticator{Keys: &p.keys, MaxSignedBody: p.cfg.MaxSyncPayload, Now: p.cfg.Now}
	}
	t, err := route.New(rc, p.clusterRoutes(gw.Routes()), a.Routes(), p.asyncRoutes(), own, web.Routes())
	if err != nil {
		return fmt.Errorf("platform config: %w", err)
	}
	p.handler = withTraceContext(recoverer(t, p.log))
	return nil
}

package platform

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/ebb-run/ebb"
)

// This file is the platform's garbage collector: bundle directories
// (DATA/bundles), stored bundles (the object store) and model-cache entries
// (DATA/models) that no kept version references are removed, and what a
// crash left half-written is removed at start.

// referenced returns the digests of the bundles that must be kept: those of
// every kept version, until it is removed (ebb rm NAME --version N, or the
// function's removal), in the store (cluster-wide) or on this node, and of
// versions draining here; a deploy in progress pins its digest. This is the
// one place that decides what "kept" means.
func (p *Platform) referenced(ctx context.Context) (map[string]bool, error) {
	fns, err := p.store.ListFunctions(ctx)
	if err != nil {
		return nil, err
	}
	kept, err := p.store.ListAllVersions(ctx)
	if err != nil {
		return nil, err
	}
	refs := map[string]bool{}
	for _, fn := range fns {
		refs[fn.Digest] = true
	}
	for _, fn := range kept {
		refs[fn.Digest] = true
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, f := range p.fns {
		for _, v := range f.versions {
			refs[v.fn.Digest] = true
		}
	}
	for d := range p.draining {
		refs[d.fn.Digest] = true
	}
	for digest := range p.pinned {
		refs[digest] = true
	}
	return refs, nil
}

// pin protects digest from the collector while a deploy uses it. It waits
// for a collection under way: one that took its snapshot of what is kept
// before this pin would otherwise remove the directory the deploy is about
// to unpack.
func (p *Platform) pin(digest string) {
	p.gcMu.Lock()
	defer p.gcMu.Unlock()
	p.mu.Lock()
	p.pinned[digest]++
	p.mu.Unlock()
}

func (p *Platform) unpin(digest string) {
	p.mu.Lock()
	if p.pinned[digest]--; p.pinned[digest] <= 0 {
		delete(p.pinned, digest)
	}
	p.mu.Unlock()
}

// dropUnused removes the local directory of digest after a failed deploy,
// unless a kept version (or another deploy) uses it. The stored object, if
// the deploy got that far, is left to the collector and its grace period.
func (p *Platform) dropUnused(digest string) {
	p.gcMu.Lock()
	defer p.gcMu.Unlock()
	p.mu.RLock()
	used := p.pinned[digest] > 1 // the failed deploy still holds one pin
	for _, f := range p.fns {
		for _, v := range f.versions {
			used = used || v.fn.Digest == digest
		}
	}
	for d := range p.draining {
		used = used || d.fn.Digest == digest
	}
	p.mu.RUnlock()
	if used {
		return
	}
	if fn, err := p.usedInRegistry(digest); err != nil || fn {
		return
	}
	p.removeBundleDir(digest)
}

func (p *Platform) usedInRegistry(digest string) (bool, error) {
	ctx, cancel := context.WithTimeout(p.ctx, storeTimeout)
	defer cancel()
	fns, err := p.store.ListFunctions(ctx)
	if err != nil {
		return false, err
	}
	kept, err := p.store.ListAllVersions(ctx)
	if err != nil {
		return false, err
	}
	for _, fn := range append(fns, kept...) {
		if fn.Digest == digest {
			return true, nil
		}
	}
	return false, nil
}

// collectLoop collects at start and then every GCGrace (at least a minute)
// until the platform closes; drains and removals also collect as they end.
func (p *Platform) collectLoop() {
	p.collect(p.ctx)
	t := time.NewTicker(max(p.cfg.GCGrace, time.Minute))
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.collect(p.ctx)
		}
	}
}

// collectSoon collects in the background: after a removal, whose bundles
// are no longer kept.
func (p *Platform) collectSoon() {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.collect(p.ctx)
	}()
}

// collect removes what no kept version references: local bundle
// directories, stored bundles older than GCGrace (a deploy on another node
// stores its bundle before it registers the version), and model-cache
// entries that no bundle links to any more. Errors are logged: the next
// collection tries again.
func (p *Platform) collect(ctx context.Context) {
	p.gcMu.Lock()
	defer p.gcMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	refs, err := p.referenced(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("collect garbage: list kept versions", "err", err)
		}
		return
	}
	entries, _ := os.ReadDir(filepath.Join(p.cfg.DataDir, "bundles"))
	for _, e := range entries {
		if name := e.Name(); validDigest(name) && !refs[name] {
			p.removeBundleDir(name)
		}
	}
	stored, err := p.store.ListBundles(ctx)
	if err != nil {
		p.log.Warn("collect garbage: list stored bundles", "err", err)
	}
	for _, b := range stored {
		if refs[b.Digest] || p.cfg.Now().Sub(b.ModTime) < p.cfg.GCGrace {
			continue
		}
		if err := p.store.DeleteBundle(ctx, b.Digest); err != nil && !errors.Is(err, ebb.ErrNotFound) {
			p.log.Warn("collect garbage: delete stored bundle", "digest", b.Digest, "err", err)
			continue
		}
		p.log.Info("deleted unused stored bundle", "digest", b.Digest, "bytes", b.Size)
	}
	p.collectModels()
}

// collectModels removes cached models that no bundle uses any more.
func (p *Platform) collectModels() {
	freed, err := p.models.Prune()
	if err != nil {
		p.log.Warn("collect garbage: prune model cache", "err", err)
	}
	if freed > 0 {
		p.log.Info("removed unused cached models", "bytes", freed)
	}
}

func (p *Platform) removeBundleDir(digest string) {
	dir := filepath.Join(p.cfg.DataDir, "bundles", digest)
	// Renamed out of the way first, so that a half-removed directory is
	// never taken for a bundle; the start-up sweep finishes a crashed removal.
	trash, err := os.MkdirTemp(filepath.Join(p.cfg.DataDir, "tmp"), "trash-*")
	if err != nil {
		p.log.Warn("collect garbage: remove bundle dir", "digest", digest, "err", err)
		return
	}
	if err := os.Rename(dir, filepath.Join(trash, "b")); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("collect garbage: remove bundle dir", "digest", digest, "err", err)
	}
	if err := os.RemoveAll(trash); err != nil {
		p.log.Warn("collect garbage: remove bundle dir", "digest", digest, "err", err)
	}
}

// sweepTemp removes what a crash left behind: uploads and staging dirs in
// DATA/tmp, bundle directories half-unpacked beside their final name, and
// half-written model-cache files. It runs at start, before anything uses
// the data directory (the store's lock makes this node its only user).
func (p *Platform) sweepTemp() {
	for _, pat := range []string{"tmp/*", "bundles/.*", "models/.incoming-*"} {
		matches, _ := filepath.Glob(filepath.Join(p.cfg.DataDir, pat))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				p.log.Warn("remove leftover temporary file", "err", err)
			}
		}
	}
}

// validDigest says whether s is a lowercase hex sha256, the name of a bundle.
func validDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

package platform

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sync"

	"github.com/ebb-run/ebb/internal/sandbox"
)

// openSandbox sets up the sandbox (sandbox.New probes what the host allows)
// and makes the bundles directory reachable by the function uids once, so
// that each version's code needs no mount of its own. tag names this data
// directory's view, as it names its cgroup.
func (p *Platform) openSandbox(tag []byte) error {
	cfg := p.cfg.Sandbox
	cfg.Logger = p.log
	if cfg.ViewDir == "" {
		cfg.ViewDir = defaultViewDir(hex.EncodeToString(tag))
	}
	sb, err := sandbox.New(cfg)
	if err != nil {
		return err
	}
	p.sandbox = sb
	p.uids = newUIDAllocator(sb.UIDs())
	if !sb.Enabled() {
		return nil // sandbox.New said why, once
	}
	bundles := filepath.Join(p.cfg.DataDir, "bundles")
	if _, err := sb.Reach(bundles); err != nil {
		sb.Close()
		return fmt.Errorf("open sandbox: %w", err)
	}
	p.log.Info("sandbox on", "uids", sb.UIDs().String(), "view", cfg.ViewDir)
	return nil
}

// defaultViewDir is under /run (a tmpfs everyone may search) when there is
// one, else /dev/shm.
func defaultViewDir(tag string) string {
	for _, parent := range []string{"/run", "/dev/shm"} {
		if fi, err := os.Stat(parent); err == nil && fi.IsDir() && fi.Mode().Perm()&0o001 != 0 {
			return filepath.Join(parent, "ebb-sandbox-"+tag)
		}
	}
	return filepath.Join(os.TempDir(), "ebb-sandbox-"+tag)
}

func (p *Platform) closeSandbox() {
	if p.sandbox != nil {
		if err := p.sandbox.Close(); err != nil {
			p.log.Warn("close sandbox", "err", err)
		}
	}
}

// SandboxMode is "on" when functions run sandboxed, else "off".
func (p *Platform) SandboxMode() string {
	if p.sandbox == nil {
		return sandbox.ModeOff
	}
	return p.sandbox.Mode()
}

// uidAllocator gives each function name its own host uid from the sandbox's
// range (its first id is the sandbox group, not a function's). A name keeps
// its uid while ebb runs and until the function is removed and its last
// process gone (release); it starts at a hash of the name, so that it is
// usually the same after a restart, and moves to the next free id on a
// collision, so that two live functions never share one. With every id
// taken, a new function is refused rather than given another's.
type uidAllocator struct {
	first, size uint32

	mu     sync.Mutex // guards byName, taken
	byName map[string]uint32
	taken  map[uint32]string
}

func newUIDAllocator(r sandbox.UIDRange) *uidAllocator {
	return &uidAllocator{first: r.First + 1, size: r.Last - r.First, byName: map[string]uint32{}, taken: map[uint32]string{}}
}

func (a *uidAllocator) uidFor(name string) (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.byName[name]; ok {
		return uid, nil
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	start := h.Sum32() % a.size
	for i := range a.size {
		uid := a.first + (start+i)%a.size
		if _, used := a.taken[uid]; !used {
			a.byName[name], a.taken[uid] = uid, name
			return uid, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d sandbox uids (--sandbox-uids) are held by other functions", errNoUID, a.size)
}

// errNoUID: the uid range is exhausted; widen --sandbox-uids or remove
// functions.
var errNoUID = errors.New("no free sandbox uid")

// release frees name's uid for another function.
func (a *uidAllocator) release(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.byName[name]; ok {
		delete(a.byName, name)
		delete(a.taken, uid)
	}
}

// releaseUIDIfGone frees a removed function's uid once nothing of it runs:
// the name is not deployed again and none of its versions still drains.
func (p *Platform) releaseUIDIfGone(name string) {
	if p.uids == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, live := p.fns[name]; live {
		return
	}
	for d := range p.draining {
		if d.fn.Spec.Name == name {
			return
		}
	}
	p.uids.release(name)
}

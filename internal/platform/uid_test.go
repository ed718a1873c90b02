package platform

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ebb-run/ebb/internal/sandbox"
)

// TestUIDAllocator: every live function has its own uid, never the sandbox
// group's; past the range a new function is refused, not given another's;
// a released uid serves again, and a name keeps its uid while it lives.
func TestUIDAllocator(t *testing.T) {
	r := sandbox.UIDRange{First: 400000, Last: 400004} // the group and 4 function uids
	a := newUIDAllocator(r)
	seen := map[uint32]string{}
	for i := range 4 {
		name := fmt.Sprintf("fn-%d", i)
		uid, err := a.uidFor(name)
		if err != nil {
			t.Fatalf("uidFor(%s): %v", name, err)
		}
		if uid <= r.First || uid > r.Last {
			t.Errorf("uidFor(%s) = %d, outside %d-%d or the group's", name, uid, r.First+1, r.Last)
		}
		if other, dup := seen[uid]; dup {
			t.Errorf("%s and %s share uid %d", name, other, uid)
		}
		seen[uid] = name
		if again, _ := a.uidFor(name); again != uid {
			t.Errorf("uidFor(%s) moved from %d to %d", name, uid, again)
		}
	}
	if uid, err := a.uidFor("one-too-many"); !errors.Is(err, errNoUID) {
		t.Fatalf("a fifth function got uid %d (err %v), want errNoUID", uid, err)
	}
	freed, _ := a.uidFor("fn-2")
	a.release("fn-2")
	uid, err := a.uidFor("one-too-many")
	if err != nil || uid != freed {
		t.Errorf("after a release: uid %d, %v; want the freed %d", uid, err, freed)
	}
	if _, err := a.uidFor("fn-2"); !errors.Is(err, errNoUID) {
		t.Errorf("the released name got a uid back while the range is full: %v", err)
	}
}

// TestRemovedFunctionFreesItsUID: removing a function gives its uid back
// once its processes are gone, so that a deploy-remove cycle cannot use up
// the range.
func TestRemovedFunctionFreesItsUID(t *testing.T) {
	e := start(t, "")
	if e.p.uids == nil {
		t.Skip("sandbox off: no uids")
	}
	e.deploy(goFn(t, "cycle", ""))
	if code, _, _ := e.invoke("cycle", "{}"); code != 200 {
		t.Fatalf("invoke = %d", code)
	}
	e.p.uids.mu.Lock()
	_, held := e.p.uids.byName["cycle"]
	e.p.uids.mu.Unlock()
	if !held {
		t.Fatal("a running function holds no uid")
	}
	if code, _, _ := e.do("DELETE", "/v1/functions/cycle", "", nil); code != 204 {
		t.Fatalf("remove = %d", code)
	}
	waitFor(t, "the removed function's uid to be freed", 30*time.Second, func() bool {
		e.p.uids.mu.Lock()
		defer e.p.uids.mu.Unlock()
		_, held := e.p.uids.byName["cycle"]
		return !held
	})
}

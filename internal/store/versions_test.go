package store

import (
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/ebb-run/ebb"
)

func TestVersionsKeptAndListed(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	s := openStore(t, dir)
	for _, fn := range []*ebb.Function{testFunction("a", 1), testFunction("a", 2), testFunction("ab", 1), testFunction("a", 10)} {
		if err := s.PutVersion(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutVersion(ctx, testFunction("a", 2)); err == nil {
		t.Fatal("a version was replaced: versions must be immutable")
	}
	vs, err := s.ListVersions(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	var nums []int
	for _, v := range vs {
		nums = append(nums, v.Version)
		if v.Spec.Name != "a" {
			t.Fatalf("ListVersions(a) returned %s", v.Spec.Name)
		}
	}
	if !reflect.DeepEqual(nums, []int{1, 2, 10}) {
		t.Fatalf("versions of a = %v, want [1 2 10]", nums)
	}
	if !reflect.DeepEqual(vs[1], testFunction("a", 2)) {
		t.Fatalf("version record changed on the way: %+v", vs[1])
	}
	if err := s.DeleteVersion(ctx, "a", 2); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVersion(ctx, "a", 2); !errors.Is(err, ebb.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	all, err := s.ListAllVersions(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("ListAllVersions = %d, %v; want 3 (a.1, a.10, ab.1)", len(all), err)
	}
	if err := s.DeleteVersions(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if vs, _ := s.ListVersions(ctx, "a"); len(vs) != 0 {
		t.Fatalf("after DeleteVersions: %d left", len(vs))
	}
	if vs, _ := s.ListVersions(ctx, "ab"); len(vs) != 1 {
		t.Fatalf("DeleteVersions(a) touched ab: %d left", len(vs))
	}
}

func TestTrafficCompareAndSet(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t, "")
	tr, err := s.GetTraffic(ctx, "f")
	if err != nil || len(tr.Route) != 0 {
		t.Fatalf("GetTraffic of a new function = %+v, %v", tr, err)
	}
	// Concurrent changes each see the other's: none is lost.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateTraffic(ctx, "f", func(t *ebb.Traffic) error {
				t.Aliases = append(t.Aliases, ebb.Alias{Name: string(rune('a' + i)), Split: ebb.Split{{Version: 1, Percent: 100}}})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	tr, _ = s.GetTraffic(ctx, "f")
	if len(tr.Aliases) != 8 {
		t.Fatalf("%d aliases after 8 concurrent adds", len(tr.Aliases))
	}
	// A change made between the read and the write (here, from inside the
	// change) is not overwritten: the write fails and the change runs again
	// on what is stored.
	calls := 0
	_, err = s.UpdateTraffic(ctx, "f", func(tr *ebb.Traffic) error {
		calls++
		if calls == 1 {
			if _, err := s.UpdateTraffic(ctx, "f", func(t2 *ebb.Traffic) error {
				t2.Aliases = append(t2.Aliases, ebb.Alias{Name: "meanwhile", Split: ebb.Split{{Version: 1, Percent: 100}}})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		tr.Rollback = 7
		return nil
	})
	if tr, _ = s.GetTraffic(ctx, "f"); err != nil || calls != 2 || tr.Alias("meanwhile") == nil || tr.Rollback != 7 {
		t.Fatalf("after a change raced by another: calls %d, aliases %v, rollback %d, err %v; want both changes", calls, tr.Aliases, tr.Rollback, err)
	}
	_, err = s.UpdateTraffic(ctx, "f", func(t *ebb.Traffic) error { t.Aliases = nil; return errors.New("no") })
	if err == nil {
		t.Fatal("a failed change reported success")
	}
	if tr, _ = s.GetTraffic(ctx, "f"); len(tr.Aliases) != 9 {
		t.Fatal("a failed change was stored")
	}
}

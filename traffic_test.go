package ebb

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestPickSharesFollowWeights(t *testing.T) {
	s := Split{{1, 70}, {2, 20}, {3, 10}}
	counts := map[int]int{}
	// Every draw in [0, SplitBuckets) once: the shares are exact.
	for d := range uint32(SplitBuckets) {
		counts[s.Pick("", d)]++
	}
	if want := map[int]int{1: 7000, 2: 2000, 3: 1000}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("draws over every bucket landed %v, want %v", counts, want)
	}
}

func TestPickStickyKeys(t *testing.T) {
	s := Split{{1, 80}, {2, 20}}
	r := rand.New(rand.NewPCG(1, 2))
	onNew := 0
	for i := range 2000 {
		key := fmt.Sprintf("user-%d", i)
		v := s.Pick(key, r.Uint32())
		for range 5 {
			if again := s.Pick(key, r.Uint32()); again != v {
				t.Fatalf("key %q went to %d, then %d", key, v, again)
			}
		}
		if v == 2 {
			onNew++
		}
	}
	// The hash spreads keys: 20% ± 3% of 2,000 keys.
	if onNew < 340 || onNew > 460 {
		t.Fatalf("%d of 2000 keys on the 20%% version", onNew)
	}
	// A key's bucket is fixed by FNV-1a, not by this process.
	if got := KeyBucket("alice"); got != 0x872213e7%SplitBuckets {
		t.Fatalf("KeyBucket(alice) = %d", got)
	}
}

func TestPickSingleIgnoresDraw(t *testing.T) {
	s := Split{{4, 100}}
	for _, d := range []uint32{0, 9999, 1 << 31} {
		if v := s.Pick("k", d); v != 4 {
			t.Fatalf("Pick = %d", v)
		}
	}
	if s.Single() != 4 || (Split{{1, 50}, {2, 50}}).Single() != 0 {
		t.Fatal("Single is wrong")
	}
}

func TestValidateSplit(t *testing.T) {
	exists := func(v int) bool { return v <= 4 }
	got, err := Split{{4, 10}, {3, 90}, {2, 0}}.Validate(exists)
	if err != nil || !reflect.DeepEqual(got, Split{{3, 90}, {4, 10}}) {
		t.Fatalf("Validate = %v, %v", got, err)
	}
	for _, bad := range []Split{nil, {{3, 90}}, {{3, 90}, {5, 10}}, {{3, 50}, {3, 50}}, {{3, 110}, {4, -10}}, {{0, 100}}} {
		if _, err := bad.Validate(exists); err == nil {
			t.Errorf("Validate(%v) accepted", bad)
		}
	}
}

func TestCanary(t *testing.T) {
	cases := []struct {
		from Split
		v, p int
		want Split
	}{
		{Split{{1, 100}}, 2, 20, Split{{1, 80}, {2, 20}}},
		{Split{{1, 50}, {2, 50}}, 3, 10, Split{{1, 45}, {2, 45}, {3, 10}}},
		{Split{{1, 60}, {2, 40}}, 3, 25, Split{{1, 45}, {2, 30}, {3, 25}}},
		{Split{{1, 34}, {2, 33}, {3, 33}}, 4, 1, Split{{1, 33}, {2, 33}, {3, 33}, {4, 1}}},
		{Split{{1, 100}}, 2, 0, Split{{1, 100}}},
		{Split{{1, 100}}, 2, 100, Split{{2, 100}}},
	}
	for _, c := range cases {
		got := c.from.Canary(c.v, c.p)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v.Canary(%d, %d) = %v, want %v", c.from, c.v, c.p, got, c.want)
		}
		if _, err := got.Validate(nil); err != nil {
			t.Errorf("%v.Canary(%d, %d) = %v: %v", c.from, c.v, c.p, got, err)
		}
	}
}

func TestRollbackTarget(t *testing.T) {
	var tr Traffic
	tr.SetRoute(Split{{1, 100}})
	tr.SetRoute(Split{{1, 80}, {2, 20}}) // canary
	if tr.Rollback != 1 {
		t.Fatalf("after a canary Rollback = %d, want 1", tr.Rollback)
	}
	tr.SetRoute(Split{{2, 100}}) // promote
	if tr.Rollback != 1 {
		t.Fatalf("after promote Rollback = %d, want 1 (the version that had it all before)", tr.Rollback)
	}
	tr.SetRoute(Split{{1, 100}}) // rollback
	if tr.Rollback != 2 {
		t.Fatalf("after rollback Rollback = %d, want 2", tr.Rollback)
	}
	tr.SetRoute(Split{{1, 100}}) // no change
	if tr.Rollback != 2 {
		t.Fatalf("an unchanged route moved Rollback to %d", tr.Rollback)
	}
}

func TestTrafficUses(t *testing.T) {
	tr := Traffic{Route: Split{{2, 90}, {3, 10}}, Aliases: []Alias{{Name: "prod", Split: Split{{1, 100}}}}}
	if tr.Uses(1) == "" || tr.Uses(3) == "" || tr.Uses(4) != "" {
		t.Fatalf("Uses: 1=%q 3=%q 4=%q", tr.Uses(1), tr.Uses(3), tr.Uses(4))
	}
	if got := tr.Versions(); !reflect.DeepEqual(got, []int{1, 2, 3}) {
		t.Fatalf("Versions = %v", got)
	}
}

func TestValidAliasAndParse(t *testing.T) {
	for _, ok := range []string{"prod", "a", "blue-green", "v2_beta"} {
		if err := ValidAlias(ok); err != nil {
			t.Errorf("ValidAlias(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "3", "Prod", "latest", "a:b", "a/b"} {
		if ValidAlias(bad) == nil {
			t.Errorf("ValidAlias(%q) accepted", bad)
		}
	}
	s, err := ParseSplit([]string{"3=90", "4=10%"})
	if err != nil || !reflect.DeepEqual(s, Split{{3, 90}, {4, 10}}) {
		t.Fatalf("ParseSplit = %v, %v", s, err)
	}
	for _, bad := range []string{"3", "x=1", "3=a", "0=100"} {
		if _, err := ParseSplit([]string{bad}); err == nil {
			t.Errorf("ParseSplit(%q) accepted", bad)
		}
	}
	if n, q := SplitQualified("fn:prod"); n != "fn" || q != "prod" {
		t.Fatalf("SplitQualified = %q %q", n, q)
	}
}

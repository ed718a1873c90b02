package keepalive

import "testing"

// FuzzParse: a policy that parses has a name that parses back to a policy
// of the same name and settings (Name lists every setting that differs
// from the defaults, exactly), and whose settings pass Validate.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"fixed:10m", "fixed:1h30m", "hybrid", "hybrid:exchange=0s", "hybrid:tail=99,exchange=0s,fallback=4h",
		"hybrid:exchange=30m,exchange-idle=0,exchange-memory=0,search=false", "hybrid:exchange-idle=2.5,exchange-memory=128,search=1",
		"hybrid:bin=30s,range=2h,head=1,margin=0.2,min-samples=3,cv=1.5,oob=0.7,alpha=0.3,forecast-margin=0.2,min-prewarm=0s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		q, err := Parse(p.Name())
		if err != nil {
			t.Fatalf("Parse(%q).Name() = %q does not parse: %v", s, p.Name(), err)
		}
		if q.Name() != p.Name() {
			t.Fatalf("Parse(%q).Name() = %q parses to %q", s, p.Name(), q.Name())
		}
		if h, ok := p.(*Hybrid); ok {
			if g := q.(*Hybrid); *g != *h {
				t.Fatalf("Parse(%q) = %+v, its name %q parses to %+v", s, *h, p.Name(), *q.(*Hybrid))
			}
			if err := h.Validate(); err != nil {
				t.Fatalf("Parse(%q) accepted settings Validate refuses: %v", s, err)
			}
		}
	})
}

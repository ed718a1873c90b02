package instance

import "testing"

func TestReservePortNeverHandsOutALivePort(t *testing.T) {
	seen := map[int]bool{}
	var got []int
	for range 50 {
		p, err := reservePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice while reserved", p)
		}
		seen[p] = true
		got = append(got, p)
	}
	for _, p := range got {
		releasePort(p)
	}
	ports.mu.Lock()
	n := len(ports.used)
	ports.mu.Unlock()
	if n != 0 {
		t.Errorf("%d ports still reserved after release", n)
	}
}

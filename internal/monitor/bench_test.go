package monitor

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func oipEvent(rows int) Event {
	row := "[" + strings.TrimSuffix(strings.Repeat("0.25,", 64), ",") + "]"
	req := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,64],"data":[%s]}]}`, rows, strings.TrimSuffix(strings.Repeat(row+",", rows), ","))
	orow := "[" + strings.TrimSuffix(strings.Repeat("-1.5,", 10), ",") + "]"
	resp := fmt.Sprintf(`{"model_name":"m","model_version":"1","outputs":[{"name":"logits","datatype":"FP32","shape":[%d,10],"data":[%s]}]}`, rows, strings.TrimSuffix(strings.Repeat(orow+",", rows), ","))
	return Event{Function: "f", Version: 1, At: time.Unix(1e9, 0), Kind: KindOIP, Request: []byte(req), Response: []byte(resp)}
}

// BenchmarkFold is the summariser's work for one inference of 1 or 32
// rows of 64 features (and 10 outputs), as JSON.
func BenchmarkFold(b *testing.B) {
	for _, rows := range []int{1, 32} {
		b.Run(fmt.Sprint(rows, "rows"), func(b *testing.B) {
			m, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			ev := oipEvent(rows)
			b.ReportAllocs()
			for b.Loop() {
				m.fold(&ev)
			}
		})
	}
}

package metrics

import "github.com/prometheus/client_golang/prometheus"

// Warm is the node's budget for warm capacity, read at scrape time.
type Warm struct {
	Limit, Used         uint64 // bytes
	Holders, MaxHolders int
}

// Warm exports the warm budget read by f on every scrape.
func (m *Metrics) Warm(f func() Warm) { m.reg.MustRegister(&warmCollector{f: f}) }

type warmCollector struct{ f func() Warm }

var (
	warmBudgetDesc  = prometheus.NewDesc("ebb_warm_budget_bytes", "The node's budget for warm capacity (--warm-memory): what python zygotes, onnx spares and spare sandboxes may hold ahead of need.", nil, nil)
	warmMemoryDesc  = prometheus.NewDesc("ebb_warm_memory_bytes", "What holders of warm capacity use now (PSS).", nil, nil)
	warmHoldersDesc = prometheus.NewDesc("ebb_warm_holders", "Function versions holding warm capacity.", nil, nil)
	warmMaxDesc     = prometheus.NewDesc("ebb_warm_max_holders", "The most holders of warm capacity at once (--warm-max).", nil, nil)
)

func (c *warmCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- warmBudgetDesc
	ch <- warmMemoryDesc
	ch <- warmHoldersDesc
	ch <- warmMaxDesc
}

func (c *warmCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.f()
	ch <- prometheus.MustNewConstMetric(warmBudgetDesc, prometheus.GaugeValue, float64(w.Limit))
	ch <- prometheus.MustNewConstMetric(warmMemoryDesc, prometheus.GaugeValue, float64(w.Used))
	ch <- prometheus.MustNewConstMetric(warmHoldersDesc, prometheus.GaugeValue, float64(w.Holders))
	ch <- prometheus.MustNewConstMetric(warmMaxDesc, prometheus.GaugeValue, float64(w.MaxHolders))
}

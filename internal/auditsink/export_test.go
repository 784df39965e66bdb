package auditsink

import "github.com/prometheus/client_golang/prometheus"

var Merge = merge

func (e *Exporter) MetricLag(sink string) prometheus.Gauge {
	return e.metrics.lagEvents.WithLabelValues(sink)
}
func (e *Exporter) MetricFailures(sink string) prometheus.Counter {
	return e.metrics.failures.WithLabelValues(sink)
}
func (e *Exporter) MetricDelivered(sink string) prometheus.Counter {
	return e.metrics.deliveredN.WithLabelValues(sink)
}

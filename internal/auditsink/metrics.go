package auditsink

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are labelled by sink name only, which comes from the settings: a bounded set.
type metrics struct {
	lagEvents   *prometheus.GaugeVec
	deliveredN  *prometheus.CounterVec
	failures    *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lagEvents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mandate_audit_sink_lag_events",
			Help: "Events in the audit chain that the sink has not yet received, as of its last read of the chain.",
		}, []string{"sink"}),
		deliveredN: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_audit_sink_delivered_total",
			Help: "Records (events and checkpoints) delivered to the sink, counting each re-delivery.",
		}, []string{"sink"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_audit_sink_failures_total",
			Help: "Failed deliveries of a batch to the sink; each is retried from the sink's cursor.",
		}, []string{"sink"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mandate_audit_sink_last_success_timestamp_seconds",
			Help: "When a batch was last delivered to the sink, in Unix seconds.",
		}, []string{"sink"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.lagEvents, m.deliveredN, m.failures, m.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) lag(sink string, n int64) { m.lagEvents.WithLabelValues(sink).Set(float64(n)) }

func (m *metrics) failed(sink string) { m.failures.WithLabelValues(sink).Inc() }

func (m *metrics) delivered(sink string, n int, now time.Time) {
	m.deliveredN.WithLabelValues(sink).Add(float64(n))
	m.lastSuccess.WithLabelValues(sink).Set(float64(now.UnixNano()) / 1e9)
}

// start makes every series of sink exist from the start, at 0.
func (m *metrics) start(sink string) {
	m.lagEvents.WithLabelValues(sink)
	m.deliveredN.WithLabelValues(sink)
	m.failures.WithLabelValues(sink)
	m.lastSuccess.WithLabelValues(sink)
}

package proxy

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/audit"
)

// metrics are the proxy's Prometheus collectors.
type metrics struct {
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_proxy_calls_total", Help: "Calls through the egress proxy by upstream and outcome (success, denied, failure).",
		}, []string{"upstream", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mandate_proxy_call_duration_seconds", Help: "Duration of proxied calls, bodies included, by upstream and outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"upstream", "outcome"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.calls, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// finish records the call: metrics, and the event that ends it (the completion of its pending
// record, or the one event of a refusal), written after the answer (recorder). rec is a panic
// in flight (http.ErrAbortHandler when the stream broke after the response began).
func (p *Proxy) finish(r *http.Request, c *call, rec any) {
	elapsed := time.Since(c.start)
	if c.reason == "" && c.form != nil {
		// The upstream answered before the body's end: the field was refused all the same.
		if e := c.form.refused.Load(); e != nil {
			c.outcome, c.reason, c.detail = audit.OutcomeDenied, e.reason, e.desc
		}
	}
	switch {
	case rec != nil:
		c.outcome = audit.OutcomeFailure
		if c.reason == "" {
			c.reason = reasonAborted
			if c.stream != nil && c.stream.fired.Load() {
				c.reason = reasonIdleTimeout
			} else if r.Context().Err() != nil {
				c.reason = reasonClientGone
			}
		}
		if rec != http.ErrAbortHandler {
			p.log.ErrorContext(r.Context(), "proxy panic", slog.String("panic", safeError(fmt.Errorf("%v", rec), c.mask)))
		}
	case c.forwarded && c.gotResponse && c.reason == "":
		c.outcome = audit.OutcomeSuccess
	case c.forwarded && c.reason == "":
		c.outcome, c.reason = audit.OutcomeFailure, reasonUpstream
	}
	label := c.name
	if label == "" {
		label = "unknown" // never a client-chosen string: bounded label values
	}
	p.metrics.calls.WithLabelValues(label, string(c.outcome)).Inc()
	p.metrics.latency.WithLabelValues(label, string(c.outcome)).Observe(elapsed.Seconds())

	p.rec.record(r.Context(), p.completion(r.Context(), c, elapsed))
}

// describe is the audit event's detail, one sentence: upstream, method, route pattern, status,
// bytes, latency, and the refusal. Who, for whom and the call itself are the event's fields.
// Never a body, query, token or credential; the path appears only as the route pattern.
func (c *call) describe(elapsed time.Duration) string {
	var b strings.Builder
	b.Grow(256)
	b.WriteString("proxy ")
	if c.name != "" {
		b.WriteString(c.name)
	} else {
		b.WriteString("(unknown upstream)")
	}
	b.WriteString(": ")
	b.WriteString(safeMethod(c.method))
	if c.pattern != "" {
		b.WriteString(" " + c.pattern)
	}
	status := 0
	var out int64
	if c.w != nil {
		status, out = c.w.status, c.w.n
	}
	var in int64
	if c.in != nil {
		in = c.in.n.Load()
	}
	b.WriteString(" -> " + strconv.Itoa(status))
	b.WriteString("; in " + strconv.FormatInt(in, 10) + " B, out " + strconv.FormatInt(out, 10) + " B")
	b.WriteString("; " + strconv.FormatInt(elapsed.Microseconds(), 10) + " us")
	if c.detail != "" && c.outcome != audit.OutcomeSuccess {
		b.WriteString("; " + c.detail)
	}
	return b.String()
}

// safeMethod keeps a client-chosen method printable and short.
func safeMethod(m string) string {
	if len(m) > 20 || strings.ContainsFunc(m, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return "(invalid method)"
	}
	return m
}

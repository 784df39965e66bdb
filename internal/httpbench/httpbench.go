// Package httpbench drives HTTP benchmarks the same way everywhere (the proxy's and the
// server's): requests made before the timer, sent one at a time ("serial": latency) and with
// 4×GOMAXPROCS in flight ("parallel": throughput), reported as req/s, p50 and p99. Tests only.
package httpbench

import (
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// Run sends b.N requests made by mk(i), serial then parallel, each answered 200.
func Run(b *testing.B, client *http.Client, mk func(i int) *http.Request) {
	b.Run("serial", func(b *testing.B) {
		reqs := make([]*http.Request, b.N)
		for i := range reqs {
			reqs[i] = mk(i)
		}
		lat := make([]time.Duration, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			Do(b, client, reqs[i])
			lat[i] = time.Since(t0)
		}
		report(b, lat, time.Since(start))
	})
	b.Run("parallel", func(b *testing.B) {
		reqs := make([]*http.Request, b.N)
		for i := range reqs {
			reqs[i] = mk(i)
		}
		lat := make([]time.Duration, b.N)
		var next atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(4)
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1) - 1
				t0 := time.Now()
				Do(b, client, reqs[i])
				lat[i] = time.Since(t0)
			}
		})
		report(b, lat, time.Since(start))
	})
}

// Do sends r, reads the whole answer, and fails b unless it is 200.
func Do(b *testing.B, c *http.Client, r *http.Request) {
	resp, err := c.Do(r)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

func report(b *testing.B, lat []time.Duration, total time.Duration) {
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(lat))/total.Seconds(), "req/s")
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

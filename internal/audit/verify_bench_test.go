//go:build unix

package audit

import (
	"syscall"
	"testing"
	"time"
)

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkVerify is the pure verifier's time per event over a chain with a checkpoint every
// 1000 events (the default), reported also as seconds per million events.
func BenchmarkVerify(b *testing.B) {
	k := testKeys(b, 1)
	const n = 100_000
	evs := newChain(n)
	var cps []Checkpoint
	for s := int64(1000); s <= n; s += 1000 {
		cps = append(cps, sign(b, k, evs, s))
	}
	ks := k.JWKS()
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		v := NewVerifier(&ks, cps)
		for i := range evs {
			v.Add(&evs[i])
		}
		if rep := v.Finish(); !rep.OK {
			b.Fatal(rep.Err())
		}
	}
	perEvent := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / n
	b.ReportMetric(perEvent, "ns/event")
	b.ReportMetric(perEvent*1e6/1e9, "s/Mevents")
	// CPU time as well: on a loaded machine the wall clock says more about the neighbours.
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N)/n*1e6, "cpu-s/Mevents")
}

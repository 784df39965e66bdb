package loadgen

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"runtime"
	"sync"
	"time"
)

// Crypto measures the crypto-only ceiling of this machine for d: on every core (GOMAXPROCS
// goroutines), ops of two Ed25519 verifies and one sign of a token-sized message — the signature
// work one issuance cannot avoid (the client assertion and the DPoP proof verified, the token
// signed). Its rate is what the HTTP scenarios are compared with.
func Crypto(ctx context.Context, d time.Duration) *Report {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 600)
	rand.Read(msg)
	sig := ed25519.Sign(priv, msg)
	threads := runtime.GOMAXPROCS(0)
	lats := make([][]time.Duration, threads)
	self0 := selfCPU()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for t := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, 1<<14)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				ok := ed25519.Verify(pub, msg, sig)
				ok = ed25519.Verify(pub, msg, sig) && ok
				s := ed25519.Sign(priv, msg)
				if !ok || len(s) != ed25519.SignatureSize {
					panic("loadgen: Ed25519 self-check failed")
				}
				l = append(l, time.Since(t0))
			}
			lats[t] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	self := selfCPU() - self0
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	rep := &Report{Scenario: ScenarioCrypto, Concurrency: threads, Threads: threads, Asked: len(all), Requests: len(all), OK: len(all),
		Errors: map[string]int{}, Stopped: "duration", Seconds: elapsed.Seconds(), ServerCPUNote: "in process: no server"}
	if ctx.Err() != nil {
		rep.Stopped = "interrupted"
	}
	rep.LatencyMS = quantiles(all)
	if rep.Seconds > 0 {
		rep.Rate = float64(len(all)) / rep.Seconds
	}
	rep.ClientCPUSeconds = self.Seconds()
	if len(all) > 0 {
		rep.ClientCPUPerRequest = 1000 * rep.ClientCPUSeconds / float64(len(all))
	}
	return rep
}

// CompareToCrypto sets PercentOfCrypto on every HTTP report from the crypto report among them.
func CompareToCrypto(reps []*Report) {
	var ceiling float64
	for _, r := range reps {
		if r.Scenario == ScenarioCrypto {
			ceiling = r.Rate
		}
	}
	if ceiling <= 0 {
		return
	}
	for _, r := range reps {
		if r.Scenario != ScenarioCrypto {
			p := 100 * r.Rate / ceiling
			r.PercentOfCrypto = &p
		}
	}
}

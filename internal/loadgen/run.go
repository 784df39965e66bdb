package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Report is the outcome of one scenario.
type Report struct {
	Scenario    string   `json:"scenario"`
	Servers     []string `json:"servers,omitempty"`
	Concurrency int      `json:"concurrency"`
	// Asked is the number of requests signed for the run (ops for crypto); Requests how many
	// were sent, OK how many succeeded.
	Asked    int            `json:"asked"`
	Requests int            `json:"requests"`
	OK       int            `json:"ok"`
	Errors   map[string]int `json:"errors"` // "<status> <OAuth error code>" or "transport: …" → count
	// ErrorSamples holds, for each key of Errors, the error_description of its first answer.
	ErrorSamples map[string]string `json:"error_samples,omitempty"`
	// Stopped says what ended the timed phase: requests, duration, pool (used up before the
	// duration), interrupted.
	Stopped   string    `json:"stopped"`
	Seconds   float64   `json:"seconds"`
	Rate      float64   `json:"rate_per_second"`
	LatencyMS Latencies `json:"latency_ms"`
	// ServerCPUSeconds is what the servers spent in the timed phase (null when unknown, with
	// ServerCPUNote saying why); per request in milliseconds.
	ServerCPUSeconds    *float64 `json:"server_cpu_seconds"`
	ServerCPUPerRequest *float64 `json:"server_cpu_ms_per_request"`
	ServerCPUNote       string   `json:"server_cpu_note,omitempty"`
	// ClientCPUSeconds is what this process spent in the timed phase (with a server in the same
	// process, as in tests, it includes the server's).
	ClientCPUSeconds    float64 `json:"client_cpu_seconds"`
	ClientCPUPerRequest float64 `json:"client_cpu_ms_per_request"`
	PoolSeconds         float64 `json:"pool_seconds,omitempty"`   // signing the pool (not timed)
	UpstreamCalls       *int64  `json:"upstream_calls,omitempty"` // proxy: calls the sink received
	// PercentOfCrypto is Rate against the crypto scenario of the same command.
	PercentOfCrypto *float64 `json:"percent_of_crypto_ceiling,omitempty"`
	Threads         int      `json:"threads,omitempty"` // crypto: goroutines (GOMAXPROCS)
}

// Latencies are quantiles of the requests' round trips, in milliseconds.
type Latencies struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// proofLife is how long after its signing the pool is sent: the server accepts a proof's iat
// within 60 s (its default --dpop-window), less a margin for clocks.
const proofLife = 55 * time.Second

// item is one pre-made request: its body and headers, and the server it goes to.
type item struct {
	srv  int
	body []byte // nil for GET
	dpop string
	auth string
}

// target is where a scenario's requests go.
type target struct {
	method string
	path   string // on every server
	ctype  string
	// ok reports whether a 200 answer is a success (introspection answers 200 for an inactive
	// token too).
	ok func(body []byte) bool
}

// Run sets up scenario (what New has not), signs its pool, warms the connections and runs the
// timed phase.
func (b *Bench) Run(ctx context.Context, scenario string) (*Report, error) {
	if scenario == ScenarioCrypto {
		return Crypto(ctx, b.cfg.CryptoTime), nil
	}
	var tg target
	switch scenario {
	case ScenarioIssue, ScenarioExchange:
		if scenario == ScenarioExchange {
			if err := b.setUpExchange(ctx); err != nil {
				return nil, err
			}
		}
		// A fresh nonce: the server accepts it for one to two rotation periods.
		if _, err := b.issue(ctx, b.agents[0], nil); err != nil {
			return nil, err
		}
		tg = target{method: http.MethodPost, path: pathToken, ctype: "application/x-www-form-urlencoded"}
	case ScenarioIntrospect:
		tg = target{method: http.MethodPost, path: pathIntrospect, ctype: "application/x-www-form-urlencoded", ok: isActive}
	case ScenarioProxy:
		if err := b.setUpProxy(ctx); err != nil {
			return nil, err
		}
		tg = target{method: http.MethodGet, path: "/proxy/" + b.upstream + proxyPath}
	default:
		return nil, fmt.Errorf("no scenario %q: want %s or %s", scenario, strings.Join(Scenarios, ", "), ScenarioCrypto)
	}
	n := b.cfg.Requests
	if n == 0 {
		n = int(math.Ceil(b.cfg.Duration.Seconds() * b.cfg.MaxRate))
	}
	t0 := time.Now()
	pool, err := b.makePool(scenario, tg, n)
	if err != nil {
		return nil, err
	}
	poolTime := time.Since(t0)
	b.progress("%s: signed %d requests in %.1fs; warming %d connections per server", scenario, n, poolTime.Seconds(), b.cfg.Concurrency)
	b.warm(ctx)
	rep := b.send(ctx, scenario, tg, pool, t0.Add(proofLife))
	rep.PoolSeconds = poolTime.Seconds()
	return rep, nil
}

// makePool signs n requests of scenario on every core.
func (b *Bench) makePool(scenario string, tg target, n int) ([]item, error) {
	now := time.Now()
	htu := b.issuer + tg.path
	// A body that is the same for every request of an agent is shared.
	shared := make([][]byte, len(b.agents))
	for i, a := range b.agents {
		switch scenario {
		case ScenarioExchange:
			shared[i] = []byte(exchangeForm(a, benchScope).Encode())
		}
	}
	pool := make([]item, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := b.makeItem(scenario, htu, now, shared, i, &pool[i]); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return pool, firstErr
}

func (b *Bench) makeItem(scenario, htu string, now time.Time, shared [][]byte, i int, it *item) error {
	ai := (i / len(b.cfg.Servers)) % len(b.agents) // every server sees every agent
	a := b.agents[ai]
	it.srv = i % len(b.cfg.Servers)
	var err error
	switch scenario {
	case ScenarioIssue:
		var asr string
		if asr, err = a.assertion(b.issuer, now); err != nil {
			return err
		}
		it.body = []byte("grant_type=client_credentials&client_id=" + url.QueryEscape(a.id) +
			"&client_assertion_type=" + url.QueryEscape(assertionType) + "&client_assertion=" + asr)
		it.dpop, err = a.proof(http.MethodPost, htu, "", b.nonce, now)
	case ScenarioExchange:
		it.body = shared[ai]
		it.dpop, err = a.proof(http.MethodPost, htu, "", b.nonce, now)
	case ScenarioIntrospect:
		var asr string
		if asr, err = a.assertion(b.issuer, now); err != nil {
			return err
		}
		it.body = []byte("token=" + url.QueryEscape(a.selfToken) + "&client_id=" + url.QueryEscape(a.id) +
			"&client_assertion_type=" + url.QueryEscape(assertionType) + "&client_assertion=" + asr)
	case ScenarioProxy:
		it.auth = "DPoP " + a.taskToken
		it.dpop, err = a.proof(http.MethodGet, htu, a.taskToken, "", now)
	}
	return err
}

// warm opens Concurrency keep-alive connections to every server (GET /healthz), so the timed
// phase does not pay for dialing.
func (b *Bench) warm(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range b.cfg.Servers {
		for range b.cfg.Concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, s+"/healthz", nil)
				if err != nil {
					return
				}
				if resp, err := b.hc.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
	}
	wg.Wait()
}

// worker is one sender's tally, merged at the end.
type worker struct {
	ok, sent int
	errs     map[string]int
	samples  map[string]string
	buf      []byte
}

// send is the timed phase: Concurrency senders take the pool's requests in order until it is
// used up, the duration is over, the pool's proofs grow too old (at expires) or ctx ends.
func (b *Bench) send(ctx context.Context, scenario string, tg target, pool []item, expires time.Time) *Report {
	urls := make([]string, len(b.cfg.Servers))
	for i, s := range b.cfg.Servers {
		urls[i] = s + tg.path
	}
	lat := make([]time.Duration, len(pool))
	var sinkBefore int64
	if b.sink != nil {
		sinkBefore = b.sink.calls.Load()
	}
	cpu0, cpuErr := b.serverCPU(ctx)
	self0 := selfCPU()
	var deadline time.Time
	start := time.Now()
	if b.cfg.Requests == 0 {
		deadline = start.Add(b.cfg.Duration)
	}
	expired := false
	if deadline.IsZero() || expires.Before(deadline) {
		deadline, expired = expires, true
	}
	var next atomic.Int64
	workers := make([]worker, b.cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func(wk *worker) {
			defer wg.Done()
			wk.errs, wk.samples = map[string]int{}, map[string]string{}
			wk.buf = make([]byte, 16<<10)
			for ctx.Err() == nil {
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return
				}
				i := int(next.Add(1) - 1)
				if i >= len(pool) {
					return
				}
				lat[i] = b.one(ctx, tg, urls, &pool[i], wk)
			}
		}(&workers[w])
	}
	wg.Wait()
	elapsed := time.Since(start)
	self := selfCPU() - self0
	cpu1, cpuErr1 := b.serverCPU(ctx)

	rep := &Report{Scenario: scenario, Servers: b.cfg.Servers, Concurrency: b.cfg.Concurrency, Asked: len(pool),
		Errors: map[string]int{}, Seconds: elapsed.Seconds()}
	for _, wk := range workers {
		rep.OK += wk.ok
		rep.Requests += wk.sent
		for k, v := range wk.errs {
			rep.Errors[k] += v
		}
		for k, v := range wk.samples {
			if rep.ErrorSamples == nil {
				rep.ErrorSamples = map[string]string{}
			}
			rep.ErrorSamples[k] = v
		}
	}
	switch {
	case ctx.Err() != nil:
		rep.Stopped = "interrupted"
	case rep.Requests < len(pool) && expired:
		rep.Stopped = "proof window" // signing the pool took so long its first proofs grew old
	case rep.Requests == len(pool) && b.cfg.Requests == 0:
		rep.Stopped = "pool" // used up before the duration: a larger --max-rate signs more
	case b.cfg.Requests == 0:
		rep.Stopped = "duration"
	default:
		rep.Stopped = "requests"
	}
	done := make([]time.Duration, 0, rep.Requests)
	for _, d := range lat {
		if d > 0 {
			done = append(done, d)
		}
	}
	rep.LatencyMS = quantiles(done)
	if rep.Seconds > 0 {
		rep.Rate = float64(rep.Requests) / rep.Seconds
	}
	rep.ClientCPUSeconds = self.Seconds()
	if rep.Requests > 0 {
		rep.ClientCPUPerRequest = 1000 * rep.ClientCPUSeconds / float64(rep.Requests)
	}
	if err := errors.Join(cpuErr, cpuErr1); err != nil {
		rep.ServerCPUNote = err.Error()
	} else {
		s := cpu1 - cpu0
		rep.ServerCPUSeconds = &s
		if rep.Requests > 0 {
			per := 1000 * s / float64(rep.Requests)
			rep.ServerCPUPerRequest = &per
		}
	}
	if scenario == ScenarioProxy && b.sink != nil {
		n := b.sink.calls.Load() - sinkBefore
		rep.UpstreamCalls = &n
	}
	return rep
}

// one sends one request and tallies its outcome.
func (b *Bench) one(ctx context.Context, tg target, urls []string, it *item, wk *worker) time.Duration {
	var body io.Reader
	if it.body != nil {
		body = bytes.NewReader(it.body)
	}
	req, err := http.NewRequestWithContext(ctx, tg.method, urls[it.srv], body)
	if err != nil {
		wk.sent++
		wk.errs["request: "+err.Error()]++
		return time.Nanosecond
	}
	req.Host = b.host // as a load balancer in front of replicas passes it on
	if tg.ctype != "" {
		req.Header["Content-Type"] = []string{tg.ctype}
	}
	if it.dpop != "" {
		req.Header["Dpop"] = []string{it.dpop}
	}
	if it.auth != "" {
		req.Header["Authorization"] = []string{it.auth}
	}
	t0 := time.Now()
	resp, err := b.hc.Do(req)
	if err != nil {
		d := max(time.Since(t0), time.Nanosecond)
		if ctx.Err() == nil {
			wk.sent++
			wk.errs["transport: "+transportClass(err)]++
			return d
		}
		return 0 // interrupted: not a request of the run
	}
	n, _ := io.ReadFull(resp.Body, wk.buf)
	if n == len(wk.buf) {
		io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	d := max(time.Since(t0), time.Nanosecond)
	wk.sent++
	got := wk.buf[:n]
	if resp.StatusCode == http.StatusOK && (tg.ok == nil || tg.ok(got)) {
		wk.ok++
		return d
	}
	key, desc := errorKey(resp, got)
	if wk.errs[key]++; wk.errs[key] == 1 {
		wk.samples[key] = desc
	}
	return d
}

// isActive reports whether an introspection answer says "active": true (compact or indented),
// without decoding it.
func isActive(body []byte) bool {
	_, rest, ok := bytes.Cut(body, []byte(`"active"`))
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return false
	}
	return bytes.HasPrefix(bytes.TrimLeft(rest[1:], " \t\r\n"), []byte("true"))
}

// errorKey names a failed answer: its status and OAuth error code (from the body, else from
// WWW-Authenticate); and returns its description.
func errorKey(resp *http.Response, body []byte) (key, description string) {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(body, &e)
	code := e.Error
	if code == "" {
		if _, after, ok := strings.Cut(resp.Header.Get("WWW-Authenticate"), `error="`); ok {
			code, _, _ = strings.Cut(after, `"`)
		}
	}
	if code == "" && resp.StatusCode == http.StatusOK {
		code = "unexpected answer" // introspection: inactive
	}
	if code == "" {
		code = "-"
	}
	if len(e.Description) > 300 {
		e.Description = e.Description[:300]
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, code), e.Description
}

// transportClass shortens a transport error to what is the same across requests.
func transportClass(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// quantiles are the nearest-rank quantiles of d, in milliseconds.
func quantiles(d []time.Duration) Latencies {
	if len(d) == 0 {
		return Latencies{}
	}
	slices.Sort(d)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return float64(d[max(i, 0)].Microseconds()) / 1000
	}
	return Latencies{P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: float64(d[len(d)-1].Microseconds()) / 1000}
}

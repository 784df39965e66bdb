// Package loadgen is the engine of mandate bench: it drives a running mandate (one server or
// several replicas of one issuer) over HTTP, as agents would, and measures it.
//
// A run has two phases. Set-up, not timed, registers what a scenario needs through the real API
// with an admin's API token (agents with did:key keys, grants, an upstream pointing at a sink
// this package serves on loopback) and then signs a pool of single-use requests: client
// assertions and DPoP proofs with fresh jtis, proofs for the proxy bound to the task token's
// ath. The timed phase only sends the pool at the asked concurrency, round robin over the
// servers, so the figures are the server's and not the client's signing. It reports the rate,
// latency quantiles, errors by status and OAuth code, and the CPU the servers (from their
// /metrics, or /proc/PID/stat) and the client spent per request. The crypto scenario measures,
// in this process, the signature work one issuance cannot avoid (two Ed25519 verifies and one
// sign) on every core: the ceiling the HTTP scenarios are compared with.
//
// It talks to the server only over HTTP, through the SDK's building blocks (dpop, didkey).
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Scenarios are the HTTP scenarios, in the order mandate bench runs them.
var Scenarios = []string{ScenarioIssue, ScenarioExchange, ScenarioIntrospect, ScenarioProxy}

// The scenarios.
const (
	ScenarioIssue      = "issue"      // client_credentials, private_key_jwt + DPoP (with nonce)
	ScenarioExchange   = "exchange"   // RFC 8693: grant token -> task token, DPoP (with nonce)
	ScenarioIntrospect = "introspect" // RFC 7662, the agent authenticated by private_key_jwt
	ScenarioProxy      = "proxy"      // GET through /proxy/<upstream>/..., DPoP-bound task token
	ScenarioCrypto     = "crypto"     // in process: two Ed25519 verifies + one sign per op
)

// MaxDuration bounds a --duration run: a pre-signed DPoP proof is accepted only within the
// server's iat window (60 s by default) of its signing, and the pool is signed before the run.
const MaxDuration = 45 * time.Second

// Config is what a bench run needs.
type Config struct {
	// Servers are the base URLs of the replicas of one issuer; requests go round robin. The
	// first also takes the set-up calls.
	Servers []string
	// AdminToken is an API token of an admin (mandate login, MANDATE_TOKEN): set-up only.
	AdminToken  string
	Concurrency int           // requests in flight
	Requests    int           // how many requests (the pool's size); 0 = Duration decides
	Duration    time.Duration // with Requests 0: how long to run, at most MaxDuration
	// MaxRate sizes the pool of a Duration run: Duration × MaxRate requests are signed. A run
	// that uses them up early stops and says so.
	MaxRate float64
	Agents  int // how many agents to register and spread requests over
	// Metrics are the Prometheus endpoints to read process_cpu_seconds_total from, one per
	// server; empty = <server>/metrics. PIDs, when set, are read from /proc/PID/stat instead.
	Metrics []string
	PIDs    []int
	// SinkListen is where the proxy scenario's upstream listens: it must be reachable from the
	// servers (127.0.0.1:0 for servers on this machine).
	SinkListen string
	// CryptoTime is how long the crypto scenario runs.
	CryptoTime time.Duration
	Progress   io.Writer // set-up progress; nil = nowhere
}

// Bench is a set-up against one issuer, reused by every scenario of one command.
type Bench struct {
	cfg    Config
	issuer string
	host   string       // the issuer's host: the Host header of every request, on every replica
	hc     *http.Client // the timed phase: keep-alive, enough idle connections
	setup  *http.Client
	agents []*agent
	nonce  string

	sink         *sink
	upstream     string
	grantsFor    map[string]bool // scenarios whose grants exist
	proxyGrantOK bool
}

// New checks the servers and registers the agents every scenario uses.
func New(ctx context.Context, cfg Config) (*Bench, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("no server: pass --server URL (or --servers URL,URL,…)")
	}
	if cfg.Concurrency < 1 {
		return nil, fmt.Errorf("--concurrency %d: want at least 1", cfg.Concurrency)
	}
	if cfg.Requests < 0 {
		return nil, fmt.Errorf("--requests %d: want a positive count", cfg.Requests)
	}
	if cfg.Requests == 0 && (cfg.Duration <= 0 || cfg.Duration > MaxDuration) {
		return nil, fmt.Errorf("--duration %v: want more than 0 and at most %v (pre-signed DPoP proofs are accepted only within the server's 60 s iat window); or pass --requests N", cfg.Duration, MaxDuration)
	}
	if cfg.Requests == 0 && cfg.MaxRate <= 0 {
		return nil, fmt.Errorf("--max-rate %v: want a positive rate to size the pool of a --duration run", cfg.MaxRate)
	}
	if cfg.Agents < 1 {
		return nil, fmt.Errorf("--agents %d: want at least 1", cfg.Agents)
	}
	if len(cfg.Metrics) > 0 && len(cfg.Metrics) != len(cfg.Servers) {
		return nil, fmt.Errorf("%d --metrics URLs for %d servers: give one per server, in the same order", len(cfg.Metrics), len(cfg.Servers))
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.CryptoTime <= 0 {
		cfg.CryptoTime = 2 * time.Second
	}
	b := &Bench{cfg: cfg, grantsFor: map[string]bool{}}
	b.setup = &http.Client{Timeout: 30 * time.Second}
	b.hc = &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		Proxy:               nil, // the servers are addressed directly, whatever HTTP_PROXY says
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 2 * cfg.Concurrency,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
	if err := b.checkServers(ctx); err != nil {
		return nil, err
	}
	if cfg.AdminToken == "" {
		return nil, errors.New("no API token: run mandate login --server URL first (or set MANDATE_TOKEN): set-up registers agents, grants and an upstream as an admin")
	}
	if err := b.registerAgents(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Issuer is the issuer every server named.
func (b *Bench) Issuer() string { return b.issuer }

// checkServers reads each server's metadata: all must name one issuer (replicas of one
// deployment), which is what proofs and assertions are made out to.
func (b *Bench) checkServers(ctx context.Context) error {
	for _, s := range b.cfg.Servers {
		var md struct {
			Issuer string `json:"issuer"`
		}
		if err := b.getJSON(ctx, s+"/.well-known/oauth-authorization-server", "", &md); err != nil {
			return err
		}
		if md.Issuer == "" {
			return fmt.Errorf("%s names no issuer in its metadata: is it a mandate server?", s)
		}
		if b.issuer == "" {
			u, err := url.Parse(md.Issuer)
			if err != nil || u.Host == "" {
				return fmt.Errorf("%s names the issuer %q, which is not a URL", s, md.Issuer)
			}
			b.issuer, b.host = md.Issuer, u.Host
		} else if md.Issuer != b.issuer {
			return fmt.Errorf("%s is the issuer %s, but %s is %s: --servers are replicas of one issuer (start them with the same --issuer)", s, md.Issuer, b.cfg.Servers[0], b.issuer)
		}
	}
	return nil
}

// Close removes what set-up made that would point at nothing (the sink's upstream) and stops
// the sink. Agents and grants stay, as the audit trail's story.
func (b *Bench) Close(ctx context.Context) error {
	var err error
	if b.upstream != "" {
		err = b.admin(ctx, http.MethodDelete, "/v1/upstreams/"+url.PathEscape(b.upstream), nil, nil)
		b.upstream = ""
	}
	if b.sink != nil {
		b.sink.close()
		b.sink = nil
	}
	b.hc.CloseIdleConnections()
	return err
}

// progress prints one line of set-up progress.
func (b *Bench) progress(format string, args ...any) {
	fmt.Fprintf(b.cfg.Progress, format+"\n", args...)
}

// serverError is a set-up call the server refused.
type serverError struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *serverError) Error() string {
	return fmt.Sprintf("set-up: %s %s: %d %s", e.Method, e.URL, e.Status, strings.TrimSpace(e.Body))
}

// trimURL drops the query of u for messages.
func trimURL(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

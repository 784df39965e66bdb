// Package sidecar is the agent's loopback HTTP server behind `mandate exec` and `mandate agent
// proxy`: it forwards http://127.0.0.1:PORT/{upstream}/{path…} to {issuer}/proxy/{upstream}/{path…}
// with the task's token and a fresh DPoP proof per request, so that a tool that can only be given a
// base URL and an API key reaches the upstream through mandate's proxy and never holds a
// credential worth anything. It keeps the task's token fresh in the background for the task's
// whole life (keeper.go), whether or not the tool calls, and says clearly when it cannot.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/loopback"
)

// Config is what a sidecar needs.
type Config struct {
	Issuer    string       // required: the mandate server's issuer URL
	Task      *client.Task // required: the task whose authority the sidecar lends
	Listen    string       // required: a loopback HOST:PORT; port 0 picks a free one
	Upstreams []string     // the upstreams it forwards to; empty = any

	RequestLog io.Writer // one line per request (method, path, status; never the query); nil = none
	Notices    io.Writer // renewal trouble and the loss of the task's token, as it happens; nil = none

	// Transport is the base under the task's credentials; nil = Transport().
	Transport http.RoundTripper
	// Now is the wall clock the keeper judges the token's expiry by; nil = time.Now.
	Now func() time.Time
}

// Validate reports every problem of the config at once.
func (c Config) Validate() error {
	var problems []error
	if u, err := url.Parse(c.Issuer); c.Issuer == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, fmt.Errorf("the server %q is not an http(s) URL", c.Issuer))
	}
	if c.Task == nil {
		problems = append(problems, errors.New("a task is required: the sidecar lends its authority"))
	}
	if err := CheckListen(c.Listen); err != nil {
		problems = append(problems, err)
	}
	for _, u := range c.Upstreams {
		if !UpstreamName.MatchString(u) {
			problems = append(problems, fmt.Errorf("--upstream %q: want an upstream's name (a-z, 0-9, -)", u))
		}
	}
	return errors.Join(problems...)
}

// Sidecar is a configured sidecar; Start runs it.
type Sidecar struct {
	cfg    Config
	keeper *keeper
	fwd    *forwarder

	url    string
	srv    *http.Server
	done   chan error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New checks cfg and builds a sidecar. It does no I/O.
func New(cfg Config) (*Sidecar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Transport == nil {
		cfg.Transport = Transport()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	base, _ := url.Parse(strings.TrimSuffix(cfg.Issuer, "/"))
	k := newKeeper(cfg.Task, cfg.Now, cfg.Notices)
	return &Sidecar{cfg: cfg, keeper: k, fwd: newForwarder(base, cfg.Task.Transport(cfg.Transport), k, cfg.Upstreams, cfg.RequestLog)}, nil
}

// Start listens on cfg.Listen, serves, and keeps the task's token fresh until Stop.
func (s *Sidecar) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	s.url = "http://" + ln.Addr().String()
	s.done = make(chan error, 1)
	s.srv = &http.Server{Handler: s.fwd, ReadHeaderTimeout: 30 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.keeper.run(ctx)
	}()
	go func() { s.done <- s.srv.Serve(ln) }()
	return nil
}

// URL is where the sidecar listens: http://127.0.0.1:PORT.
func (s *Sidecar) URL() string { return s.url }

// Done receives the server's error if it stops serving before Stop.
func (s *Sidecar) Done() <-chan error { return s.done }

// Err is nil while the sidecar holds a usable token of its task, and a *LostError saying why
// once it does not (the task ended, was revoked, or its token expired before it could be
// renewed). Requests are then answered 401 with that sentence.
func (s *Sidecar) Err() error { return s.keeper.err() }

// Refused is how many requests were answered 401 because the task's token was lost.
func (s *Sidecar) Refused() int64 { return s.keeper.refused.Load() }

// Stop stops the renewal, closes the listener and waits up to grace for requests in flight.
func (s *Sidecar) Stop(grace time.Duration) {
	if s.srv == nil { // never started
		return
	}
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	s.wg.Wait()
	select {
	case err := <-s.done:
		s.done <- err
	default:
	}
}

// CheckListen refuses a listen address that is not on the loopback interface: the sidecar adds
// the task's credentials to whatever reaches it.
func CheckListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8421", addr)
	}
	if host == "" || !loopback.Host(host) {
		return fmt.Errorf("--listen %q: the sidecar listens on loopback only (127.0.0.1, [::1] or localhost): anyone who reaches it acts with the task's authority", addr)
	}
	return nil
}

// Transport is the default base transport under the task's: no client timeout (bodies stream
// for as long as they take), and no transparent decompression (the tool gets the bytes as sent).
func Transport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.ResponseHeaderTimeout = 5 * time.Minute
	return t
}

// ProxyResource is the resource URI (RFC 8707) of upstream name at the server: the audience of
// the tokens its proxy accepts.
func ProxyResource(issuer, name string) string {
	return strings.TrimSuffix(issuer, "/") + "/proxy/" + name
}

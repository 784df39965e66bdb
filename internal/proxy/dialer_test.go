package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/vault"
)

// fakeResolver answers from a map, one answer list per lookup in turn (for rebinding).
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
}

func (f *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.answers[host]
	if len(a) == 0 {
		return nil, errors.New("no such host")
	}
	if len(a) > 1 {
		f.answers[host] = a[1:]
	}
	return append([]netip.Addr(nil), a[0]...), nil
}

// recordingDialer records the addresses it is asked to dial and never connects.
type recordingDialer struct {
	mu    sync.Mutex
	addrs []string
}

var errRecorded = errors.New("recorded, not dialed")

func (d *recordingDialer) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs = append(d.addrs, addr)
	return nil, errRecorded
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestSafeDialer(t *testing.T) {
	tests := map[string]struct {
		host, port   string // the upstream's
		addr         string // dialed
		allowPrivate bool
		answers      [][]netip.Addr
		wantBlocked  bool
		wantDialed   string
	}{
		"loopback v4":         {host: "127.0.0.1", port: "80", addr: "127.0.0.1:80", wantBlocked: true},
		"loopback v4 allowed": {host: "127.0.0.1", port: "80", addr: "127.0.0.1:80", allowPrivate: true, wantDialed: "127.0.0.1:80"},
		"private 10/8":        {host: "10.1.2.3", port: "443", addr: "10.1.2.3:443", wantBlocked: true},
		"private 192.168":     {host: "192.168.0.1", port: "443", addr: "192.168.0.1:443", wantBlocked: true},
		"private 172.16":      {host: "172.16.5.4", port: "443", addr: "172.16.5.4:443", wantBlocked: true},
		"link-local metadata": {host: "169.254.169.254", port: "80", addr: "169.254.169.254:80", wantBlocked: true},
		"loopback v6":         {host: "::1", port: "443", addr: "[::1]:443", wantBlocked: true},
		"link-local v6":       {host: "fe80::1", port: "443", addr: "[fe80::1]:443", wantBlocked: true},
		"unique local v6":     {host: "fd00::1", port: "443", addr: "[fd00::1]:443", wantBlocked: true},
		"mapped v4 in v6":     {host: "::ffff:127.0.0.1", port: "443", addr: "[::ffff:127.0.0.1]:443", wantBlocked: true},
		"nat64 of private":    {host: "64:ff9b::a00:1", port: "443", addr: "[64:ff9b::a00:1]:443", wantBlocked: true},
		"unspecified":         {host: "0.0.0.0", port: "443", addr: "0.0.0.0:443", wantBlocked: true},
		"multicast":           {host: "224.0.0.1", port: "443", addr: "224.0.0.1:443", wantBlocked: true},
		"CGNAT":               {host: "100.64.0.1", port: "443", addr: "100.64.0.1:443", wantBlocked: true},
		"broadcast":           {host: "255.255.255.255", port: "443", addr: "255.255.255.255:443", wantBlocked: true},
		"public":              {host: "8.8.8.8", port: "443", addr: "8.8.8.8:443", wantDialed: "8.8.8.8:443"},
		"name to private":     {host: "api.example", port: "443", addr: "api.example:443", answers: [][]netip.Addr{addrs("10.0.0.7")}, wantBlocked: true},
		"name to mixed":       {host: "api.example", port: "443", addr: "api.example:443", answers: [][]netip.Addr{addrs("8.8.8.8", "127.0.0.1")}, wantBlocked: true},
		"name to public":      {host: "api.example", port: "443", addr: "api.example:443", answers: [][]netip.Addr{addrs("8.8.4.4")}, wantDialed: "8.8.4.4:443"},
		"name case":           {host: "api.example", port: "443", addr: "API.example:443", answers: [][]netip.Addr{addrs("8.8.4.4")}, wantDialed: "8.8.4.4:443"},
		"other host":          {host: "api.example", port: "443", addr: "evil.example:443", wantBlocked: true},
		"other port":          {host: "api.example", port: "443", addr: "api.example:22", wantBlocked: true},
		"other host allowed":  {host: "127.0.0.1", port: "80", addr: "127.0.0.2:80", allowPrivate: true, wantBlocked: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			rd := &recordingDialer{}
			d := &safeDialer{host: tt.host, port: tt.port, allowPrivate: tt.allowPrivate,
				resolver: &fakeResolver{answers: map[string][][]netip.Addr{strings.ToLower(strings.Split(tt.addr, ":")[0]): tt.answers}}, dialer: rd}
			_, err := d.DialContext(context.Background(), "tcp", tt.addr)
			var be *BlockedError
			if got := errors.As(err, &be); got != tt.wantBlocked {
				t.Fatalf("blocked = %v (%v), want %v", got, err, tt.wantBlocked)
			}
			if tt.wantBlocked {
				if len(rd.addrs) != 0 {
					t.Errorf("dialed %v although blocked", rd.addrs)
				}
				return
			}
			if len(rd.addrs) != 1 || rd.addrs[0] != tt.wantDialed {
				t.Errorf("dialed %v, want [%s]", rd.addrs, tt.wantDialed)
			}
		})
	}
}

// TestSafeDialerRebinding: the dialer connects to the address it checked, so a DNS answer that
// changes to a private address afterwards is refused on the next dial, never used unchecked.
func TestSafeDialerRebinding(t *testing.T) {
	rd := &recordingDialer{}
	d := &safeDialer{host: "rebind.example", port: "443", resolver: &fakeResolver{answers: map[string][][]netip.Addr{
		"rebind.example": {addrs("8.8.8.8"), addrs("127.0.0.1")},
	}}, dialer: rd}
	if _, err := d.DialContext(context.Background(), "tcp", "rebind.example:443"); !errors.Is(err, errRecorded) {
		t.Fatalf("first dial: %v", err)
	}
	var be *BlockedError
	if _, err := d.DialContext(context.Background(), "tcp", "rebind.example:443"); !errors.As(err, &be) {
		t.Fatalf("second dial: %v, want blocked", err)
	}
	if len(rd.addrs) != 1 || rd.addrs[0] != "8.8.8.8:443" {
		t.Errorf("dialed %v, want only the checked IP", rd.addrs)
	}
}

// TestProxyRefusesPrivateUpstream: an upstream on 127.0.0.1 without AllowPrivate is never
// dialed; with it, it is.
func TestProxyRefusesPrivateUpstream(t *testing.T) {
	e := newEnv(t)
	routes := []vault.Route{{Scope: "p:read", Methods: []string{"GET"}, Paths: []string{"/**"}}}
	e.upstreams.put(vault.Upstream{Name: "p", BaseURL: e.up.URL, Auth: vault.AuthBearer, Routes: routes})
	for _, host := range []string{"127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]"} {
		u := e.up.URL
		if host != "127.0.0.1" {
			u = "http://" + host + ":80"
		}
		e.upstreams.put(vault.Upstream{Name: "p", BaseURL: u, Auth: vault.AuthBearer, Routes: routes})
		resp, body := e.do(e.request("GET", "/proxy/p/x", e.token(tokenOpts{scope: "p:read", upstream: "p"}), nil))
		if resp.StatusCode != 502 || !strings.Contains(body, "not allowed") {
			t.Fatalf("%s: status %d: %s", host, resp.StatusCode, body)
		}
		if ev := e.audit.last(t); ev.Reason != reasonBlocked || ev.Outcome != audit.OutcomeFailure {
			t.Errorf("%s: audit %s %q", host, ev.Outcome, ev.Reason)
		}
	}
	if n := len(e.upstreamRequests()); n != 0 {
		t.Fatalf("the upstream was reached %d times", n)
	}
	e.upstreams.put(vault.Upstream{Name: "p", BaseURL: e.up.URL, Auth: vault.AuthBearer, AllowPrivate: true, Routes: routes})
	if resp, body := e.do(e.request("GET", "/proxy/p/x", e.token(tokenOpts{scope: "p:read", upstream: "p"}), nil)); resp.StatusCode != 200 {
		t.Fatalf("AllowPrivate: status %d: %s", resp.StatusCode, body)
	}
}

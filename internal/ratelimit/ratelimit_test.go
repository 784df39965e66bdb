package ratelimit

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestClientAddr(t *testing.T) {
	trusted, err := ParsePrefixes([]string{"10.0.0.0/8", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		remote  string
		xff     []string
		trusted []netip.Prefix
		want    string
	}{
		{"ipv4", "192.0.2.7:5555", nil, nil, "192.0.2.7"},
		{"ipv6 grouped by /64", "[2001:db8:1:2:3:4:5:6]:443", nil, nil, "2001:db8:1:2::/64"},
		{"ipv6 same /64, other host", "[2001:db8:1:2:ffff::1]:443", nil, nil, "2001:db8:1:2::/64"},
		{"ipv6 with zone", "[fe80::1%eth0]:443", nil, nil, "fe80::/64"},
		{"v4-mapped v6 is v4", "[::ffff:192.0.2.7]:1", nil, nil, "192.0.2.7"},
		{"not an address", "pipe", nil, nil, "unknown"},
		{"XFF ignored without trusted proxies", "192.0.2.7:1", []string{"198.51.100.1"}, nil, "192.0.2.7"},
		{"XFF ignored from an untrusted peer", "192.0.2.7:1", []string{"198.51.100.1"}, trusted, "192.0.2.7"},
		{"XFF from a trusted proxy", "10.1.2.3:1", []string{"198.51.100.1"}, trusted, "198.51.100.1"},
		{"rightmost untrusted hop wins", "10.1.2.3:1", []string{"203.0.113.9, 198.51.100.1, 10.9.9.9"}, trusted, "198.51.100.1"},
		{"several header lines", "10.1.2.3:1", []string{"203.0.113.9", "198.51.100.1"}, trusted, "198.51.100.1"},
		{"garbage hop stops at the last trusted proxy", "10.1.2.3:1", []string{"198.51.100.1, nonsense"}, trusted, "10.1.2.3"},
		{"all hops trusted", "10.1.2.3:1", []string{"10.4.4.4"}, trusted, "10.4.4.4"},
		{"trusted v6 proxy, v6 client grouped", "[::1]:1", []string{"2001:db8::1"}, trusted, "2001:db8::/64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, Header: http.Header{}}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := ClientAddr(r, tt.trusted); got != tt.want {
				t.Errorf("ClientAddr = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := ParsePrefixes([]string{"10.0.0.0/8", " 192.0.2.1 ", "", "2001:db8::/32", "10.1.2.3/8"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "10.0.0.0/8"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ParsePrefixes = %v, want %v", got, want)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0"} {
		if _, err := ParsePrefixes([]string{bad}); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParsePrefixes(%q) = %v, want an error naming it", bad, err)
		}
	}
}

// FuzzClientAddr: whatever the remote address and X-Forwarded-For, ClientAddr never panics,
// answers "unknown", an IPv4 address or an IPv6 /64; and without trusted proxies the header
// never changes the answer.
func FuzzClientAddr(f *testing.F) {
	f.Add("192.0.2.7:1", "198.51.100.1")
	f.Add("10.1.2.3:1", "203.0.113.9, 198.51.100.1, 10.9.9.9")
	f.Add("[2001:db8::1]:1", "::ffff:1.2.3.4,fe80::1%eth0")
	f.Add("x", ",,,")
	trusted, _ := ParsePrefixes([]string{"10.0.0.0/8", "2001:db8::/32"})
	f.Fuzz(func(t *testing.T, remote, xff string) {
		r := &http.Request{RemoteAddr: remote, Header: http.Header{"X-Forwarded-For": {xff}}}
		bare := &http.Request{RemoteAddr: remote, Header: http.Header{}}
		if a, b := ClientAddr(r, nil), ClientAddr(bare, nil); a != b {
			t.Fatalf("without trusted proxies X-Forwarded-For %q changed the address: %q vs %q", xff, a, b)
		}
		for _, got := range []string{ClientAddr(r, nil), ClientAddr(r, trusted)} {
			if got == "unknown" {
				continue
			}
			if a, err := netip.ParseAddr(got); err == nil && a.Is4() {
				continue
			}
			if p, err := netip.ParsePrefix(got); err == nil && p.Addr().Is6() && p.Bits() == 64 && p == p.Masked() {
				continue
			}
			t.Fatalf("ClientAddr = %q: not unknown, an IPv4 address or an IPv6 /64", got)
		}
	})
}

// fixedClock is a clock that moves only when told.
type fixedClock struct{ t time.Time }

func (c *fixedClock) now() time.Time { return c.t }

func TestLimiterBurstThenRetryAfter(t *testing.T) {
	clk := &fixedClock{t: time.Unix(1_700_000_000, 0)}
	l := New(10, 20, 0, clk.now)
	for i := range 20 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, retry := l.Allow("a")
	if ok || retry != 6*time.Second {
		t.Fatalf("past the burst: Allow = %v, %v; want refused, retry after 6s (10 a minute)", ok, retry)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Errorf("another address was refused")
	}
	clk.t = clk.t.Add(5 * time.Second)
	if ok, retry := l.Allow("a"); ok || retry != time.Second {
		t.Errorf("after 5s: Allow = %v, %v; want refused, retry after 1s", ok, retry)
	}
	clk.t = clk.t.Add(time.Second)
	if ok, _ := l.Allow("a"); !ok {
		t.Errorf("after the Retry-After the request was refused")
	}
	if ok, _ := l.Allow("a"); ok {
		t.Errorf("one token came back, two requests passed")
	}
}

func TestLimiterRetryAfterWholeSeconds(t *testing.T) {
	// Whatever the rate, a refusal's Retry-After is whole seconds, at least one, and waiting it
	// out lets the next request through.
	for _, perMinute := range []float64{0.5, 1, 7, 60, 600, 100000} {
		clk := &fixedClock{t: time.Unix(1_700_000_000, 0)}
		l := New(perMinute, 1, 0, clk.now)
		l.Allow("a")
		ok, retry := l.Allow("a")
		if ok {
			t.Fatalf("%v/min: second request of a burst of one passed", perMinute)
		}
		if retry < time.Second || retry%time.Second != 0 {
			t.Errorf("%v/min: Retry-After %v, want whole seconds >= 1", perMinute, retry)
		}
		clk.t = clk.t.Add(retry)
		if ok, _ := l.Allow("a"); !ok {
			t.Errorf("%v/min: refused after waiting the Retry-After (%v)", perMinute, retry)
		}
	}
}

func TestLimiterDisabled(t *testing.T) {
	for _, l := range []*Limiter{New(0, 20, 0, nil), New(10, 0, 0, nil), nil} {
		for range 1000 {
			if ok, _ := l.Allow("a"); !ok {
				t.Fatal("a disabled limiter refused")
			}
		}
		if l.Tracked() != 0 {
			t.Error("a disabled limiter tracks addresses")
		}
	}
}

// TestLimiterTrackedBounded: however many addresses come, the limiter remembers at most
// maxTracked of them, and the most recent ones keep their state.
func TestLimiterTrackedBounded(t *testing.T) {
	clk := &fixedClock{t: time.Unix(1_700_000_000, 0)}
	l := New(1, 1, 100, clk.now)
	for i := range 100_000 {
		l.Allow(fmt.Sprintf("2001:db8:%x::/64", i))
		if n := l.Tracked(); n > 100 {
			t.Fatalf("after %d addresses the limiter tracks %d, want at most 100", i+1, n)
		}
	}
	if ok, _ := l.Allow(fmt.Sprintf("2001:db8:%x::/64", 99_999)); ok {
		t.Errorf("the most recent address lost its state")
	}
}

func BenchmarkLimiterManyAddresses(b *testing.B) {
	l := New(10, 20, 0, nil)
	for i := 0; b.Loop(); i++ {
		l.Allow(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
	}
}

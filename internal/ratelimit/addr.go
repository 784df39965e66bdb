package ratelimit

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// ClientAddr is the address a request is limited and audited by: the connection's remote IP,
// an IPv6 address grouped by its /64 (one host usually holds a whole /64, so per-address
// counting of single IPv6 addresses would count nothing). X-Forwarded-For is believed only when
// the connection comes from one of trusted (the reverse proxies in front of this server), and
// then only as far as it was appended by trusted proxies: the rightmost address that is not
// one of them is the client. With no trusted proxies (the default) the header is ignored, so a
// client cannot choose its own address. A remote address that does not parse (not a TCP
// connection) is "unknown": all such requests share one bucket.
func ClientAddr(r *http.Request, trusted []netip.Prefix) string {
	addr, ok := ClientIP(r, trusted)
	if !ok {
		return "unknown"
	}
	return group(addr)
}

// ClientIP is the client's own address, ungrouped, found as ClientAddr finds it; false when the
// remote address does not parse.
func ClientIP(r *http.Request, trusted []netip.Prefix) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr := ap.Addr().Unmap()
	if isTrusted(addr, trusted) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0; i-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break // a hop we cannot read: the last trusted proxy is as far as we can see
			}
			addr = hop.Unmap().WithZone("")
			if !isTrusted(addr, trusted) {
				break
			}
		}
	}
	return addr, true
}

func isTrusted(addr netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// group is addr as the limiter's key: an IPv4 address itself, an IPv6 address its /64.
func group(addr netip.Addr) string {
	if addr.Is4() {
		return addr.String()
	}
	return netip.PrefixFrom(addr.WithZone(""), 64).Masked().String()
}

// ParsePrefixes reads a list of trusted proxies, each an address or a CIDR prefix.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR prefix such as 10.0.0.0/8", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

type clientKey struct{}

type clientIPKey struct{}

// ClientIPFrom is the client's own address ctx carries (see ClientIP), or "".
func ClientIPFrom(ctx context.Context) string {
	s, _ := ctx.Value(clientIPKey{}).(string)
	return s
}

// WithClient returns ctx carrying the request's client address.
func WithClient(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, clientKey{}, addr)
}

// Client is the client address ctx carries, or "" when none was set.
func Client(ctx context.Context) string {
	s, _ := ctx.Value(clientKey{}).(string)
	return s
}

// Middleware puts each request's ClientAddr, and its ClientIP, into its context.
func Middleware(trusted []netip.Prefix, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if ip, ok := ClientIP(r, trusted); ok {
			ctx = WithClient(context.WithValue(ctx, clientIPKey{}, ip.String()), group(ip))
		} else {
			ctx = WithClient(ctx, "unknown")
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

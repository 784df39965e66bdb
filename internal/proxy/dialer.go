package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Resolver looks up a host's addresses; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer makes the final connection to a checked IP address; *net.Dialer implements it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// BlockedError is a dial the SSRF guard refused.
type BlockedError struct {
	Addr   string // what was asked for: host:port
	IP     string // the refused address, when the refusal is about one
	Reason string
}

func (e *BlockedError) Error() string {
	if e.IP != "" {
		return fmt.Sprintf("proxy: dial %s refused: %s resolves to %s (%s)", e.Addr, e.Addr, e.IP, e.Reason)
	}
	return fmt.Sprintf("proxy: dial %s refused: %s", e.Addr, e.Reason)
}

// safeDialer dials one upstream's host:port only. It resolves the host itself, refuses the
// dial when any resolved address is not a public unicast address (unless allowPrivate), and
// connects to the checked IP, so a DNS answer that changes between check and connect (DNS
// rebinding) changes nothing. After Pomerium's internal/mcp/ssrf.go.
type safeDialer struct {
	host         string // lower-case, without brackets
	port         string
	allowPrivate bool
	resolver     Resolver
	dialer       Dialer
	timeout      time.Duration
}

func (d *safeDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &BlockedError{Addr: addr, Reason: "network " + network + " is not allowed"}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &BlockedError{Addr: addr, Reason: "not a host:port"}
	}
	if !strings.EqualFold(host, d.host) || port != d.port {
		return nil, &BlockedError{Addr: addr, Reason: "only the upstream's own host and port may be dialed"}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, &BlockedError{Addr: addr, Reason: "bad port"}
	}
	if d.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.timeout)
		defer cancel()
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(d.host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = d.resolver.LookupNetIP(ctx, "ip", d.host)
		if err != nil {
			return nil, fmt.Errorf("proxy: resolve %s: %w", host, err)
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("proxy: resolve %s: no addresses", host)
		}
	}
	// Every answer must pass: a name that resolves to one public and one private address is
	// refused as a whole.
	for i, ip := range ips {
		ip = ip.Unmap().WithZone("")
		ips[i] = ip
		if why := nonPublic(ip); why != "" && !d.allowPrivate {
			return nil, &BlockedError{Addr: addr, IP: ip.String(), Reason: why + " addresses are not allowed for this upstream"}
		}
		if !ip.IsValid() {
			return nil, &BlockedError{Addr: addr, Reason: "invalid address"}
		}
	}
	var firstErr error
	for _, ip := range ips {
		conn, err := d.dialer.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(p)).String())
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// Special-purpose ranges that are not publicly routable (RFC 6890 and its updates), beyond what
// netip.Addr's predicates cover.
var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (CGNAT)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and 255.255.255.255
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated), e.g. ::7f00:1
	netip.MustParsePrefix("::ffff:0:0/96"),   // IPv4-translated (RFC 2765), e.g. ::ffff:0:7f00:1
	netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments (Teredo, ORCHID, …)
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
}

// Prefixes that embed an IPv4 address, which is checked in turn.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")
	nat64LocalPrefix = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")
)

// nonPublic names the kind of ip when it is not a public unicast address, else "".
func nonPublic(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return "invalid"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast"
	}
	for _, p := range blockedPrefixes {
		if p.Contains(ip) {
			return "reserved"
		}
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64Prefix.Contains(ip):
			if why := nonPublic(netip.AddrFrom4([4]byte(b[12:16]))); why != "" {
				return why
			}
		case nat64LocalPrefix.Contains(ip):
			return "reserved"
		case sixToFourPrefix.Contains(ip):
			if why := nonPublic(netip.AddrFrom4([4]byte(b[2:6]))); why != "" {
				return why
			}
		}
	}
	return ""
}

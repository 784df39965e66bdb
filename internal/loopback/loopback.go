// Package loopback answers one question several places ask: does an address stay on this
// machine? Plain http is accepted only there (tests, local issuers), and the agent sidecar
// listens and answers only there.
package loopback

import (
	"net"
	"strings"
)

// Host reports whether host — a hostname or IP, with or without a port, IPv6 with or without
// brackets — names the loopback interface: "localhost" or a loopback IP.
func Host(host string) bool {
	h := host
	if sh, _, err := net.SplitHostPort(host); err == nil {
		h = sh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

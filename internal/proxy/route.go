package proxy

import (
	"slices"
	"sort"
	"strings"

	"github.com/mandate-dev/mandate/internal/vault"
)

// matchPath reports whether the decoded path matches pattern: segments compare literally, "*"
// is exactly one non-empty segment, and "**" (only as the last segment) is the rest of the path,
// zero or more segments. A trailing slash is significant ("/emails" is not "/emails/").
func matchPath(pattern, path string) bool {
	if pattern == "" || pattern[0] != '/' || path == "" || path[0] != '/' {
		return false
	}
	p, s := pattern[1:], path[1:]
	for {
		pseg, prest, pmore := strings.Cut(p, "/")
		if pseg == "**" {
			return !pmore // "**" only last
		}
		sseg, srest, smore := strings.Cut(s, "/")
		switch pseg {
		case "*":
			if sseg == "" {
				return false
			}
		default:
			if pseg != sseg {
				return false
			}
		}
		if pmore != smore {
			// "/v3/**" also matches "/v3": the pattern has one "**" segment left.
			return pmore && !smore && prest == "**"
		}
		if !pmore {
			return true
		}
		p, s = prest, srest
	}
}

// standardMethods are the only methods the proxy forwards, whatever a route says: TRACE would
// echo the injected credential back, CONNECT would tunnel past the proxy, and unknown methods
// are what method-confusion bugs upstream are made of.
var standardMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

func methodAllowed(methods []string, m string) bool {
	if !standardMethods[m] {
		return false
	}
	for _, x := range methods {
		if x == "*" || x == m {
			return true
		}
	}
	return false
}

// routeMatch is the route a call is allowed by, and the pattern that matched.
type routeMatch struct {
	route   *vault.Route
	pattern string
}

// routeDenial says why no route allows a call.
type routeDenial struct {
	reason string   // reasonNoRoute, reasonScope or reasonMethod
	scopes []string // reasonScope: the scopes of routes that would allow it
	allow  []string // reasonMethod: the methods the caller's routes allow on this path
}

// matchRoute finds a route of u that one of scopes selects and that allows method on path.
func matchRoute(u *vault.Upstream, has func(string) bool, method, path string) (routeMatch, *routeDenial) {
	var d routeDenial
	for i := range u.Routes {
		r := &u.Routes[i]
		pattern := ""
		for _, p := range r.Paths {
			if matchPath(p, path) {
				pattern = p
				break
			}
		}
		if pattern == "" {
			continue
		}
		held := has(r.Scope)
		allowed := methodAllowed(r.Methods, method)
		switch {
		case held && allowed:
			return routeMatch{route: r, pattern: pattern}, nil
		case allowed:
			if !slices.Contains(d.scopes, r.Scope) {
				d.scopes = append(d.scopes, r.Scope)
			}
		case held:
			for _, m := range r.Methods {
				if !slices.Contains(d.allow, m) {
					d.allow = append(d.allow, m)
				}
			}
		}
	}
	switch {
	case len(d.scopes) > 0:
		d.reason = reasonScope
		sort.Strings(d.scopes)
	case len(d.allow) > 0:
		d.reason = reasonMethod
		sort.Strings(d.allow)
	default:
		d.reason = reasonNoRoute
	}
	return routeMatch{}, &d
}

// routeScopes lists the distinct scopes of u's routes, sorted.
func routeScopes(u *vault.Upstream) []string {
	var out []string
	for _, r := range u.Routes {
		if !slices.Contains(out, r.Scope) {
			out = append(out, r.Scope)
		}
	}
	sort.Strings(out)
	return out
}

package vault

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/mandate-dev/mandate/internal/apperr"
)

var nameRE = regexp.MustCompile(`^[a-z0-9-]{1,40}$`)

// Known auth kinds.
var authKinds = []AuthKind{AuthBearer, AuthHeader, AuthQuery, AuthBasic, AuthOAuth2Refresh, AuthOAuth2ClientCredentials}

// Body rule matches.
var bodyMatches = []string{"equals", "email_domain", "prefix", "max"}

// Headers an upstream credential must never be put in: the proxy sets or strips them itself.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Content-Type": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Proxy-Authorization": true, "Proxy-Authenticate": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Upgrade": true, "Cookie": true, "Dpop": true, "Forwarded": true, "X-Forwarded-For": true,
	"X-Forwarded-Host": true, "X-Forwarded-Proto": true, "X-Request-Id": true,
}

func invalid(reason, format string, args ...any) error {
	return apperr.New(apperr.Invalid, reason, format, args...)
}

// ValidName checks an upstream name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return invalid("name", "upstream name %q: want 1 to 40 of a-z, 0-9 and -", apperr.Clip(name, 60))
	}
	return nil
}

// normalize validates u and returns it in canonical form (base URL without a trailing slash,
// lower-case scheme and host, uppercase methods).
func normalize(u Upstream) (Upstream, error) {
	if err := ValidName(u.Name); err != nil {
		return u, err
	}
	base, err := checkURL("base_url", u.BaseURL, u.AllowPrivate, true)
	if err != nil {
		return u, err
	}
	u.BaseURL = base
	if !slices.Contains(authKinds, u.Auth) {
		return u, invalid("auth", "auth %q: want one of bearer, header, query, basic, oauth2-refresh, oauth2-client-credentials", apperr.Clip(string(u.Auth), 40))
	}
	switch u.Auth {
	case AuthHeader:
		c := http.CanonicalHeaderKey(u.Param)
		if !validToken(u.Param) {
			return u, invalid("param", "auth header needs the header's name as param, e.g. X-Api-Key")
		}
		if reservedHeaders[c] {
			return u, invalid("param", "header %s is set by the proxy itself: choose the header the upstream reads the key from", c)
		}
		u.Param = c
	case AuthQuery:
		if u.Param == "" || len(u.Param) > 100 || strings.ContainsAny(u.Param, "&=#?+% \t\r\n") {
			return u, invalid("param", "auth query needs the query parameter's name as param, e.g. api_key")
		}
	default:
		if u.Param != "" {
			return u, invalid("param", "param is only for auth header and query")
		}
	}
	switch u.Auth {
	case AuthOAuth2Refresh, AuthOAuth2ClientCredentials:
		if u.OAuth2 == nil {
			return u, invalid("oauth2", "auth %s needs oauth2 settings: token_url and client_id", u.Auth)
		}
		o := *u.OAuth2
		if o.TokenURL, err = checkURL("token_url", o.TokenURL, u.AllowPrivate, false); err != nil {
			return u, err
		}
		if o.AuthURL != "" {
			if o.AuthURL, err = checkURL("auth_url", o.AuthURL, u.AllowPrivate, false); err != nil {
				return u, err
			}
		}
		if o.ClientID == "" || len(o.ClientID) > 512 || strings.ContainsAny(o.ClientID, "\r\n") {
			return u, invalid("client_id", "oauth2 needs the client_id the upstream gave you")
		}
		for _, s := range o.Scopes {
			if !validScope(s) {
				return u, invalid("oauth_scope", "oauth2 scope %q is not a scope token", apperr.Clip(s, 60))
			}
		}
		u.OAuth2 = &o
	default:
		if u.OAuth2 != nil {
			return u, invalid("oauth2", "oauth2 settings are only for auth oauth2-refresh and oauth2-client-credentials")
		}
	}
	routes, err := normalizeRoutes(u.Routes)
	if err != nil {
		return u, err
	}
	u.Routes = routes
	return u, nil
}

// checkURL validates an absolute http(s) URL without query, fragment or user info. Plain http
// and private hosts need allowPrivate. base URLs lose a trailing slash.
func checkURL(field, raw string, allowPrivate, base bool) (string, error) {
	p, err := url.Parse(raw)
	if err != nil || !p.IsAbs() || p.Host == "" || p.Opaque != "" {
		return "", invalid(field, "%s %q: want an absolute URL such as https://api.example.com/v1", field, apperr.Clip(raw, 100))
	}
	p.Scheme = strings.ToLower(p.Scheme)
	switch {
	case p.Scheme != "https" && p.Scheme != "http":
		return "", invalid(field, "%s: want an https URL", field)
	case p.Scheme == "http" && !allowPrivate:
		return "", invalid(field, "%s: plain http is allowed only for an upstream marked allow_private (a test or on-prem server)", field)
	case p.User != nil:
		return "", invalid(field, "%s must not hold user info: store credentials as the upstream's secret", field)
	case p.RawQuery != "" || p.ForceQuery || p.Fragment != "" || p.RawFragment != "":
		return "", invalid(field, "%s must not have a query or fragment", field)
	}
	host := strings.ToLower(p.Hostname())
	if private(host) && !allowPrivate {
		return "", invalid(field, "%s: %s is a private, loopback or link-local address; mark the upstream allow_private if that is intended", field, host)
	}
	p.Host = strings.ToLower(p.Host)
	if base {
		for seg := range strings.SplitSeq(p.Path, "/") {
			if seg == "." || seg == ".." {
				return "", invalid(field, "%s must not contain . or .. segments", field)
			}
		}
		p.Path = strings.TrimRight(p.Path, "/")
		p.RawPath = ""
	}
	return p.String(), nil
}

// private reports whether host is a literal private, loopback, link-local or unspecified
// address, or localhost. Names are checked again at dial time by the proxy.
func private(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return net.ParseIP(host) != nil // a form netip refuses; treat it as suspect
	}
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast()
}

// validToken reports whether s is an RFC 9110 token (a method or header name).
func validToken(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// validScope reports whether s is an RFC 6749 scope token.
func validScope(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for _, c := range []byte(s) {
		if c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e {
			return false
		}
	}
	return true
}

// normalizeRoutes validates routes: a scope each, methods uppercase tokens or "*", path
// patterns of whole segments where "*" is one segment and "**" (last only) the rest.
func normalizeRoutes(routes []Route) ([]Route, error) {
	if len(routes) > 500 {
		return nil, invalid("routes", "at most 500 routes per upstream")
	}
	out := make([]Route, 0, len(routes))
	for i, r := range routes {
		if !validScope(r.Scope) {
			return nil, invalid("routes", "route %d: scope %q is not a scope token (e.g. ahrefs:read)", i+1, apperr.Clip(r.Scope, 60))
		}
		if len(r.Methods) == 0 {
			return nil, invalid("routes", "route %d (%s): name at least one method, or *", i+1, r.Scope)
		}
		methods := make([]string, 0, len(r.Methods))
		for _, m := range r.Methods {
			if m != "*" && (!validToken(m) || m != strings.ToUpper(m)) {
				return nil, invalid("routes", "route %d (%s): method %q: want an uppercase method such as GET, or *", i+1, r.Scope, apperr.Clip(m, 20))
			}
			if !slices.Contains(methods, m) {
				methods = append(methods, m)
			}
		}
		if len(r.Paths) == 0 {
			return nil, invalid("routes", "route %d (%s): name at least one path pattern, e.g. /v3/**", i+1, r.Scope)
		}
		for _, p := range r.Paths {
			if err := checkPathPattern(p); err != nil {
				return nil, invalid("routes", "route %d (%s): path %q: %v", i+1, r.Scope, apperr.Clip(p, 100), err)
			}
		}
		for j, b := range r.Body {
			if err := checkBodyRule(b); err != nil {
				return nil, invalid("routes", "route %d (%s): body rule %d: %v", i+1, r.Scope, j+1, err)
			}
		}
		r.Methods = methods
		r.Paths = slices.Clone(r.Paths)
		r.Body = slices.Clone(r.Body)
		out = append(out, r)
	}
	return out, nil
}

type ruleError string

func (e ruleError) Error() string { return string(e) }

func checkPathPattern(p string) error {
	if !strings.HasPrefix(p, "/") {
		return ruleError("want a pattern starting with /")
	}
	if len(p) > 500 || strings.ContainsAny(p, "?#%\\ \t\r\n") {
		return ruleError("want a plain path: no query, fragment, escapes or spaces")
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		switch {
		case s == "" && i == len(segs)-1: // a trailing slash
		case s == "":
			return ruleError("empty segment (//)")
		case s == "." || s == "..":
			return ruleError(". and .. segments are not allowed")
		case s == "**" && i != len(segs)-1:
			return ruleError("** matches the rest of the path, so it must be the last segment")
		case s != "*" && s != "**" && strings.Contains(s, "*"):
			return ruleError("* and ** stand for whole segments")
		}
	}
	return nil
}

func checkBodyRule(b BodyRule) error {
	if b.Detail == "" || len(b.Detail) > 100 {
		return ruleError("name the authorization_details field (detail)")
	}
	if b.Pointer != "" && !strings.HasPrefix(b.Pointer, "/") {
		return ruleError("pointer: want a JSON pointer (RFC 6901) such as /to")
	}
	for i := 0; i < len(b.Pointer); i++ {
		if b.Pointer[i] == '~' && (i+1 >= len(b.Pointer) || (b.Pointer[i+1] != '0' && b.Pointer[i+1] != '1')) {
			return ruleError("pointer: ~ must be followed by 0 or 1")
		}
	}
	if !slices.Contains(bodyMatches, b.Match) {
		return ruleError("match: want one of equals, email_domain, prefix, max")
	}
	return nil
}

// SecretKinds returns the kinds of secret an upstream of auth kind takes, the first required
// (the one set-secret sets by default), the others optional.
func SecretKinds(auth AuthKind) []string {
	switch auth {
	case AuthOAuth2Refresh:
		return []string{SecretRefreshToken, SecretClientSecret}
	case AuthOAuth2ClientCredentials:
		return []string{SecretClientSecret}
	default:
		return []string{SecretCredential}
	}
}

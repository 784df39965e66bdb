package proxy

import (
	"net/http"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// PathPrefix is where the proxy is mounted: {issuer}/proxy/{upstream}/{path…}.
const PathPrefix = "/proxy/"

// Pattern is the ServeMux pattern of the proxy (all methods).
const Pattern = "/proxy/{upstream}/{path...}"

// MetadataPattern is the ServeMux pattern of the RFC 9728 metadata of each upstream.
const MetadataPattern = "GET /.well-known/oauth-protected-resource/proxy/{upstream}"

// target is a checked request target: the upstream's name and the path below it, both as the
// client sent it (escaped) and decoded.
type target struct {
	name    string
	rawPath string // escaped, starts with "/": forwarded as is
	path    string // decoded: what routes are matched against
}

// parseTarget checks the request target the client sent (r.RequestURI: path and query as they
// came on the wire, never cleaned or decoded) and splits it. Everything that could make the
// upstream see a different path than the one the routes were matched against is refused:
//
//   - anything but origin-form (an absolute URL, "*", an authority)
//   - control bytes, NUL, backslashes, fragments, bytes outside ASCII
//   - percent-encodings of '.', '/', '\', '%' (double encoding) and of control bytes; a '%' not
//     followed by two hex digits
//   - "." and ".." segments, also with ";parameters" ("..;/" is ".." to some servers)
//   - empty segments ("//"), except a trailing slash
//   - a decoded path that is not valid UTF-8 (overlong encodings of '.', '/')
//   - a decoded character whose compatibility form (NFKC) holds '.', '/', '\' or '%': an
//     upstream that normalises reads the full-width "％ｅ％ｅ" of "%ef%bc%8e%ef%bc%8e" as ".."
//
// It returns the refusal reason ("" when the target is accepted).
func parseTarget(requestURI string) (target, string) {
	if requestURI == "" || requestURI[0] != '/' {
		return target{}, reasonAbsoluteURL
	}
	raw := requestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if !strings.HasPrefix(raw, PathPrefix) {
		return target{}, reasonBadPath
	}
	rest := raw[len(PathPrefix):]
	name := rest
	rawPath := "/"
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		name, rawPath = rest[:i], rest[i:]
	}
	if !validName(name) {
		if strings.ContainsAny(name, "%\\.") || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r >= 0x7f }) {
			return target{}, reasonBadPath
		}
		return target{}, reasonUnknownUpstream
	}
	path, ok := checkPath(rawPath)
	if !ok {
		return target{}, reasonBadPath
	}
	return target{name: name, rawPath: rawPath, path: path}, ""
}

// validName reports whether s can be an upstream name: [a-z0-9-]{1,40}.
func validName(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkPath validates an escaped path (starting with "/") and returns it decoded.
func checkPath(raw string) (string, bool) {
	if raw == "" || raw[0] != '/' {
		return "", false
	}
	var b []byte // the decoded path, allocated only when raw has escapes
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c < 0x21 || c >= 0x7f || c == '\\' || c == '#':
			return "", false
		case c == '%':
			if i+2 >= len(raw) {
				return "", false
			}
			hi, ok1 := unhex(raw[i+1])
			lo, ok2 := unhex(raw[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			d := hi<<4 | lo
			if d < 0x20 || d == 0x7f || d == '.' || d == '/' || d == '\\' || d == '%' {
				return "", false
			}
			if b == nil {
				b = make([]byte, 0, len(raw))
				b = append(b, raw[:i]...)
			}
			b = append(b, d)
			i += 2
		default:
			if b != nil {
				b = append(b, c)
			}
		}
	}
	path := raw
	if b != nil {
		path = string(b)
		if !utf8.ValidString(path) || normalisesToSeparator(path) {
			return "", false
		}
	}
	// Segments: path[0] is '/'.
	for s := path[1:]; ; {
		seg, more, found := strings.Cut(s, "/")
		if seg == "" && found {
			return "", false // "//"
		}
		if p, _, _ := strings.Cut(seg, ";"); p == "." || p == ".." {
			return "", false
		}
		if !found {
			break
		}
		s = more
	}
	return path, true
}

// normalisesToSeparator reports whether a character of s outside ASCII has a compatibility
// form (NFKC) holding '.', '/', '\' or '%' (U+FF0E, U+2024 "․", U+2025 "‥", U+FF0F, U+FF3C,
// U+FF05, …). Composition never makes ASCII punctuation, so each character is checked alone.
func normalisesToSeparator(s string) bool {
	for i, r := range s {
		if r < utf8.RuneSelf {
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		if strings.ContainsAny(norm.NFKC.String(s[i:i+size]), "./\\%") {
			return true
		}
	}
	return false
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// sameHost reports whether a Host header names the server at want (its host[:port]), read
// strictly: a name or a bracketed IPv6 address, then at most one ":" and a port of digits (an
// empty or absent port is the scheme's default). "want:80:" or "want:" with another port after
// it is refused, not trimmed until it matches.
func sameHost(host, want, scheme string) bool {
	h, hp, ok1 := splitHostPort(host, scheme)
	w, wp, ok2 := splitHostPort(want, scheme)
	return ok1 && ok2 && h == w && hp == wp
}

// splitHostPort splits a Host header into its host in lowercase and its port (the scheme's
// default when absent or empty, leading zeros dropped).
func splitHostPort(s, scheme string) (host, port string, ok bool) {
	rest := ""
	if strings.HasPrefix(s, "[") {
		i := strings.IndexByte(s, ']')
		if i < 0 {
			return "", "", false
		}
		host, rest = s[:i+1], s[i+1:]
	} else if i := strings.IndexByte(s, ':'); i >= 0 {
		host, rest = s[:i], s[i:]
	} else {
		host = s
	}
	if host == "" || strings.ContainsAny(host, "/\\?#@ %") {
		return "", "", false
	}
	if rest != "" {
		if rest[0] != ':' {
			return "", "", false
		}
		port = rest[1:]
		for _, c := range port {
			if c < '0' || c > '9' {
				return "", "", false
			}
		}
		port = strings.TrimLeft(port, "0")
		if port == "" && len(rest) > 1 || len(port) > 5 {
			return "", "", false // port 0, or beyond 65535's digits
		}
	}
	if port == "" {
		port = "80"
		if scheme == "https" {
			port = "443"
		}
	}
	return strings.ToLower(host), port, true
}

// Guard sends every request under /proxy/ to the proxy before next (a ServeMux) sees it:
// ServeMux would answer a path with dot segments or "//" with a redirect to its cleaned form,
// and the proxy must refuse such paths itself (400, with an audit event). r.Pattern is set so
// request metrics see the proxy's route.
func (p *Proxy) Guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, PathPrefix) || strings.HasPrefix(r.RequestURI, PathPrefix) {
			r.Pattern = Pattern
			p.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

package dpop

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// NormalizeURL returns the form in which htu values are compared (RFC 9449
// §4.3, RFC 3986 §6.2.2-6.2.3): scheme and host lower-cased, the default
// port removed, percent-encodings upper-cased and unreserved characters
// decoded, dot segments removed, an empty path made "/", and query and
// fragment dropped. Clients and proxies legitimately spell the same URL in
// different ways; comparing normalised forms keeps that from breaking proofs
// without letting a proof for one resource pass for another.
func NormalizeURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("dpop: normalizing URL: %w", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", errors.New("dpop: normalizing URL: scheme must be http or https")
	}
	if u.Opaque != "" || u.Host == "" {
		return "", errors.New("dpop: normalizing URL: not an absolute URL with a host")
	}
	if u.User != nil {
		return "", errors.New("dpop: normalizing URL: user information is not allowed")
	}
	host := strings.ToLower(u.Host)
	switch {
	case strings.HasSuffix(host, ":"):
		host = host[:len(host)-1]
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		host = host[:len(host)-3]
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		host = host[:len(host)-4]
	}
	p := removeDotSegments(normalizePercent(u.EscapedPath()))
	if p == "" {
		p = "/"
	}
	return scheme + "://" + host + p, nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
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

// normalizePercent decodes percent-encoded unreserved characters and
// upper-cases the hex digits of the rest (RFC 3986 §6.2.2.1-6.2.2.2).
func normalizePercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' && i+2 < len(p) {
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if ok1 && ok2 {
				v := hi<<4 | lo
				if isUnreserved(v) {
					b.WriteByte(v)
				} else {
					b.WriteByte('%')
					b.WriteByte(hexDigits[hi])
					b.WriteByte(hexDigits[lo])
				}
				i += 2
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

// removeDotSegments is the algorithm of RFC 3986 §5.2.4.
func removeDotSegments(in string) string {
	if !strings.Contains(in, ".") {
		return in
	}
	var out []string
	pop := func() {
		if len(out) > 0 {
			out = out[:len(out)-1]
		}
	}
	for in != "" {
		switch {
		case strings.HasPrefix(in, "../"):
			in = in[3:]
		case strings.HasPrefix(in, "./"):
			in = in[2:]
		case strings.HasPrefix(in, "/./"):
			in = in[2:]
		case in == "/.":
			in = "/"
		case strings.HasPrefix(in, "/../"):
			in = in[3:]
			pop()
		case in == "/..":
			in = "/"
			pop()
		case in == "." || in == "..":
			in = ""
		default:
			start := 0
			if in[0] == '/' {
				start = 1
			}
			i := strings.IndexByte(in[start:], '/')
			if i < 0 {
				i = len(in)
			} else {
				i += start
			}
			out = append(out, in[:i])
			in = in[i:]
		}
	}
	return strings.Join(out, "")
}

// stripURL returns the htu a client puts in a proof: the URL without query
// and fragment (RFC 9449 §4.2), otherwise as the caller wrote it.
func stripURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("parsing URL: %w", err)
	}
	if s := strings.ToLower(u.Scheme); (s != "http" && s != "https") || u.Host == "" || u.Opaque != "" {
		return "", errors.New("URL must be an absolute http or https URL")
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String(), nil
}

package proxy

import (
	"net/url"
	"path"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// FuzzProxyPath checks the request-target parser: whatever it accepts decodes to the path that
// routes are matched against, cannot climb out of the upstream's base path, and holds no
// separator the upstream could read differently. Seeds are in testdata/fuzz/FuzzProxyPath.
func FuzzProxyPath(f *testing.F) {
	for _, s := range []string{
		"/proxy/api/v3/site-explorer/overview?target=x",
		"/proxy/api/items/../admin",
		"/proxy/api/items/%2e%2e/admin",
		"/proxy/api/items%2f..%2fadmin",
		"/proxy/api/items/%252e%252e/",
		"/proxy/api/items/..;/admin",
		"/proxy/api/%c0%ae%c0%ae/",
		"/proxy/api/a%20b/c%3Fd",
		"http://evil/proxy/api/x",
		"/proxy/api//x",
		"/proxy/api/x\\..\\y",
		"/proxy/api/items/%ef%bc%8e%ef%bc%8e/admin",
		"/proxy/api/items/%e2%80%a5/admin",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tgt, reason := parseTarget(in)
		if reason != "" {
			return
		}
		if !validName(tgt.name) {
			t.Fatalf("accepted name %q", tgt.name)
		}
		if !strings.HasPrefix(in, PathPrefix+tgt.name) {
			t.Fatalf("name %q is not what %q names", tgt.name, in)
		}
		dec, err := url.PathUnescape(tgt.rawPath)
		if err != nil || dec != tgt.path {
			t.Fatalf("raw %q decodes to %q (%v), checked path is %q", tgt.rawPath, dec, err, tgt.path)
		}
		lower := strings.ToLower(tgt.rawPath)
		for _, bad := range []string{"%2e", "%2f", "%5c", "%25", "%00", "\\"} {
			if strings.Contains(lower, bad) {
				t.Fatalf("accepted %q with %s", in, bad)
			}
		}
		if strings.ContainsAny(tgt.path, "\\\x00\r\n\t") || strings.Contains(tgt.path[1:], "//") {
			t.Fatalf("accepted path %q", tgt.path)
		}
		for _, seg := range strings.Split(tgt.path, "/") {
			s, _, _ := strings.Cut(seg, ";")
			if s == "." || s == ".." {
				t.Fatalf("accepted dot segment in %q", tgt.path)
			}
		}
		// Whatever an upstream does with dot segments, also after NFKC normalisation (full-width
		// dots and slashes), the path stays below the base and holds no new separator.
		nfkc := norm.NFKC.String(tgt.path)
		for _, c := range "./\\%" {
			if strings.Count(nfkc, string(c)) != strings.Count(tgt.path, string(c)) {
				t.Fatalf("%q normalises to %q: a new %q", in, nfkc, c)
			}
		}
		for _, p := range []string{tgt.path, nfkc} {
			joined := path.Clean("/base" + p)
			if joined != "/base" && !strings.HasPrefix(joined, "/base/") {
				t.Fatalf("%q escapes the base path: %q", in, joined)
			}
		}
	})
}

package proxy

import (
	"regexp"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in         string
		wantReason string
		wantName   string
		wantPath   string
	}{
		{"/proxy/api/v3/x?q=1", "", "api", "/v3/x"},
		{"/proxy/api", "", "api", "/"},
		{"/proxy/api/", "", "api", "/"},
		{"/proxy/api/a%20b/c%3Fd", "", "api", "/a b/c?d"},
		{"/proxy/api/caf%C3%A9", "", "api", "/café"},
		{"/proxy/api/a;b=c", "", "api", "/a;b=c"},
		{"/proxy/api/..x/x..", "", "api", "/..x/x.."},
		{"/proxy/Api/x", reasonUnknownUpstream, "", ""},
		{"/proxy/" + strings.Repeat("a", 41) + "/x", reasonUnknownUpstream, "", ""},
		{"/proxy/a.b/x", reasonBadPath, "", ""},
		{"/proxy/%61pi/x", reasonBadPath, "", ""},
		{"/proxy/api/%zz", reasonBadPath, "", ""},
		{"/proxy/api/%2", reasonBadPath, "", ""},
		{"/proxy/api/a%", reasonBadPath, "", ""},
		{"/proxy/api/..", reasonBadPath, "", ""},
		{"/proxy/api/../x", reasonBadPath, "", ""},
		{"/proxy/api/x/.", reasonBadPath, "", ""},
		{"/proxy/api/x/.;a", reasonBadPath, "", ""},
		{"/proxy/api/%2e%2e/x", reasonBadPath, "", ""},
		{"/proxy/api/%2E./x", reasonBadPath, "", ""},
		{"/proxy/api/x%2Fy", reasonBadPath, "", ""},
		{"/proxy/api/x%5cy", reasonBadPath, "", ""},
		{"/proxy/api/x%255cy", reasonBadPath, "", ""},
		{"/proxy/api/x%00", reasonBadPath, "", ""},
		{"/proxy/api/items/%ef%bc%8e%ef%bc%8e/admin", reasonBadPath, "", ""}, // U+FF0E full-width dots: ".." after NFKC
		{"/proxy/api/items/%e2%80%a5/admin", reasonBadPath, "", ""},          // U+2025 "‥"
		{"/proxy/api/items/%e2%80%a4%e2%80%a4", reasonBadPath, "", ""},       // U+2024 "․"
		{"/proxy/api/a%ef%bc%8fb", reasonBadPath, "", ""},                    // U+FF0F full-width solidus
		{"/proxy/api/a%ef%bc%bcb", reasonBadPath, "", ""},                    // U+FF3C full-width backslash
		{"/proxy/api/a%ef%bc%85%32%65", reasonBadPath, "", ""},               // U+FF05 full-width percent
		{"/proxy/api/a%e2%80%a6", reasonBadPath, "", ""},                     // U+2026 "…"
		{"/proxy/api/%e2%91%a0%ef%bd%81", "", "api", "/①ａ"},                  // letters and digits normalise to letters and digits
		{"/proxy/api/x%0d%0aHost:%20evil", reasonBadPath, "", ""},
		{"/proxy/api/x%7f", reasonBadPath, "", ""},
		{"/proxy/api/%c0%ae%c0%ae/x", reasonBadPath, "", ""},
		{"/proxy/api/%ff", reasonBadPath, "", ""},
		{"/proxy/api/x\\y", reasonBadPath, "", ""},
		{"/proxy/api/x\x00", reasonBadPath, "", ""},
		{"/proxy/api/x y", reasonBadPath, "", ""},
		{"/proxy/api/x#y", reasonBadPath, "", ""},
		{"/proxy/api//x", reasonBadPath, "", ""},
		{"/proxy/api/\xc3\xa9", reasonBadPath, "", ""},
		{"/proxy//x", reasonUnknownUpstream, "", ""},
		{"/other/api/x", reasonBadPath, "", ""},
		{"http://evil/proxy/api/x", reasonAbsoluteURL, "", ""},
		{"*", reasonAbsoluteURL, "", ""},
		{"evil:443", reasonAbsoluteURL, "", ""},
		{"", reasonAbsoluteURL, "", ""},
	}
	for _, tt := range tests {
		got, reason := parseTarget(tt.in)
		if reason != tt.wantReason {
			t.Errorf("parseTarget(%q) reason %q, want %q", tt.in, reason, tt.wantReason)
			continue
		}
		if reason == "" && (got.name != tt.wantName || got.path != tt.wantPath) {
			t.Errorf("parseTarget(%q) = %q %q, want %q %q", tt.in, got.name, got.path, tt.wantName, tt.wantPath)
		}
	}
}

func TestSameHost(t *testing.T) {
	tests := []struct {
		host, want, scheme string
		ok                 bool
	}{
		{"mandate.example", "mandate.example", "https", true},
		{"MANDATE.example:443", "mandate.example", "https", true},
		{"mandate.example:80", "mandate.example", "http", true},
		{"mandate.example:8443", "mandate.example", "https", false},
		{"evil.example", "mandate.example", "https", false},
		{"", "mandate.example", "https", false},
		{"127.0.0.1:9", "127.0.0.1:9", "http", true},
		{"127.0.0.1:19410:80", "127.0.0.1:19410", "http", false},
		{"127.0.0.1:19410:", "127.0.0.1:19410", "http", false},
		{"127.0.0.1:19410::", "127.0.0.1:19410", "http", false},
		{"127.0.0.1:019410", "127.0.0.1:19410", "http", true},
		{"127.0.0.1:19410 ", "127.0.0.1:19410", "http", false},
		{"127.0.0.1:+19410", "127.0.0.1:19410", "http", false},
		{"127.0.0.1:19410x", "127.0.0.1:19410", "http", false},
		{"127.0.0.1@127.0.0.1:19410", "127.0.0.1:19410", "http", false},
		{"mandate.example:", "mandate.example", "https", true},
		{"mandate.example:443:443", "mandate.example", "https", false},
		{"mandate.example:0", "mandate.example", "https", false},
		{"[::1]:8080", "[::1]:8080", "http", true},
		{"[::1]:8080:80", "[::1]:8080", "http", false},
		{"[::1]x", "[::1]", "http", false},
		{"[::1", "[::1]", "http", false},
		{":443", "mandate.example", "https", false},
	}
	for _, tt := range tests {
		if got := sameHost(tt.host, tt.want, tt.scheme); got != tt.ok {
			t.Errorf("sameHost(%q, %q) = %v", tt.host, tt.want, got)
		}
	}
}

// FuzzSameHost: a Host header is accepted only when it spells the server's host and port,
// up to case, leading zeros of the port and the scheme's default port.
func FuzzSameHost(f *testing.F) {
	for _, s := range []string{"127.0.0.1:19410", "127.0.0.1:19410:80", "127.0.0.1:19410:", "MANDATE.example:443", "mandate.example:", "[::1]:8080"} {
		f.Add(s)
	}
	ip := regexp.MustCompile(`^127\.0\.0\.1:0*19410$`)
	name := regexp.MustCompile(`(?i)^mandate\.example(:0*443|:)?$`)
	f.Fuzz(func(t *testing.T, h string) {
		if sameHost(h, "127.0.0.1:19410", "http") != ip.MatchString(h) {
			t.Errorf("sameHost(%q, 127.0.0.1:19410) = %v", h, !ip.MatchString(h))
		}
		if sameHost(h, "mandate.example", "https") != name.MatchString(h) {
			t.Errorf("sameHost(%q, mandate.example) = %v", h, !name.MatchString(h))
		}
	})
}

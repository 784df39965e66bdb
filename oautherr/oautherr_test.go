package oautherr

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func TestWrite(t *testing.T) {
	dpopAlgs := []string{"EdDSA", "Ed25519", "ES256"}
	tests := map[string]struct {
		f          Refusal
		preset     http.Header // set on the response before Write
		wantStatus int
		wantBody   Body
		wantHeader http.Header // each must be exactly so; "" = absent
	}{
		"plain": {
			f:          Refusal{Status: 400, Code: "invalid_request", Description: "send a form", RequestID: "req_1"},
			wantStatus: 400,
			wantBody:   Body{"invalid_request", "send a form", "req_1"},
			wantHeader: http.Header{"Cache-Control": {"no-store"}, "Content-Type": {"application/json"},
				"X-Request-Id": {"req_1"}, "Www-Authenticate": {""}, "Dpop-Nonce": {""}},
		},
		"dpop challenge with nonce": {
			f: Refusal{Status: 401, Code: "use_dpop_nonce", Description: "use the nonce", RequestID: "req_2", Nonce: "n-1",
				Challenge: &Challenge{Error: "use_dpop_nonce", Description: "use the nonce", Algs: dpopAlgs}},
			wantStatus: 401,
			wantBody:   Body{"use_dpop_nonce", "use the nonce", "req_2"},
			wantHeader: http.Header{"Dpop-Nonce": {"n-1"},
				"Www-Authenticate": {`DPoP error="use_dpop_nonce", error_description="use the nonce", algs="EdDSA Ed25519 ES256"`}},
		},
		"no credentials: no error in the challenge (RFC 6750 §3.1)": {
			f: Refusal{Status: 401, Code: "invalid_token", Description: "send a token", RequestID: "req_3",
				Challenge: &Challenge{Scheme: "DPoP", Description: "send a token", Scope: "a", ResourceMetadata: "https://as/m", Algs: dpopAlgs}},
			wantStatus: 401,
			wantBody:   Body{"invalid_token", "send a token", "req_3"},
			wantHeader: http.Header{"Www-Authenticate": {`DPoP resource_metadata="https://as/m", algs="EdDSA Ed25519 ES256"`}},
		},
		"insufficient scope": {
			f: Refusal{Status: 403, Code: "insufficient_scope", Description: "needs x", RequestID: "req_4",
				Challenge: &Challenge{Error: "insufficient_scope", Description: "needs x", Scope: "x y", ResourceMetadata: "https://as/m", Algs: dpopAlgs}},
			wantStatus: 403,
			wantBody:   Body{"insufficient_scope", "needs x", "req_4"},
			wantHeader: http.Header{"Www-Authenticate": {`DPoP error="insufficient_scope", error_description="needs x", scope="x y", resource_metadata="https://as/m", algs="EdDSA Ed25519 ES256"`}},
		},
		"bearer challenge has no algs": {
			f: Refusal{Status: 401, Code: "unauthenticated", Description: "log in", RequestID: "req_5",
				Challenge: &Challenge{Scheme: "Bearer", Realm: "mandate", Error: "invalid_token", Algs: dpopAlgs}},
			wantStatus: 401,
			wantBody:   Body{"unauthenticated", "log in", "req_5"},
			wantHeader: http.Header{"Www-Authenticate": {`Bearer realm="mandate", error="invalid_token"`}},
		},
		"quotes and line breaks cannot leave the challenge": {
			f: Refusal{Status: 401, Code: "invalid_token", Description: "say \"hi\"\r\nSet-Cookie: x=1 \\ é", RequestID: "req_6",
				Challenge: &Challenge{Error: "invalid_token", Description: "say \"hi\"\r\nSet-Cookie: x=1 \\ é"}},
			wantStatus: 401,
			wantBody:   Body{"invalid_token", "say \"hi\"\r\nSet-Cookie: x=1 \\ é", "req_6"},
			wantHeader: http.Header{"Www-Authenticate": {`DPoP error="invalid_token", error_description="say 'hi'  Set-Cookie: x=1    "`}, "Set-Cookie": {""}},
		},
		"extra headers replace earlier ones": {
			f:          Refusal{Status: 429, Code: "rate_limited", Description: "wait", RequestID: "req_7", Header: http.Header{"retry-after": {"3"}}},
			preset:     http.Header{"Retry-After": {"1"}, "Content-Length": {"99"}, "Cache-Control": {"max-age=60"}},
			wantStatus: 429,
			wantBody:   Body{"rate_limited", "wait", "req_7"},
			wantHeader: http.Header{"Retry-After": {"3"}, "Content-Length": {""}, "Cache-Control": {"no-store"}},
		},
		"the server's X-Request-Id stays": {
			f:          Refusal{Status: 404, Code: "not_found", Description: "no", RequestID: "req_8"},
			preset:     http.Header{"X-Request-Id": {"req_8"}},
			wantStatus: 404,
			wantBody:   Body{"not_found", "no", "req_8"},
			wantHeader: http.Header{"X-Request-Id": {"req_8"}},
		},
		"no request id": {
			f:          Refusal{Status: 503, Code: "temporarily_unavailable", Description: "try again later"},
			wantStatus: 503,
			wantBody:   Body{"temporarily_unavailable", "try again later", ""},
			wantHeader: http.Header{"X-Request-Id": {""}},
		},
		"a request id unfit for a header stays in the body only": {
			f:          Refusal{Status: 400, Code: "invalid_request", Description: "d", RequestID: "a\nb"},
			wantStatus: 400,
			wantBody:   Body{"invalid_request", "d", "a\nb"},
			wantHeader: http.Header{"X-Request-Id": {""}},
		},
		"a status that is no refusal is a 500": {
			f:          Refusal{Status: 200, Code: "server_error", Description: "d", RequestID: "req_9"},
			wantStatus: 500,
			wantBody:   Body{"server_error", "d", "req_9"},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			for k, v := range tt.preset {
				rec.Header()[k] = v
			}
			Write(rec, tt.f)
			if rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			var got Body
			dec := json.NewDecoder(rec.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("body: %v", err)
			}
			if diff := cmp.Diff(tt.wantBody, got); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			for k, want := range tt.wantHeader {
				if got := rec.Header().Get(k); got != want[0] {
					t.Errorf("%s = %q, want %q", k, got, want[0])
				}
			}
			if got := rec.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", got)
			}
		})
	}
}

// TestQuotable: only RFC 6750 §3's characters are left, and clean values are kept as they are.
func TestQuotable(t *testing.T) {
	got := Quotable("bad \"quote\" \\ back\nslash \x00 é \xff")
	for i := 0; i < len(got); i++ {
		if !allowed(got[i]) {
			t.Fatalf("Quotable left %q in %q", got[i], got)
		}
	}
	if want := `bad 'quote'   back slash      `; got != want {
		t.Errorf("Quotable = %q, want %q", got, want)
	}
	if s := "the token's key: use mandate exec"; Quotable(s) != s {
		t.Errorf("Quotable changed a clean value")
	}
}

// FuzzWrite: whatever the code, description, request id, nonce, scope or extra header value,
// the body is one JSON object with exactly the three fields and the values given (as JSON can
// carry them), no header value holds a control byte, and the challenge parses as a scheme and
// quoted parameters of RFC 6750 §3's characters only.
func FuzzWrite(f *testing.F) {
	f.Add("invalid_token", "the token has expired: get a new one", "req_abc", "nonce-1", "read write", "3", "https://as.example/m")
	f.Add("use_dpop_nonce", "say \"hi\"\r\nSet-Cookie: a=b", "a\nb", "n\r\nX: y", "\\\"", "1\r\n\r\n<html>", "\"")
	f.Add("", "", "", "", "", "", "")
	f.Add("é\xff\x00", "\u2028\u2029</script>", "\x7f", "\t", "=,", " ", "\\")
	f.Fuzz(func(t *testing.T, code, desc, reqID, nonce, scope, extra, metadata string) {
		rec := httptest.NewRecorder()
		Write(rec, Refusal{Status: 401, Code: code, Description: desc, RequestID: reqID, Nonce: nonce,
			Header:    http.Header{"Retry-After": {extra}},
			Challenge: &Challenge{Realm: scope, Error: code, Description: desc, Scope: scope, ResourceMetadata: metadata, Algs: []string{"EdDSA", extra}}})

		raw := rec.Body.Bytes()
		if !json.Valid(raw) || !utf8.Valid(raw) {
			t.Fatalf("body is not valid JSON in UTF-8: %q", raw)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		for k := range m {
			if k != "error" && k != "error_description" && k != "request_id" {
				t.Fatalf("body has field %q", k)
			}
		}
		var b Body
		_ = json.Unmarshal(raw, &b)
		for _, p := range [][2]string{{code, b.Error}, {desc, b.Description}, {reqID, b.RequestID}} {
			if utf8.ValidString(p[0]) && p[0] != p[1] {
				t.Fatalf("body carries %q for %q", p[1], p[0])
			}
		}

		for k, vs := range rec.Header() {
			for _, v := range vs {
				for i := 0; i < len(v); i++ {
					if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
						t.Fatalf("header %s carries byte %#x: %q", k, c, v)
					}
				}
			}
		}
		if id := rec.Header().Get(RequestIDHeader); id != "" && id != b.RequestID {
			t.Fatalf("X-Request-Id %q differs from the body's %q", id, b.RequestID)
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatal("refusal is cacheable")
		}
		if err := parseChallenge(rec.Header().Get("WWW-Authenticate")); err != "" {
			t.Fatalf("challenge %q: %s", rec.Header().Get("WWW-Authenticate"), err)
		}
	})
}

// parseChallenge checks ch against RFC 9110 §11.6.1 as RFC 6750 §3 narrows it: a scheme, then
// name="value" pairs separated by ", ", each value of %x20-21 / %x23-5B / %x5D-7E. It returns
// what is wrong, or "".
func parseChallenge(ch string) string {
	scheme, rest, _ := strings.Cut(ch, " ")
	if scheme != "DPoP" && scheme != "Bearer" {
		return "scheme " + scheme
	}
	for rest != "" {
		name, after, ok := strings.Cut(rest, `="`)
		if !ok || name == "" || strings.ContainsAny(name, ` ",=\`) {
			return "bad parameter name near " + rest
		}
		end := strings.IndexByte(after, '"')
		if end < 0 {
			return "unterminated value"
		}
		for i := 0; i < end; i++ {
			if !allowed(after[i]) {
				return "value byte " + string(after[i])
			}
		}
		rest = after[end+1:]
		if rest != "" {
			var ok bool
			if rest, ok = strings.CutPrefix(rest, ", "); !ok {
				return "no separator before " + rest
			}
		}
	}
	return ""
}

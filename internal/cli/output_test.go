package cli

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/api"
)

func TestRelTime(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		d    time.Duration
		want string
	}{
		"now":               {0, "now"},
		"rounds to now":     {400 * time.Millisecond, "now"},
		"seconds":           {42 * time.Second, "in 42s"},
		"minute":            {time.Minute, "in 1m"},
		"minutes, seconds":  {4*time.Minute + 30*time.Second, "in 4m30s"},
		"hours drop secs":   {3*time.Hour + 5*time.Minute + 9*time.Second, "in 3h5m"},
		"hour and seconds":  {time.Hour + 9*time.Second, "in 1h"},
		"days":              {30 * 24 * time.Hour, "in 30d"},
		"days and hours":    {50 * time.Hour, "in 2d2h"},
		"past seconds":      {-59 * time.Second, "59s ago"},
		"past minutes":      {-90 * time.Second, "1m30s ago"},
		"past days":         {-8 * 24 * time.Hour, "8d ago"},
		"almost a minute":   {59*time.Second + 600*time.Millisecond, "in 1m"},
		"just under a hour": {-(59*time.Minute + 59*time.Second), "59m59s ago"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := relTime(now.Add(tc.d), now); got != tc.want {
				t.Errorf("relTime(%v) = %q, want %q", tc.d, got, tc.want)
			}
		})
	}
}

func TestWhen(t *testing.T) {
	now := time.Now()
	if got := when(time.Time{}, now); got != "-" {
		t.Errorf("when(zero) = %q, want -", got)
	}
	if got := whenPtr(nil, now); got != "-" {
		t.Errorf("whenPtr(nil) = %q, want -", got)
	}
	at := now.Add(5 * time.Minute)
	want := at.Local().Format(timeLayout) + " (in 5m)"
	if got := when(at, now); got != want {
		t.Errorf("when = %q, want %q", got, want)
	}
}

func TestTable(t *testing.T) {
	var buf bytes.Buffer
	tb := newTable(&buf, "ID", "NAME", "NOTE")
	tb.row("usr_1", "alice", "")
	tb.row("usr_22", "bo\tb", "line\nbreak")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID      NAME       NOTE\n" +
		"usr_1   alice      -\n" +
		"usr_22  bo\\u0009b  line\\u000Abreak\n" // escaped by termSafe, never a cell or row of their own
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

func TestPrintJSON(t *testing.T) {
	tests := map[string]struct {
		in   any
		want string
	}{
		"server answer re-indented": {[]byte(`{"a":1,"b":[2]}` + "\n"), "{\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}\n"},
		"value":                     {map[string]string{"did": "did:key:z"}, "{\n  \"did\": \"did:key:z\"\n}\n"},
		"embedded raw":              {map[string]any{"user": jsonRaw([]byte(" {\"n\":1}\n"))}, "{\n  \"user\": {\n    \"n\": 1\n  }\n}\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := printJSON(&buf, tc.in); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, buf.String()); diff != "" {
				t.Errorf("printJSON (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	tests := map[string]struct {
		err  error
		want string
	}{
		"server error": {
			&serverError{Status: 400, Code: "invalid_request", Description: "the claim code is invalid", RequestID: "req_1"},
			"the claim code is invalid (invalid_request, request req_1)",
		},
		"no request id": {
			&serverError{Status: 403, Code: "forbidden", Description: "only an admin can list users"},
			"only an admin can list users (forbidden)",
		},
		"no code": {
			&serverError{Status: 502, Description: "bad gateway"},
			"bad gateway (HTTP 502)",
		},
		"no description": {
			&serverError{Status: 404},
			"Not Found (HTTP 404)",
		},
		"client SDK error": {
			explain(fmt.Errorf("wrapped: %w", &client.Error{Status: 401, Code: "invalid_client", Description: "the agent is revoked", RequestID: "req_2"}), "http://x"),
			"the agent is revoked (invalid_client, request req_2)",
		},
		"network error": {
			explain(fmt.Errorf("client: POST http://127.0.0.1:9/oauth/token: %w", refused), "http://127.0.0.1:9"),
			"cannot reach http://127.0.0.1:9: dial tcp: connection refused\nis mandate serve running at http://127.0.0.1:9? start it with: mandate serve",
		},
		"other errors pass": {
			explain(errors.New("no agent key"), "http://x"),
			"no agent key",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNormalizeServer(t *testing.T) {
	tests := map[string]struct {
		in, want string
		bad      bool
	}{
		"plain":          {in: "http://127.0.0.1:8420", want: "http://127.0.0.1:8420"},
		"trailing slash": {in: "https://auth.example.com/", want: "https://auth.example.com"},
		"path kept":      {in: "https://example.com/mandate/", want: "https://example.com/mandate"},
		"no scheme":      {in: "127.0.0.1:8420", bad: true},
		"other scheme":   {in: "ftp://example.com", bad: true},
		"query":          {in: "https://example.com?x=1", bad: true},
		"empty":          {in: "", bad: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := normalizeServer(tc.in)
			if tc.bad {
				if err == nil {
					t.Errorf("normalizeServer(%q) = %q, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("normalizeServer(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestKeyStates(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	key := func(activeIn time.Duration) api.SigningKeyJSON {
		return api.SigningKeyJSON{ActiveAt: now.Add(activeIn)}
	}
	tests := map[string]struct {
		keys []api.SigningKeyJSON
		want []string
	}{
		"one":                  {[]api.SigningKeyJSON{key(-time.Hour)}, []string{"signing"}},
		"rotated, not yet":     {[]api.SigningKeyJSON{key(10 * time.Minute), key(-time.Hour)}, []string{"published", "signing"}},
		"rotated, now signing": {[]api.SigningKeyJSON{key(-time.Minute), key(-time.Hour)}, []string{"signing", "retiring"}},
		"any order":            {[]api.SigningKeyJSON{key(-time.Hour), key(-time.Minute), key(time.Hour)}, []string{"retiring", "signing", "published"}},
		"none":                 {nil, []string{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, keyStates(tc.keys, now)); diff != "" {
				t.Errorf("keyStates (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTokenStatus(t *testing.T) {
	now := time.Now()
	past, future := now.Add(-time.Minute), now.Add(time.Minute)
	tests := map[string]struct {
		tok  api.TokenJSON
		want string
	}{
		"active":           {api.TokenJSON{ExpiresAt: &future}, "active"},
		"no expiry":        {api.TokenJSON{}, "active"},
		"expired":          {api.TokenJSON{ExpiresAt: &past}, "expired"},
		"revoked":          {api.TokenJSON{RevokedAt: &past, ExpiresAt: &future}, "revoked"},
		"revoked, expired": {api.TokenJSON{RevokedAt: &past, ExpiresAt: &past}, "revoked"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tokenStatus(tc.tok, now); got != tc.want {
				t.Errorf("status = %q, want %q", got, tc.want)
			}
		})
	}
}

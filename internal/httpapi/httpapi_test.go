package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
)

func TestErrorsAndRequestIDs(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(LogHandler{slog.NewJSONHandler(&logs, nil)})
	mux := http.NewServeMux()
	mux.Handle("GET /refused", Handle(log, func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Client-Id-Seen", audit.OriginFrom(r.Context()).ClientRequestID)
		return apperr.New(apperr.Conflict, "handle_taken", "handle %q is taken", "x")
	}))
	mux.Handle("GET /broken", Handle(log, func(w http.ResponseWriter, r *http.Request) error {
		return errors.New("dial tcp 10.0.0.1: password=hunter2 refused")
	}))
	mux.Handle("GET /panic", Handle(log, func(w http.ResponseWriter, r *http.Request) error { panic("boom") }))
	h := Middleware(log, NewMetrics(prometheus.NewRegistry()), mux)

	tests := map[string]struct {
		path, reqID      string
		status           int
		code, descSubstr string
		keepID           bool
	}{
		"domain refusal":        {"/refused", "", 409, "conflict", `handle "x" is taken`, false},
		"internal error hidden": {"/broken", "", 500, "server_error", "request id", false},
		"panic recovered":       {"/panic", "", 500, "server_error", "request id", false},
		"caller's request id":   {"/refused", "abc-123", 409, "conflict", "taken", true},
		"forged request id":     {"/refused", "x\ny=1", 409, "conflict", "taken", false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			logs.Reset()
			req := httptest.NewRequest("GET", tt.path, nil)
			if tt.reqID != "" {
				req.Header.Set(RequestIDHeader, tt.reqID)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var body map[string]string
			json.Unmarshal(rec.Body.Bytes(), &body)
			if rec.Code != tt.status || body["error"] != tt.code || !strings.Contains(body["error_description"], tt.descSubstr) {
				t.Fatalf("got %d %v", rec.Code, body)
			}
			if rec.Header().Get("Cache-Control") != "no-store" {
				t.Error("error response is cacheable")
			}
			id := rec.Header().Get(RequestIDHeader)
			if body["request_id"] != id || id == "" {
				t.Errorf("request_id %q, header %q", body["request_id"], id)
			}
			// The server always issues its own id; a plain caller's id is kept beside it.
			if !strings.HasPrefix(id, "req_") || id == tt.reqID {
				t.Errorf("request id %q for caller's %q", id, tt.reqID)
			}
			if seen := rec.Header().Get("Client-Id-Seen"); tt.keepID != (seen == tt.reqID && seen != "") {
				t.Errorf("client request id %q kept for caller's %q", seen, tt.reqID)
			}
			if strings.Contains(rec.Body.String(), "hunter2") {
				t.Error("the cause leaked to the client")
			}
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["request_id"] != id {
					t.Errorf("log line without the request id: %s", line)
				}
			}
		})
	}
}

// TestAuditUnavailable: a server failure that left its audit record unwritten is a 503 that
// says nothing was done, however it was wrapped; a refusal of the caller stays what it was.
func TestAuditUnavailable(t *testing.T) {
	store := fmt.Errorf("insert audit event: %w: %w", audit.ErrUnavailable, errors.New("disk full"))
	for _, tc := range []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
	}{
		{"store error", fmt.Errorf("record token issue: %w", store), http.StatusServiceUnavailable, "audit_unavailable"},
		{"internal apperr", apperr.Wrap(store, apperr.Internal, "internal", "failed"), http.StatusServiceUnavailable, "audit_unavailable"},
		{"500 Error", &Error{Status: 500, Code: "server_error", Cause: store}, http.StatusServiceUnavailable, "audit_unavailable"},
		{"refusal whose denial was not recorded", errors.Join(Errorf(http.StatusBadRequest, "invalid_grant", "no"), store), http.StatusBadRequest, "invalid_grant"},
		{"other failure", errors.New("boom"), http.StatusInternalServerError, "server_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := AsError(tc.err)
			if e.Status != tc.wantStatus || e.Code != tc.wantCode {
				t.Errorf("AsError = %d %s, want %d %s", e.Status, e.Code, tc.wantStatus, tc.wantCode)
			}
			rec := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			WriteError(rec, r, slog.New(slog.DiscardHandler), tc.err)
			if rec.Code != tc.wantStatus {
				t.Errorf("WriteError status %d, want %d", rec.Code, tc.wantStatus)
			}
			if tc.wantCode == "audit_unavailable" && rec.Header().Get("Retry-After") == "" {
				t.Errorf("503 audit_unavailable without Retry-After")
			}
		})
	}
}

// TestCredentialNeverInOrigin: the request's own credential, pasted into what the client says
// about itself (User-Agent, X-Request-Id) or into the path, as written or encoded, reaches
// neither the request's origin (which the audit trail records) nor the access log (the outside
// attack found an API token stored verbatim from those headers).
func TestCredentialNeverInOrigin(t *testing.T) {
	const cred = "mnd_Qx7vT2kLp9ZrW4sYb8NcD1eF"
	var logs bytes.Buffer
	log := slog.New(LogHandler{slog.NewJSONHandler(&logs, nil)})
	var seen audit.Origin
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { seen = audit.OriginFrom(r.Context()) })
	h := Middleware(log, NewMetrics(prometheus.NewRegistry()), mux)
	forms := map[string]string{
		"as written":      cred,
		"in a sentence":   "cli/1.0 (" + cred + ")",
		"query-escaped":   url.QueryEscape(cred),
		"every byte":      escapeEvery(cred),
		"base64":          base64.StdEncoding.EncodeToString([]byte(cred + "\n")),
		"base64url":       base64.RawURLEncoding.EncodeToString([]byte(cred)),
		"hex, upper case": strings.ToUpper(hex.EncodeToString([]byte(cred))),
		"encoded twice":   strings.ReplaceAll(escapeEvery(cred), "%", "%25"),
	}
	for name, form := range forms {
		for _, where := range []string{"user agent", "request id", "path"} {
			t.Run(name+" in the "+where, func(t *testing.T) {
				logs.Reset()
				path := "/v1/users/x"
				if where == "path" {
					path = "/v1/users/" + url.PathEscape(form)
				}
				req := httptest.NewRequest("GET", path, nil)
				req.Header.Set("Authorization", "Bearer "+cred)
				switch where {
				case "user agent":
					req.Header.Set("User-Agent", form)
				case "request id":
					req.Header.Set(RequestIDHeader, form)
				}
				h.ServeHTTP(httptest.NewRecorder(), req)
				for _, v := range []string{seen.UserAgent, seen.ClientRequestID, logs.String()} {
					if strings.Contains(v, form) || strings.Contains(v, cred) {
						t.Errorf("%q holds the credential", v)
					}
				}
			})
		}
	}
}

func escapeEvery(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

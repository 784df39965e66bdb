package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/ratelimit"
	"github.com/mandate-dev/mandate/oautherr"
)

type ctxKey int

const requestIDKey ctxKey = iota

// RequestIDHeader carries the request id in both directions.
const RequestIDHeader = oautherr.RequestIDHeader

// A caller-supplied request id is kept only when it is short and plain, so it cannot forge log
// lines or carry a payload.
var validRequestID = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// withheld stands for a value that held the request's own credential.
const withheld = "(withheld)"

// requestCredential is the credential of r's Authorization header (what follows the scheme), or
// "" when there is none long enough to look for without matching ordinary text.
func requestCredential(r *http.Request) string {
	_, cred, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if cred = strings.TrimSpace(cred); len(cred) < 12 {
		return ""
	}
	return cred
}

// holdsCredential reports whether s holds cred as written, percent-encoded (once or more),
// hex-encoded or base64-encoded from its first byte (standard or URL alphabet).
func holdsCredential(s, cred string) bool {
	if s == "" {
		return false
	}
	whole := cred[:len(cred)-len(cred)%3]                                       // base64 of what follows may change the last group
	if strings.Contains(strings.ToLower(s), hex.EncodeToString([]byte(cred))) { // hex in either case
		return true
	}
	for _, form := range []string{cred, url.QueryEscape(cred),
		base64.RawStdEncoding.EncodeToString([]byte(whole)), base64.RawURLEncoding.EncodeToString([]byte(whole))} {
		if strings.Contains(s, form) {
			return true
		}
	}
	for d, i := s, 0; i < 4; i++ {
		u, err := url.PathUnescape(d)
		if err != nil || u == d {
			break
		}
		if d = u; strings.Contains(d, cred) {
			return true
		}
	}
	return false
}

// maxUserAgent bounds what one request can put in the audit trail.
const maxUserAgent = 256

// userAgent is the request's User-Agent, printable and at most maxUserAgent bytes.
func userAgent(r *http.Request) string {
	ua := r.Header.Get("User-Agent")
	ua = strings.Map(func(c rune) rune {
		if c < ' ' || c == 0x7f || c == utf8.RuneError {
			return -1
		}
		return c
	}, ua)
	if len(ua) > maxUserAgent {
		ua = strings.ToValidUTF8(ua[:maxUserAgent], "")
	}
	return ua
}

type logPathKey struct{}

// SetLogPath makes the access log line of the request in ctx show path instead of the path
// requested: a handler whose paths may hold a secret (the proxy, where an agent may write the
// upstream's credential into the path) logs them masked. Outside Middleware it does nothing.
func SetLogPath(ctx context.Context, path string) {
	if lp, ok := ctx.Value(logPathKey{}).(*string); ok {
		*lp = path
	}
}

// RequestID returns the request id in ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// WithRequestID returns ctx carrying id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}

// LogHandler adds request_id from the context to every record, so every line of a request is
// joined by it without each call site passing it.
type LogHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return LogHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h LogHandler) WithGroup(name string) slog.Handler { return LogHandler{h.Handler.WithGroup(name)} }

// Metrics are the HTTP-level Prometheus collectors.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics registers the HTTP collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_http_requests_total", Help: "HTTP requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mandate_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// MethodLabel is the metrics label of a request method: the methods of RFC 9110 and PATCH as
// they are, any other OTHER. The method is the client's choice, and every label value is a new
// series kept for the life of the process.
func MethodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// CodeLabel is the metrics label of a response status: a registered code as its number, any
// other as its class ("5xx"), since the proxy passes on whatever code an upstream sends. 0 (no
// header written) is the 200 net/http sends.
func CodeLabel(code int) string {
	switch {
	case code == 0:
		return "200"
	case http.StatusText(code) != "":
		return strconv.Itoa(code)
	case code >= 100 && code <= 999:
		return strconv.Itoa(code/100) + "xx"
	}
	return "other"
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (deadlines, flushing) through this
// wrapper: the proxy streams long bodies and must push its deadlines forward.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Middleware wraps the router: request id, panic recovery, one access log line and metrics per
// request. Every metrics label is bounded whatever the client sends: route is the pattern matched
// (r.Pattern), never the path; method and code go through MethodLabel and CodeLabel.
func Middleware(log *slog.Logger, m *Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		// The request id is always the server's own, so it names exactly one request in the
		// audit trail; a client's id is kept beside it (client_request_id) to join its own logs.
		id := ids.New("req")
		origin := audit.Origin{RequestID: id, Addr: ratelimit.ClientIPFrom(r.Context()), UserAgent: userAgent(r)}
		if cid := r.Header.Get(RequestIDHeader); validRequestID.MatchString(cid) {
			origin.ClientRequestID = cid
		}
		// What the client says about itself, and its path, reach the audit trail and the log:
		// never with the request's own credential in them (a token pasted into the wrong header).
		logPath := new(string)
		if cred := requestCredential(r); cred != "" {
			if holdsCredential(origin.UserAgent, cred) {
				origin.UserAgent = withheld
			}
			if holdsCredential(origin.ClientRequestID, cred) {
				origin.ClientRequestID = withheld
			}
			if holdsCredential(r.URL.Path, cred) || holdsCredential(r.URL.RawPath, cred) {
				*logPath = "(withheld: the path holds the request's credential)"
			}
		}
		ctx := audit.WithOrigin(WithRequestID(r.Context(), id), origin)
		ctx = context.WithValue(ctx, logPathKey{}, logPath)
		r = r.WithContext(ctx)
		w.Header().Set(RequestIDHeader, id)
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					// The handler aborted a response on purpose (a broken stream): the server
					// must cut the connection, so the client never takes a truncated body for whole.
					panic(p)
				}
				log.ErrorContext(ctx, "panic", slog.String("panic", fmt.Sprint(p)), slog.String("stack", string(debug.Stack())))
				if sw.status == 0 {
					WriteError(sw, r, log, fmt.Errorf("panic: %v", p))
				}
			}
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			elapsed := time.Since(start)
			method := MethodLabel(r.Method)
			m.requests.WithLabelValues(route, method, CodeLabel(sw.status)).Inc()
			m.latency.WithLabelValues(route, method).Observe(elapsed.Seconds())
			path := r.URL.Path
			if lp := ctx.Value(logPathKey{}).(*string); *lp != "" {
				path = *lp
			}
			log.InfoContext(ctx, "http request", slog.String("method", r.Method), slog.String("path", path),
				slog.Int("status", sw.status), slog.Duration("duration", elapsed))
		}()
		next.ServeHTTP(sw, r)
	})
}

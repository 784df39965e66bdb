package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/loopback"
	"github.com/mandate-dev/mandate/oautherr"
)

// droppedRequestHeaders are the tool's headers the sidecar never forwards: its credentials
// (a placeholder at best, a real key at worst) and proofs, which the sidecar replaces with the
// task's. Hop-by-hop headers (RFC 9110 §7.6.1) and X-Forwarded-* are dropped by
// httputil.ReverseProxy itself.
var droppedRequestHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "DPoP", "Forwarded"}

// droppedResponseHeaders are not handed back to the tool: cookies of the upstream (the tool
// never sends cookies through the sidecar, so they would only leak a session).
var droppedResponseHeaders = []string{"Set-Cookie", "Set-Cookie2"}

// replayableBody is the largest request body the sidecar holds in memory so that the request
// can be sent again when the server asks for a DPoP nonce; larger bodies stream through once.
const replayableBody = 64 << 10

// UpstreamName is the form of an upstream's name (as the vault accepts it).
var UpstreamName = regexp.MustCompile(`^[a-z0-9-]{1,40}$`)

// forwarder is the sidecar's HTTP handler.
type forwarder struct {
	base      *url.URL        // the issuer
	upstreams map[string]bool // the upstreams it forwards to; nil = any
	proxy     *httputil.ReverseProxy
	keeper    *keeper   // the task's token; its loss is answered without forwarding
	log       io.Writer // one line per request (never the query), nil = none
	logMu     sync.Mutex
}

type targetKey struct{}

// newForwarder returns the handler for base (the issuer, checked by Config.Validate): rt sends
// each forwarded request with the task's credentials.
func newForwarder(base *url.URL, rt http.RoundTripper, k *keeper, upstreams []string, logw io.Writer) *forwarder {
	s := &forwarder{base: base, keeper: k, log: logw}
	if len(upstreams) > 0 {
		s.upstreams = make(map[string]bool, len(upstreams))
		for _, u := range upstreams {
			s.upstreams[u] = true
		}
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = pr.In.Context().Value(targetKey{}).(*url.URL)
			pr.Out.Host = "" // the server's, from the URL
			for _, h := range droppedRequestHeaders {
				pr.Out.Header.Del(h)
			}
		},
		Transport:     rt,
		FlushInterval: -1, // stream: hand every chunk on as it comes (server-sent events, downloads)
		ModifyResponse: func(resp *http.Response) error {
			for _, h := range droppedResponseHeaders {
				resp.Header.Del(h)
			}
			for k := range resp.Header { // no CORS grant lets a web page read an answer
				if strings.HasPrefix(k, "Access-Control-") {
					delete(resp.Header, k)
				}
			}
			if resp.StatusCode == http.StatusUnauthorized && tokenRefused(resp.Header) {
				s.keeper.confirm(resp.Request.Context())
			}
			return nil
		},
		ErrorHandler: s.fail,
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	return s
}

func (s *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	s.serve(rec, r)
	if s.log != nil {
		s.logMu.Lock()
		fmt.Fprintf(s.log, "mandate sidecar: %s %s → %d (%s)\n", r.Method, r.URL.EscapedPath(), rec.status(), time.Since(start).Round(time.Millisecond))
		s.logMu.Unlock()
	}
}

func (s *forwarder) serve(w http.ResponseWriter, r *http.Request) {
	// Only loopback callers, by a loopback name: a web page that rebinds its DNS name to
	// 127.0.0.1 sends its own Host and gets nothing.
	if !loopback.Host(r.Host) {
		sidecarError(w, http.StatusMisdirectedRequest, "invalid_request", "the sidecar answers only requests for a loopback host (127.0.0.1, ::1 or localhost)")
		return
	}
	// Browsers mark what a web page sends: a cross-site request must not spend the task's
	// authority (a page could POST to 127.0.0.1 without any DNS trick). Tools send neither header.
	if r.Header.Get("Origin") != "" || !sameSiteFetch(r.Header.Get("Sec-Fetch-Site")) {
		sidecarError(w, http.StatusForbidden, "forbidden", "the sidecar refuses requests made by a web page (Origin or Sec-Fetch-Site): it is for local tools")
		return
	}
	if r.Method == http.MethodConnect || r.URL.IsAbs() || r.URL.Opaque != "" || r.RequestURI == "*" {
		sidecarError(w, http.StatusBadRequest, "invalid_request", "the sidecar is not a forward proxy: call http://HOST:PORT/{upstream}/{path}")
		return
	}
	target, name, err := s.target(r.URL)
	if err != nil {
		sidecarError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	if s.upstreams != nil && !s.upstreams[name] {
		sidecarError(w, http.StatusNotFound, "not_found", fmt.Sprintf("upstream %q is not one this sidecar forwards to", name))
		return
	}
	if err := s.keeper.err(); err != nil {
		s.keeper.refused.Add(1)
		sidecarError(w, http.StatusUnauthorized, CodeTokenLost, err.Error())
		return
	}
	// A small body is held so that a use_dpop_nonce challenge can be answered by sending again.
	if r.ContentLength > 0 && r.ContentLength <= replayableBody {
		data, err := io.ReadAll(io.LimitReader(r.Body, replayableBody+1))
		if err != nil {
			sidecarError(w, http.StatusBadRequest, "invalid_request", "reading the request body: "+err.Error())
			return
		}
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(data))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, target)))
}

// target maps /{upstream}/{path…}?{query} to {issuer}/proxy/{upstream}/{path…}?{query}. The
// path is passed on as the tool sent it (escapes kept); the server's proxy judges it.
func (s *forwarder) target(u *url.URL) (*url.URL, string, error) {
	raw := u.EscapedPath()
	if !strings.HasPrefix(raw, "/") {
		return nil, "", errors.New("call http://HOST:PORT/{upstream}/{path}")
	}
	name, rest, _ := strings.Cut(raw[1:], "/")
	if !UpstreamName.MatchString(name) {
		return nil, "", fmt.Errorf("no upstream in the path %q: call http://HOST:PORT/{upstream}/{path}", apperr.Clip(raw, 60))
	}
	escaped := s.base.EscapedPath() + "/proxy/" + name
	if strings.HasPrefix(raw[1+len(name):], "/") {
		escaped += "/" + rest
	}
	path, err := url.PathUnescape(escaped)
	if err != nil {
		return nil, "", fmt.Errorf("the path %q is not a valid URL path", apperr.Clip(raw, 60))
	}
	out := &url.URL{Scheme: s.base.Scheme, Host: s.base.Host, Path: path, RawQuery: u.RawQuery}
	if path != escaped {
		out.RawPath = escaped
	}
	return out, name, nil
}

// fail answers a request the sidecar could not forward.
func (s *forwarder) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ce *client.Error
	switch {
	case errors.Is(err, client.ErrTokenExpired) || errors.As(err, &ce):
		// The task's token could not be renewed in time, or the server refused to renew it (the
		// task ended, its grant was revoked, …): say why, as the keeper does.
		s.keeper.refused.Add(1)
		sidecarError(w, http.StatusUnauthorized, CodeTokenLost, s.keeper.fail(err).Error())
	case errors.Is(err, context.Canceled):
		w.WriteHeader(499) // the tool went away; nobody reads this
	default:
		sidecarError(w, http.StatusBadGateway, "bad_gateway", "the sidecar cannot reach mandate's proxy: "+netCause(err).Error())
	}
}

// tokenRefused reports whether a 401 is mandate's proxy refusing the task's token (its DPoP
// challenge, RFC 9449 §7.1), not an upstream's own 401.
func tokenRefused(h http.Header) bool {
	for _, v := range h.Values("WWW-Authenticate") {
		if strings.HasPrefix(v, "DPoP ") && strings.Contains(v, `error="invalid_token"`) {
			return true
		}
	}
	return false
}

// netCause drops the wrappers of a network error ("Get \"...\": ...") down to what failed.
func netCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe
	}
	return err
}

// sidecarError answers a request the sidecar refuses itself, in the server's error shape. It
// carries no request id: the request never reached the server.
func sidecarError(w http.ResponseWriter, status int, code, desc string) {
	oautherr.Write(w, oautherr.Refusal{Status: status, Code: code, Description: desc})
}

// statusRecorder remembers the status written, for the request log. It passes Flush on (via
// Unwrap, which http.ResponseController uses).
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// sameSiteFetch accepts a request without Sec-Fetch-Site (not a browser) or one a browser made
// on its own (a typed URL, a same-origin request).
func sameSiteFetch(v string) bool {
	return v == "" || v == "none" || v == "same-origin"
}

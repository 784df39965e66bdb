package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestOverridesStripped: the route check saw the real method, path and host, so no header or
// query parameter that a framework or gateway would read as another one reaches the upstream,
// however it is spelled (case, "_" for "-" as CGI gateways read names, PHP's "." for "_",
// percent-encoding); every other parameter arrives exactly as sent.
func TestOverridesStripped(t *testing.T) {
	e := newEnv(t)
	tok := e.token(tokenOpts{scope: "api:read"})
	headers := []string{
		"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-Method",
		"X-Original-URL", "X-Original-URI", "X-Rewrite-URL", "X-Override-URL", "X-Original-Path",
		"X-Envoy-Original-Path", "X-Envoy-Original-Dst-Host", "X-Envoy-Max-Retries", "X-Forwarded-Path", "X-Forwarded-Prefix",
		"X-Original-Host", "X-Host", "X-HTTP-Host-Override", "Max-Forwards",
		"X-Middleware-Subrequest", "X-Invoke-Path", "X-Invoke-Query", "X-Now-Route-Matches",
		"X-Client-IP", "True-Client-IP", "CF-Connecting-IP", "X-Original-Forwarded-For",
		"x-http-method-override", "X_HTTP_Method_Override", "X_Original_URL", "X_Forwarded_For", "Proxy_Authorization",
		"X-Forwarded", "X-Remote-IP", "X-Remote-Addr", "X-ProxyUser-Ip", "X-Vercel-Forwarded-For",
		"X-Method", "X-Real-Method", "X-Request-Method", "X-Rewrite-Path", "X-Original-Request-URI",
		"X-Accel-Redirect", "X-Sendfile", "X-Lighttpd-Send-File", "Content-Location",
		"Rsc", "Next-Router-State-Tree", "Next-Router-Prefetch", "Next-Url", "X-Nextjs-Data", "Next-Action", "X_Nextjs_Data",
	}
	req := e.request("GET", "/proxy/api/items/1?a=1&_method=DELETE&b=%2Fx+y&_METHOD=PUT&%5Fmethod=PATCH&.method=DELETE"+
		"&X-HTTP-Method-Override=DELETE&x_http_method=DELETE&__method=DELETE&_HttpMethod=DELETE&+_method=DELETE&&c=&method=keep", tok, nil)
	for _, h := range headers {
		req.Header[h] = []string{"DELETE"} // as sent, not canonicalised
	}
	req.Header.Set("X-Keep", "kept")
	resp, body := e.do(req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	got := e.upstreamRequests()[0]
	for k, v := range got.Header {
		for _, x := range v {
			if x == "DELETE" {
				t.Errorf("upstream received %s: %q", k, x)
			}
		}
	}
	if got.Header.Get("X-Keep") != "kept" {
		t.Error("an ordinary header was dropped")
	}
	if want := "a=1&b=%2Fx+y&&c=&method=keep"; got.URL.RawQuery != want {
		t.Errorf("upstream query %q, want %q", got.URL.RawQuery, want)
	}
}

func TestStripOverrideParams(t *testing.T) {
	for in, want := range map[string]string{
		"":                                 "",
		"a=1&b=2":                          "a=1&b=2",
		"_method=DELETE":                   "",
		"_method=DELETE&a=1":               "a=1",
		"a=1&_method=DELETE":               "a=1",
		"a=%41&_Method=x&b=%zz&&c":         "a=%41&b=%zz&&c",
		"%5f%6Dethod=x&q=method":           "q=method",
		"_method&a":                        "a",
		"x-http-method-override=PUT":       "",
		"X%2DHTTP%2DMethod=PUT&k=v":        "k=v",
		"methods=1&_methodx=2&my_method=3": "methods=1&_methodx=2&my_method=3",
		"_method%00x=DELETE&a=1":           "a=1", // PHP cuts a name at a NUL
		"a=1&++%20.METHOD=PUT":             "a=1",
		"%255fmethod=DELETE&a=1":           "a=1", // decoded twice
		"%25255Fmethod=DELETE":             "",
		"_method[]=DELETE&a=1":             "a=1", // PHP, Rack: an array named _method
		"_method[0]=DELETE&a[]=1":          "a[]=1",
		"_method%09=DELETE":                "", // trimmed
		"%09_method=DELETE":                "",
		"_method.=DELETE":                  "", // qs with dots
		"_method.x=DELETE":                 "",
		"X-HTTP-Method-Override[]=PUT":     "",
		"a=1;_method=DELETE&b=2":           "b=2", // ";" separates too
		"_method%5B%5D=DELETE":             "",
		"method[]=1&_methodx[]=2":          "method[]=1&_methodx[]=2",
	} {
		if got := stripOverrideParams(in); got != want {
			t.Errorf("stripOverrideParams(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTrailerNotForwarded: a chunked request announcing trailers (an override sent after the
// body, where no header check looks) reaches the upstream with neither the announcement nor
// the trailers.
func TestTrailerNotForwarded(t *testing.T) {
	e := newEnv(t)
	req := e.request("POST", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:write"}), io.NopCloser(strings.NewReader(`{"a":1}`)))
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Http-Method-Override": {"DELETE"}, "X-Original-Url": {"/admin"}}
	resp, body := e.do(req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	got := e.upstreamRequests()[0]
	if got.TransferEncoding == nil || got.TransferEncoding[0] != "chunked" {
		t.Fatalf("the test sent no chunked body: %v", got.TransferEncoding)
	}
	if v, ok := got.Header["Trailer"]; ok {
		t.Errorf("upstream received Trailer: %q", v)
	}
	if len(got.Trailer) != 0 {
		t.Errorf("upstream received trailers %v", got.Trailer)
	}
	if string(e.upBody[0]) != `{"a":1}` {
		t.Errorf("upstream body %q", e.upBody[0])
	}
}

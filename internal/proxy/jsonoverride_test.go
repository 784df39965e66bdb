package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/vault"
)

// jsonOverride is the rack's JSON reading, as Laravel and Express do it on a POST: a body whose
// Content-Type mentions JSON (Laravel's isJson, in any case), or any body of a type that is no
// form (body-parser's json({type: '*/*'}), which drops a UTF-8 BOM), is decoded, and a top-level
// member of an override name (Symfony's _method; a method-override getter for the others) sets
// the method. Nested members and members of a top-level array are data.
func jsonOverride(cts []string, body []byte) bool {
	mt := leadingMediaType(strings.Join(cts, ","))
	form := len(cts) == 0 || mt == "" || mt == "application/x-www-form-urlencoded" || strings.HasPrefix(mt, "multipart/")
	if form && !mentionsJSON(cts) {
		return false
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(bytes.TrimPrefix(body, []byte("\xEF\xBB\xBF")), &members) != nil {
		return false
	}
	for k := range members {
		if overrideIn(k) {
			return true
		}
	}
	return false
}

// TestJSONMethodOverrideRefused: a token allowed POST /items never makes an upstream that
// honours a top-level JSON _method (see jsonOverride) run another method, however the member is
// spelled or the body sent; the refusal is the form check's 400 method_override; JSON without
// an override arrives byte for byte. Old main forwarded every refused case below with an
// override, and the Laravel-like upstream ran DELETE.
func TestJSONMethodOverrideRefused(t *testing.T) {
	e, k, tok := railsEnv(t)
	const js = "application/json"
	big := `{"a":"` + strings.Repeat("x", 3<<20) + `","b":[` + strings.Repeat(`{"c":"}\"{"},`, 1000) + `1],"_method":"DELETE"}`
	type tc = overrideCase
	refused := func(ct, body string) tc {
		return tc{ct: []string{ct}, body: body, status: 400, reason: reasonMethodOverride}
	}
	cases := map[string]tc{
		"plain":                 refused(js, `{"_method":"DELETE"}`),
		"after members":         refused(js, `{"a":1,"b":[{"_method":1}],"c":{"d":"}"},"_method":"DELETE"}`),
		"spaces":                refused(js, " \r\n\t{ \n\"_method\" : \"DELETE\" }"),
		"escaped":               refused(js, `{"\u005fmethod":"DELETE"}`),
		"all escaped":           refused(js, `{"\u005F\u006d\u0065\u0074\u0068\u006F\u0064":"DELETE"}`),
		"short escapes":         refused(js, `{"_\method":"DELETE"}`),
		"upper case":            refused(js, `{"_METHOD":"DELETE"}`),
		"other override names":  refused(js, `{"X-HTTP-Method-Override":"DELETE"}`),
		"duplicates":            refused(js, `{"_method":"POST","_method":"DELETE"}`),
		"late in a big body":    refused(js, big),
		"chunked":               {ct: []string{js}, body: `{"a":1,"_method":"DELETE"}`, chunked: true, status: 400, reason: reasonMethodOverride},
		"chunked big":           {ct: []string{js}, body: big, chunked: true, status: 400, reason: reasonMethodOverride},
		"+json":                 refused("application/vnd.api+json", `{"_method":"DELETE"}`),
		"charset":               refused("application/json; charset=UTF-8", `{"_method":"DELETE"}`),
		"odd case":              refused("Application/JSON", `{"_method":"DELETE"}`),
		"text/json":             refused("text/json", `{"_method":"DELETE"}`),
		"bom":                   refused(js, "\xEF\xBB\xBF{\"_method\":\"DELETE\"}"),
		"second object":         refused(js, `{} {"_method":"DELETE"}`),
		"GET":                   {method: "GET", ct: []string{js}, body: `{"_method":"DELETE"}`, status: 400, reason: reasonMethodOverride},
		"other type":            refused("text/plain", ` {"_method":"DELETE"}`),
		"json5 quotes":          refused(js, `{'_method':'DELETE'}`),
		"json5 unquoted":        refused(js, `{_method:"DELETE"}`),
		"json5 comment, escape": refused(js, `{"a":1 /* " */, "\x5f\x6d\x65\x74\x68\x6f\x64":"DELETE"}`),
		"json5 escaped letters": refused(js, `{a:1, '_\m\e\t\h\o\d':'DELETE'}`),

		"form mentioning json": {ct: []string{"application/x-www-form-urlencoded; x=/json"}, body: `{"_method":"DELETE"}`, status: 415, reason: reasonBodyContentType},
		"utf-16":               {ct: []string{js + "; charset=utf-16"}, body: "{}", status: 415, reason: reasonBodyContentType},
		"utf-16 bytes":         {ct: []string{js}, body: "\xFF\xFE{\x00}\x00", status: 415, reason: reasonBodyContentType},
		"gzip":                 {ct: []string{js}, ce: "gzip", body: "{}", status: 415, reason: reasonBodyEncoding},

		"nested":             {ct: []string{js}, body: `{"a":{"_method":"DELETE"},"b":[{"_method":"DELETE"}]}`},
		"in string values":   {ct: []string{js}, body: `{"a":"_method","b":"\",\"_method\":1","c\\":"\\","d":"_method"}`},
		"near names":         {ct: []string{js}, body: `{"method":1,"_methods":2,"my_method":3,"_metho":4,"\u00dfmethod":5,"\ud83d\ude00_method":6}`},
		"top-level array":    {ct: []string{js}, body: `[{"_method":"DELETE"}]`},
		"top-level string":   {ct: []string{js}, body: `"{\"_method\":\"DELETE\"}"`},
		"malformed":          {ct: []string{js}, body: `{"a":1,,"b":[}`},
		"truncated":          {ct: []string{js}, body: `{"a":"_metho`},
		"other type, text":   {ct: []string{"text/plain"}, body: `payment method: {"_method":"DELETE"}`},
		"other type, binary": {ct: []string{"application/octet-stream"}, body: "{\x00\x01 _method \"_method\""},
		"utf-16 elsewhere":   {ct: []string{"text/plain; charset=utf-16"}, body: "\xFF\xFEa\x00"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { c.check(t, e, k, tok) })
	}
}

// TestJSONOverrideWithBodyRules: a route with body rules parses the JSON to check it; the body
// it forwards is still read for overrides (one reading: the stream's), so a checked body that
// passes its rules but has _method is refused, and one without is forwarded.
func TestJSONOverrideWithBodyRules(t *testing.T) {
	e := newEnv(t)
	k := newRack(t)
	e.upstreams.put(vault.Upstream{Name: "mail", BaseURL: k.srv.URL, Auth: vault.AuthBearer, AllowPrivate: true, Routes: []vault.Route{
		{Scope: "mail:send", Methods: []string{"POST"}, Paths: []string{"/send"}, Body: []vault.BodyRule{
			{Detail: "recipient_domains", Pointer: "/to", Match: MatchEmailDomain},
		}},
	}})
	tok := mailToken(e)
	for body, want := range map[string]int{
		`{"to":"a@example.com","_method":"DELETE"}`:       400,
		`{"to":"a@example.com","\u005fMETHOD":"DELETE"}`:  400,
		`{"to":"a@example.com","x":{"_method":"DELETE"}}`: 200,
	} {
		req := e.request("POST", "/proxy/mail/send", tok, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		before := len(k.all())
		resp, answer := e.do(req)
		if resp.StatusCode != want {
			t.Fatalf("%s: status %d, want %d: %s", body, resp.StatusCode, want, answer)
		}
		for _, c := range k.all()[before:] {
			if c.effective != "POST" {
				t.Fatalf("%s: the upstream ran %s", body, c.effective)
			}
		}
		if want == 400 && (len(k.all()) != before || e.audit.last(t).Reason != reasonMethodOverride) {
			t.Fatalf("%s: forwarded, or audited as %s", body, e.audit.last(t).Reason)
		}
	}
}

// TestJSONReaderSplitReads: the scanner decides alike whatever the reads' sizes, and passes a
// body it lets through byte for byte.
func TestJSONReaderSplitReads(t *testing.T) {
	bodies := []struct {
		kind     int
		body     string
		override bool
	}{
		{formJSON, `{"a":"\\\"","_method":"DELETE"}`, true},
		{formJSON, `{"a":[1,{"b":"\\"}],"\u005F\u004dethod":1}`, true},
		{formJSON, `{"\u005f\u006d\u0065\u0074\u0068\u006f\u0064x":1,"_metho\u0064s":2,"a":"\\\\"}`, false},
		{formJSON, `{"        _method":1}`, true},
		{formJSON, `{"` + strings.Repeat("\\\n\\\r \\u0020", 20000) + `_method":1}`, true},
		{formJSON, `{"` + strings.Repeat("\\\n", 40000) + `":1}`, false},
		{formJSON, `{"%` + strings.Repeat("\\\n", 40000) + `5fmethod":1}`, true},
		{formJSON, `{"` + strings.Repeat(`\u0025\u0035\u0046`, 22) + `":1}`, false},
		{formJSON, `{"a":1 'x\\':2, '_\m\E\thod':3}`, true},
		{formJSON, `{"a":1 'x':2, 'me\\\\thod':3}`, false},
		{formJSON, `{"a":1 'x':2, 'a\u':3}`, true},
		{formJSONSniffed, "\xEF\xBB\xBF\n{\"\\u005fmethod\":1}", true},
		{formJSON, "{\x00\"\x00_\x00m\x00E\x00t\x00h\x00o\x00d\x00\"\x00:\x001\x00}\x00", true},
		{formJSON, "{'m" + strings.Repeat("\x00", 100000) + "ethod':1}", false},
		{formJSON, "{'m\\" + strings.Repeat("\x00", 100000) + "ethod':1}", false},
		{formJSONSniffed, `{"a":1 'x':2, '_method':3}`, false},
		{formJSONSniffed, `x{"_method":1}`, false},
	}
	for _, b := range bodies {
		for size := 1; size <= 9; size++ {
			if got := scanAlike(t, b.kind, "", []byte(b.body), size); got != b.override {
				t.Errorf("%q in reads of %d: refused %v", b.body, size, got)
			}
		}
	}
}

// FuzzJSONReader states the promise: for any body sent as JSON or as another type, and any read
// sizes, the scanner decides as it does on one whole read, passes a body it does not refuse
// byte for byte, and no body it passes makes the Laravel-like upstream (jsonOverride) run a
// method other than the request's.
func FuzzJSONReader(f *testing.F) {
	f.Add(true, []byte(`{"a":[1,{"b":"}"}],"\u005fmethod":"DELETE"}`), uint8(1))
	f.Add(true, []byte(`{"a":"\\\"","_METHOD":1}`), uint8(3))
	f.Add(false, []byte("\xEF\xBB\xBF {\"x-http-method\":1}"), uint8(2))
	f.Add(true, []byte(`{'_method': 1}`), uint8(5))
	f.Add(true, []byte(`{"a":{"_method":"DELETE"}}`), uint8(4))
	f.Add(false, []byte(`[{"_method":1}]`), uint8(7))
	f.Fuzz(func(t *testing.T, typed bool, body []byte, size uint8) {
		kind, ct := formJSONSniffed, "text/plain"
		if typed {
			kind, ct = formJSON, "application/json"
		}
		if scanAlike(t, kind, "", body, int(size)%16+1) {
			return
		}
		if jsonOverride([]string{ct}, body) {
			t.Fatalf("%q passed as %s, and the upstream runs another method", body, ct)
		}
	})
}

// jsonDoc is a JSON body of about size bytes without an override: an object of records, as
// APIs send.
func jsonDoc(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"items":[`)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, `{"id":%d,"name":"item number %d","description":"a longer text field with \"quotes\" and more words in it, as bodies carry","tags":["a","b"],"price":12.5,"ok":true},`, i, i)
	}
	b.WriteString(`{}],"total":1,"note":"end"}`)
	return b.Bytes()
}

// jsonMembers is a JSON body of about size bytes of top-level members, the scanner's slow path.
func jsonMembers(size int) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, `"member_%d":"value %d","method_%d":%d,`, i, i, i, i)
	}
	b.WriteString(`"end":1}`)
	return b.Bytes()
}

// BenchmarkJSONReader is the scan of JSON bodies without an override, in MB/s, beside a copy
// without any scan (Copy) and BenchmarkFormReader.
func BenchmarkJSONReader(b *testing.B) {
	const size = 16 << 20
	for _, bc := range []struct {
		name string
		body []byte
		kind int
	}{
		{"Records", jsonDoc(size), formJSON},
		{"TopLevelMembers", jsonMembers(size), formJSON},
		{"Copy", jsonDoc(size), 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			buf := make([]byte, 32<<10)
			for b.Loop() {
				var r io.Reader = bytes.NewReader(bc.body)
				if bc.kind != 0 {
					r = newFormReader(io.NopCloser(r), bc.kind, "", "POST")
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

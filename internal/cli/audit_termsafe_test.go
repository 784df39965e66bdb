package cli

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// unsafeRunes are the runes of every class a terminal may act on: C0, DEL, C1, the bidi
// controls and the line and paragraph separators.
func unsafeRunes() []rune {
	var rs []rune
	for r := rune(0); r < 0x20; r++ {
		rs = append(rs, r)
	}
	for r := rune(0x7f); r <= 0x9f; r++ {
		rs = append(rs, r)
	}
	rs = append(rs, 0x061c, 0x200e, 0x200f, 0x2028, 0x2029)
	for r := rune(0x202a); r <= 0x202e; r++ {
		rs = append(rs, r)
	}
	for r := rune(0x2066); r <= 0x2069; r++ {
		rs = append(rs, r)
	}
	return rs
}

// hostile is a random string mixing every unsafe class with printable Unicode, escape
// sequences as terminals read them, and bytes that are not UTF-8.
func hostile(rng *rand.Rand) string {
	unsafe := unsafeRunes()
	pieces := []string{"a", "Z", " ", "/", "%", "\\", `"`, "é", "中", "👩‍💻", "\u00a0", "\ufffd",
		"\x1b[2J", "\x1b]0;pwned\x07", "\u009b31m", "\u009d8;;http://evil\u009c", "\r\n", "\t", "\f", "\v",
		"\xff", "\xc3", "\xed\xa0\x80", "\u202eexe.txt"}
	var b strings.Builder
	for range 1 + rng.IntN(12) {
		if rng.IntN(2) == 0 {
			b.WriteRune(unsafe[rng.IntN(len(unsafe))])
		} else {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
	}
	return b.String()
}

// seedHostile appends, for a principal of its own, a trail that puts s in every field the
// audit pages print: a grant (who granted it, its terms' keys and values), a task start
// (purpose, terms), a proxied call and its completion (user agent, address, client request id,
// path, route, query names, handles, DIDs, instance keys, key and token ids, details, reason),
// a revocation (reason, detail, cause) and a call refused after it. It returns the principal
// and the request ids of the call and of the refusal.
func seedHostile(t *testing.T, ts *testServer, s string) (principal, call, refused string) {
	t.Helper()
	principal, grant, task, agent := ids.New("usr"), ids.New("gr"), ids.New("tsk"), ids.New("agt")
	at := time.Now().Add(-10 * time.Minute).UTC()
	tick := func() time.Time { at = at.Add(time.Second); return at }
	terms, _ := json.Marshal(map[string]any{"scopes": []string{s}, "note": s, s: s, "budget": map[string]any{s: 1, "calls": s},
		"exp": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	chain := []audit.Link{{AgentID: agent, Handle: s, DID: "did:key:" + s, InstanceKey: s, TaskID: task}}
	acting := func(e *audit.Event) {
		e.ActorType, e.ActorID, e.ActorHandle = audit.ActorAgent, agent, s
		e.PrincipalID, e.AgentID, e.AgentDID, e.KeyJKT, e.InstanceKey = principal, agent, "did:key:"+s, s, s
		e.TaskID, e.GrantID, e.Chain, e.TokenID = task, grant, chain, s
		e.Addr, e.UserAgent, e.ClientRequestID = s, s, s
	}
	var evs []audit.Event
	g := audit.New(tick(), ids.New("req"), "grant.create")
	g.Outcome, g.ActorType, g.ActorID, g.ActorHandle = audit.OutcomeSuccess, audit.ActorUser, principal, s
	g.PrincipalID, g.AgentID, g.Target, g.GrantID, g.Terms, g.Detail = principal, agent, grant, grant, terms, s
	g.Addr, g.UserAgent = s, s
	evs = append(evs, g)
	st := audit.New(tick(), ids.New("req"), "task.start")
	acting(&st)
	st.Outcome, st.Target, st.Purpose, st.Terms, st.Detail = audit.OutcomeSuccess, task, s, terms, s
	evs = append(evs, st)

	call = ids.New("req")
	p := audit.New(tick(), call, "proxy.call")
	acting(&p)
	p.Outcome, p.Detail = audit.OutcomePending, s
	p.Call = &audit.Call{Upstream: "ahrefs", Method: "GET", Path: "/" + s, Route: "/" + s, Query: []audit.QueryParam{{Name: s, ValueHash: "h1:0"}}}
	c := audit.New(tick(), call, "proxy.call")
	acting(&c)
	cc := *p.Call
	cc.Status, cc.BytesOut = 200, 10
	c.Outcome, c.Cause, c.Call, c.Reason, c.Detail = audit.OutcomeSuccess, p.ID, &cc, s, "done "+s
	o := audit.New(tick(), call, "token.exchange") // another event of the request
	acting(&o)
	o.Outcome, o.Reason, o.Detail = audit.OutcomeSuccess, s, s
	evs = append(evs, p, c, o)

	rv := audit.New(tick(), ids.New("req"), "task.revoke")
	rv.Outcome, rv.ActorType, rv.ActorID, rv.ActorHandle = audit.OutcomeSuccess, audit.ActorUser, principal, s
	rv.PrincipalID, rv.AgentID, rv.Target, rv.TaskID, rv.GrantID = principal, agent, task, task, grant
	rv.Reason, rv.Detail, rv.Cause, rv.Addr, rv.UserAgent = s, s, s, s, s
	evs = append(evs, rv)
	refused = ids.New("req")
	d := audit.New(tick(), refused, "proxy.call")
	acting(&d)
	d.Outcome, d.Reason, d.Detail = audit.OutcomeDenied, s, s
	d.Call = &audit.Call{Upstream: "ahrefs", Method: "POST", Path: "/" + s}
	evs = append(evs, d)
	for _, e := range evs {
		if err := ts.Srv.Store().AppendEvent(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	return principal, call, refused
}

// TestAuditOutputIsTerminalSafe: whatever string an agent or an anonymous caller put in any
// field of the trail (purpose, user agent, handle, path, detail, reason, terms, chain links,
// client request id), mandate audit explain, the mandate audit table and mandate audit mine,
// run as cobra commands against a real server, print no rune a terminal acts on — no C0 or C1
// control, DEL, bidi control or line separator — but the newlines the printers write: each
// page has exactly as many lines as the same page with plain values.
func TestAuditOutputIsTerminalSafe(t *testing.T) {
	ts := newTestServer(t)
	t.Setenv(envServer, ts.URL)
	t.Setenv(envToken, ts.AdminToken)
	pages := func(s string) map[string]string {
		principal, call, refused := seedHostile(t, ts, s)
		return map[string]string{
			"explain call":    ok(t, "audit", "explain", call),
			"explain refusal": ok(t, "audit", "explain", refused),
			"table":           ok(t, "audit", "--principal", principal),
			"mine":            ok(t, "audit", "mine", "--principal", principal, "--since", "1h"),
		}
	}
	plain := pages("plain-value")
	for name, out := range plain {
		if !strings.Contains(out, "plain-value") && name != "table" {
			t.Fatalf("%s does not show the seeded values:\n%s", name, out)
		}
	}
	hasAll(t, plain["explain refusal"], "INVALID")
	hasAll(t, plain["explain call"], "Other events of this request")

	unsafe := unsafeRunes()
	check := func(s string) {
		t.Helper()
		for name, out := range pages(s) {
			if got, want := strings.Count(out, "\n"), strings.Count(plain[name], "\n"); got != want {
				t.Fatalf("%s of %q: %d lines, want %d as with plain values:\n%s", name, s, got, want, out)
			}
			if !utf8.ValidString(out) {
				t.Fatalf("%s of %q is not UTF-8:\n%q", name, s, out)
			}
			for _, r := range out {
				if r != '\n' && strings.ContainsRune(string(unsafe), r) {
					t.Fatalf("%s of %q prints %U:\n%q", name, s, r, out)
				}
			}
		}
	}
	// Every unsafe rune alone, then random mixtures.
	var all strings.Builder
	for _, r := range unsafe {
		all.WriteRune(r)
	}
	check(all.String())
	check("\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\\u009b2J\u0085\u202e\u2028\xff")
	rng := rand.New(rand.NewPCG(1, 2))
	n := 40
	if testing.Short() {
		n = 5
	}
	for range n {
		check(hostile(rng))
	}
}

// TestTermSafe: termSafe escapes every rune of the unsafe classes as \uXXXX and each byte that
// is not UTF-8 as \xNN, keeps printable Unicode (and a real U+FFFD) as is, and is idempotent.
func TestTermSafe(t *testing.T) {
	for _, r := range unsafeRunes() {
		if got, want := termSafe("a"+string(r)+"b"), fmt.Sprintf("a\\u%04Xb", r); got != want {
			t.Errorf("termSafe(%U) = %q, want %q", r, got, want)
		}
	}
	for in, want := range map[string]string{
		"plain /v3/x?y=1":   "plain /v3/x?y=1",
		"é中👩‍💻\u00a0\ufffd": "é中👩‍💻\u00a0\ufffd",
		"\xff\xc3(":         `\xFF\xC3(`,
		"\x1b[2J":           `\u001B[2J`,
		"\u009b31m\u0085":   `\u009B31m\u0085`,
		"a\r\nb\tc":         `a\u000D\u000Ab\u0009c`,
		"\u202eexe.txt":     `\u202Eexe.txt`,
	} {
		if got := termSafe(in); got != want {
			t.Errorf("termSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzTermSafe: for any input, the output is valid UTF-8 with no unsafe rune, and escaping it
// again changes nothing.
func FuzzTermSafe(f *testing.F) {
	for _, s := range []string{"", "plain", "\x1b[31m", "\u009b\u202e\u2028", "\xff\xfe", "é中"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := termSafe(s)
		if !utf8.ValidString(out) {
			t.Fatalf("termSafe(%q) = %q: not UTF-8", s, out)
		}
		for _, r := range out {
			if termUnsafe(r) {
				t.Fatalf("termSafe(%q) = %q keeps %U", s, out, r)
			}
		}
		if again := termSafe(out); again != out {
			t.Fatalf("termSafe is not idempotent on %q: %q then %q", s, out, again)
		}
	})
}

// TestVerifyReportIsTerminalSafe: verify's report prints a problem's reason and detail, the
// head hash and key ids through termSafe: a verifier given a hostile export (the detail quotes
// what it found) writes no unsafe rune and no line of its own.
func TestVerifyReportIsTerminalSafe(t *testing.T) {
	s := "\x1b]0;x\x07\u009b2J\u0085\u202e\u2028\r\nFIRST BAD SEQ 0 (none): all is well"
	res := api.VerifyJSON{Report: audit.Report{Events: 3, FirstSeq: 1, LastSeq: 3, HeadHash: s,
		Problem:        &audit.Problem{Seq: 2, Reason: s, Detail: s},
		LastCheckpoint: &audit.Checkpoint{Seq: 1, KeyID: s}}}
	res.Keys.Keys = []jose.JSONWebKey{{KeyID: s}}
	plain := res
	plain.Report.HeadHash, plain.Report.Problem = "h", &audit.Problem{Seq: 2, Reason: "r", Detail: "d"}
	plain.Report.LastCheckpoint = &audit.Checkpoint{Seq: 1, KeyID: "k"}
	plain.Keys.Keys = []jose.JSONWebKey{{KeyID: "k"}}
	var got, want strings.Builder
	printReport(&got, res, 0)
	printReport(&want, plain, 0)
	if g, w := strings.Count(got.String(), "\n"), strings.Count(want.String(), "\n"); g != w {
		t.Fatalf("the report has %d lines, want %d:\n%s", g, w, got.String())
	}
	for _, r := range got.String() {
		if r != '\n' && termUnsafe(r) {
			t.Fatalf("the report prints %U:\n%q", r, got.String())
		}
	}
}

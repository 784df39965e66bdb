package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// The trail of a call (invariant 7, fail closed): a call refused before it is forwarded is one
// event (denied or failure). A call that passed every check is first recorded as pending,
// durably, in RoundTrip right before it leaves for the upstream; if that record cannot be
// written the call is refused (503 audit_unavailable) and nothing is sent. Once the answer has
// streamed to the agent a completion event follows: same action and request id, Cause = the
// pending event's id, the outcome, status, bytes and duration. A pending event without its
// completion (a crash) reads "outcome unknown".

// Bounds of what an event keeps of a call.
const (
	maxAuditPath      = 512 // bytes of the path kept; longer ones are cut and marked
	maxAuditParams    = 32  // query parameters kept; the rest are counted in one "…" entry
	maxAuditParamName = 64  // bytes of a parameter name kept
	maxAuditUserAgent = 256 // bytes of the agent's User-Agent and X-Request-Id kept
	queryHashBytes    = 16  // of HMAC-SHA256, hex in the event
)

// reasonAuditUnavailable is the reason of a call refused because its pending record could not
// be written.
const reasonAuditUnavailable = "audit_unavailable"

// auditError is RoundTrip's failure to write the pending record: nothing was sent.
type auditError struct{ err error }

func (e *auditError) Error() string { return "record pending call: " + e.err.Error() }
func (e *auditError) Unwrap() error { return e.err }

// event starts an event of c with every field the token and the task answer: who acted (agent,
// handle, DID, key), on whose behalf (principal, grant, the chain), in which task and its
// parent, with which scopes and audience. A call refused before its token verified has none.
func (p *Proxy) event(c *call) audit.Event {
	ev := audit.New(p.cfg.Now(), c.reqID, ActionCall)
	ev.ActorType = audit.ActorAnonymous
	ev.Target = c.name
	if cl := c.caller; cl != nil {
		ev.ActorType, ev.ActorID, ev.ActorHandle = audit.ActorAgent, cl.AgentID, cl.Handle
		ev.AgentID, ev.AgentDID, ev.KeyJKT = cl.AgentID, cl.DID, cl.JKT
		ev.PrincipalID, ev.TokenID = cl.Principal, cl.JTI
		ev.TaskID, ev.GrantID = cl.Task, cl.Grant
		ev.Scopes, ev.Resources = cl.Scopes, cl.Audience
		if n := len(cl.Chain); n > 0 {
			ev.Chain = make([]audit.Link, n)
			for i, a := range cl.Chain {
				ev.Chain[i] = audit.Link{AgentID: a.AgentID, Handle: a.Handle, DID: a.DID, InstanceKey: a.InstanceJKT, TaskID: a.Task}
			}
			ev.InstanceKey = cl.Chain[n-1].InstanceJKT
			if n > 1 {
				ev.ParentTaskID = cl.Chain[n-2].Task
			}
		}
	}
	if c.task.ID != "" {
		if c.task.InstanceJKT != "" {
			ev.InstanceKey = c.task.InstanceJKT
		}
		if c.task.PrincipalID != "" && ev.PrincipalID == "" {
			ev.PrincipalID = c.task.PrincipalID
		}
	}
	// What the agent says about itself is the agent's text: the credential is masked in it too
	// (set here, the store does not fill them from the request).
	// Without a credential to mask them against (a call refused before its upstream was
	// known), they are withheld rather than kept unmasked.
	ev.Addr = c.origin.Addr
	ev.UserAgent = agentText(c.origin.UserAgent, c.mask)
	ev.ClientRequestID = agentText(c.origin.ClientRequestID, c.mask)
	if c.name != "" {
		// The path as the agent sent it and the query's names, bounded and escaped, with every
		// form of the credential injected masked even where the agent wrote it itself.
		ev.Call = &audit.Call{Upstream: c.name, Method: safeMethod(c.method), Route: c.pattern,
			Path:  auditText(c.target.rawPath, maxAuditPath, c.mask, url.PathUnescape),
			Query: auditQuery(p.cfg.AuditKey, c.rawQuery, c.mask)}
	}
	return ev
}

// withheld stands for what the agent said about itself when no credential was known to mask it.
const withheld = "(withheld)"

// agentText is a header the agent chose about itself, for an event: masked, or withheld.
func agentText(s string, m *masker) string {
	switch {
	case s == "":
		return ""
	case m == nil:
		return withheld
	}
	return auditText(s, maxAuditUserAgent, m, nil)
}

// auditText is s for an event: bounded and escaped (boundText), with every form of the
// credential masked, also behind percent-encoding applied once or more (%53%45… or %2553…):
// when decoding s shows the credential, the decoded form is kept, masked.
func auditText(s string, limit int, m *masker, unescape func(string) (string, error)) string {
	if m != nil && unescape != nil {
		for d, i := s, 0; i < 4; i++ {
			u, err := unescape(d)
			if err != nil || u == d {
				break
			}
			d = u
			if masked := m.maskString(d); masked != d {
				return boundText(masked, limit, nil)
			}
		}
	}
	return boundText(s, limit, m)
}

// pendingEvent is the record written before the call leaves: the call as it will be sent.
func (p *Proxy) pendingEvent(c *call) audit.Event {
	ev := p.event(c)
	ev.Outcome = audit.OutcomePending
	var b strings.Builder
	b.WriteString("proxy " + c.name + ": " + safeMethod(c.method))
	if c.pattern != "" {
		b.WriteString(" " + c.pattern)
	}
	b.WriteString(": forwarding")
	if c.traceID != "" {
		b.WriteString("; trace " + c.traceID)
	}
	ev.Detail = b.String()
	return ev
}

// completion is the event that ends c: its pending record's completion, or the one event of a
// call refused before it was forwarded.
func (p *Proxy) completion(ctx context.Context, c *call, elapsed time.Duration) audit.Event {
	var ev audit.Event
	if c.pending != nil {
		ev = *c.pending
		ev.ID, ev.Time, ev.Cause = ids.New("evt"), p.cfg.Now().UTC(), c.pending.ID
		if ev.Call != nil {
			call := *ev.Call
			ev.Call = &call
		}
	} else {
		if c.mask == nil {
			c.mask = p.refusalMasker(ctx, c)
		}
		ev = p.event(c)
		ev.Cause = c.pendingTried
	}
	ev.Outcome, ev.Reason = c.outcome, c.reason
	ev.Detail = c.describe(elapsed)
	if ev.Call != nil {
		if c.w != nil {
			ev.Call.Status, ev.Call.BytesOut = c.w.status, c.w.n
		}
		if c.in != nil {
			ev.Call.BytesIn = c.in.n.Load()
		}
		ev.Call.DurationUS = elapsed.Microseconds()
	}
	return ev
}

// refusalMasker finds the credential of c's upstream for a call refused before it was injected,
// so that the agent's path and query names are masked in the event all the same: the masker of
// the credential last injected, or (once, when none was yet) of one injected into a scratch
// request. nil when the upstream is unknown or its credential cannot be had: then nothing of it
// can be masked (and the agent cannot have been given it by this proxy).
func (p *Proxy) refusalMasker(ctx context.Context, c *call) *masker {
	if c.name == "" || c.target.rawPath == "" && c.rawQuery == "" {
		return nil
	}
	_, tr, err := p.transport(c.upstream)
	if err != nil {
		return nil
	}
	if m := tr.mask.Load(); m != nil {
		return m
	}
	scratch := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "https", Host: "scratch.invalid", Path: "/"}, Header: http.Header{}}
	if err := p.cfg.Credentials.Inject(context.WithoutCancel(ctx), c.upstream, scratch); err != nil {
		return nil
	}
	return tr.maskerFor(injectedValues(c.upstream, scratch))
}

// auditQuery is a raw query as the trail keeps it: each parameter's name (unescaped, bounded,
// control characters escaped, the credential masked) and a keyed hash of its unescaped value
// (HMAC-SHA256 under key, 16 bytes in hex), never the value. An investigator holding a value
// can match it; nobody can read one back.
func auditQuery(key []byte, raw string, m *masker) []audit.QueryParam {
	if raw == "" {
		return nil
	}
	var out []audit.QueryParam
	n := 0
	mac := hmac.New(sha256.New, key)
	var sum [sha256.Size]byte
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		n++
		if len(out) == maxAuditParams {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if u, err := url.QueryUnescape(k); err == nil {
			k = u
		}
		if u, err := url.QueryUnescape(v); err == nil {
			v = u
		}
		mac.Reset()
		mac.Write([]byte(v))
		h := mac.Sum(sum[:0])
		out = append(out, audit.QueryParam{Name: auditText(k, maxAuditParamName, m, url.QueryUnescape), ValueHash: hex.EncodeToString(h[:queryHashBytes])})
	}
	if n > len(out) {
		out = append(out, audit.QueryParam{Name: "…" + strconv.Itoa(n-len(out)) + " more"})
	}
	return out
}

// boundText is s for an event: control characters, backslashes and invalid UTF-8 escaped
// (\xNN), every form of the injected credential masked when m is set, and cut at max bytes
// (marked "…").
func boundText(s string, limit int, m *masker) string {
	if m != nil {
		s = m.maskString(s)
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '\\' || c >= utf8.RuneSelf {
			clean = false
			break
		}
	}
	if !clean {
		var b strings.Builder
		for i := 0; i < len(s); {
			r, size := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size <= 1, r < 0x20, r == 0x7f, r == '\\', r >= 0x80 && r < 0xa0:
				for j := i; j < i+max(size, 1); j++ {
					b.WriteString(`\x` + hex.EncodeToString([]byte{s[j]}))
				}
			default:
				b.WriteString(s[i : i+size])
			}
			i += max(size, 1)
		}
		s = b.String()
	}
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// recorder writes the events that end calls, after the answer, so the agent does not wait for
// them: a bounded queue drained by a few writers (concurrent appends share the store's group
// commit). A full queue is written by the caller itself, so nothing is dropped; Close drains
// it. Pending records never go through it: they are written before the call, and block it.
type recorder struct {
	store audit.Store
	log   *slog.Logger
	q     chan queued
	wg    sync.WaitGroup

	mu     sync.RWMutex
	closed bool

	busy atomic.Int64 // calls being served or whose completion is not written yet
}

type queued struct {
	ctx context.Context
	ev  audit.Event
}

// completionWriters write completions concurrently.
const completionWriters = 4

func newRecorder(store audit.Store, log *slog.Logger, size int) *recorder {
	r := &recorder{store: store, log: log, q: make(chan queued, size)}
	r.wg.Add(completionWriters)
	for range completionWriters {
		go func() {
			defer r.wg.Done()
			for it := range r.q {
				r.write(it.ctx, it.ev, completionAttempts)
			}
		}()
	}
	return r
}

// record writes ev soon, without making the caller wait unless the queue is full.
func (r *recorder) record(ctx context.Context, ev audit.Event) {
	ctx = context.WithoutCancel(ctx)
	r.mu.RLock()
	if !r.closed {
		select {
		case r.q <- queued{ctx, ev}:
			r.mu.RUnlock()
			return
		default:
		}
	}
	r.mu.RUnlock()
	r.write(ctx, ev, 1) // the caller writes it: once, it is holding a connection
}

// completionAttempts is how often a queued completion is tried, with a doubling pause from
// 100 ms (about 25 s in all): a database blip must not turn a call that ran into "outcome
// unknown". An attempt that committed but answered an error makes the next one fail on the
// event's id, which ends the retries.
const completionAttempts = 9

func (r *recorder) write(ctx context.Context, ev audit.Event, attempts int) {
	defer r.busy.Add(-1)
	pause := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := r.store.AppendEvent(ctx, ev)
		if err == nil {
			return
		}
		if attempt >= attempts {
			r.log.ErrorContext(ctx, "record proxy call", slog.String("event", ev.ID), slog.String("outcome", string(ev.Outcome)),
				slog.Int("attempts", attempt), slog.String("error", err.Error()))
			return
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Second)
	}
}

// close stops taking events and waits until every queued one is written, or ctx ends.
func (r *recorder) close(ctx context.Context) error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.q)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("proxy: completions still being written at shutdown: " + ctx.Err().Error())
	}
}

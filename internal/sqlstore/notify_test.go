package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// changeLog collects what OnChange delivers.
type changeLog struct {
	mu  sync.Mutex
	all []Change
	new chan struct{} // one tick per delivery, never blocking
}

func subscribe(s *Store) *changeLog {
	l := &changeLog{new: make(chan struct{}, 1)}
	s.OnChange(func(c Change) {
		l.mu.Lock()
		l.all = append(l.all, c)
		l.mu.Unlock()
		select {
		case l.new <- struct{}{}:
		default:
		}
	})
	return l
}

func (l *changeLog) take() []Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.all
	l.all = nil
	return out
}

// waitFor waits until a delivered change satisfies ok and returns every change so far. It fails
// the test after a minute: a change that never comes, not a slow one.
func (l *changeLog) waitFor(t *testing.T, what string, ok func(Change) bool) []Change {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		l.mu.Lock()
		found := slices.ContainsFunc(l.all, ok)
		all := slices.Clone(l.all)
		l.mu.Unlock()
		if found {
			return all
		}
		select {
		case <-l.new:
		case <-deadline:
			t.Fatalf("no change %s delivered; got %v", what, all)
		}
	}
}

func isReset(c Change) bool { return c.Kind == KindAgentChanged && c.ID == "" }

func notifyEvent(action string) audit.Event {
	ev := audit.New(time.Now(), ids.New("req"), action)
	ev.ActorType, ev.ActorID = audit.ActorUser, "usr_test"
	return ev
}

func revokeToken(t *testing.T, s *Store) string {
	t.Helper()
	jti := ids.New("jti")
	now := time.Now()
	rt := token.RevokedToken{JTI: jti, AgentID: "agt_x", ExpiresAt: now.Add(time.Hour), RevokedAt: now}
	if err := s.RevokeToken(t.Context(), rt, notifyEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	return jti
}

func TestSQLiteChangesAnnounced(t *testing.T) {
	testChangesAnnounced(t, mustOpen(t, newSQLiteDSN(t)))
}

func TestPostgresChangesAnnounced(t *testing.T) {
	pgtest.BaseURL(t)
	testChangesAnnounced(t, mustOpen(t, pgtest.URL(t)))
}

// testChangesAnnounced is the class test of the feed's promise to a cache of agents: random
// operations on agents, keys and tokens, and after each one the agents whose stored state
// (GetAgent: row and keys) changed were all announced, as was every new revocation log entry,
// with its seq; a failed operation announces nothing.
func testChangesAnnounced(t *testing.T, s *Store) {
	ctx := t.Context()
	l := subscribe(s)
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	user := ids.New("usr")
	if err := s.CreateUser(ctx, principal.User{ID: user, Name: ids.New("name"), CreatedAt: now}, notifyEvent(audit.ActionUserCreate)); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	l.take()
	type agentState struct {
		a    registry.Agent
		code string
	}
	var agents []*agentState
	snapshot := func() map[string]registry.Agent {
		list, err := s.ListAgents(ctx, registry.Filter{})
		if err != nil {
			t.Fatalf("ListAgents: %v", err)
		}
		m := make(map[string]registry.Agent)
		for _, a := range list {
			m[a.ID] = a
		}
		return m
	}
	var cursor int64
	newKey := func() registry.Key {
		return registry.Key{DID: "did:key:z" + ids.New("k"), JKT: ids.New("jkt"), CreatedAt: now}
	}
	ops := []struct {
		name string
		do   func(a *agentState) error
	}{
		{"create", func(*agentState) error {
			a := registry.Agent{ID: ids.New("agt"), Handle: ids.New("h"), Name: "n", CreatedAt: now, Keys: []registry.Key{newKey()}}
			code := ids.Secret("clm")
			err := s.CreateAgent(ctx, a, registry.ClaimCode{Hash: ids.Hash(code), ExpiresAt: now.Add(time.Hour)}, notifyEvent(audit.ActionAgentRegister))
			if err == nil {
				agents = append(agents, &agentState{a: a, code: code})
			}
			return err
		}},
		{"claim", func(a *agentState) error {
			_, err := s.ClaimAgent(ctx, ids.Hash(a.code), user, now, notifyEvent(audit.ActionAgentClaim))
			return err
		}},
		{"rename", func(a *agentState) error {
			_, err := s.UpdateAgent(ctx, a.a.ID, func(x *registry.Agent) error { x.Name = ids.New("name"); return nil }, notifyEvent(audit.ActionAgentClaimCode))
			return err
		}},
		{"refuse update", func(a *agentState) error {
			_, err := s.UpdateAgent(ctx, a.a.ID, func(*registry.Agent) error { return errors.New("no") }, notifyEvent(audit.ActionAgentClaimCode))
			return err
		}},
		{"revoke", func(a *agentState) error {
			_, err := s.UpdateAgent(ctx, a.a.ID, func(x *registry.Agent) error {
				x.Status, x.RevokedAt = registry.StatusRevoked, now
				return nil
			}, notifyEvent(audit.ActionAgentRevoke))
			return err
		}},
		{"rotate", func(a *agentState) error {
			_, err := s.RotateKey(ctx, a.a.ID, newKey(), now.Add(time.Minute), notifyEvent(audit.ActionAgentRotateKey))
			return err
		}},
		{"revoke key", func(a *agentState) error {
			cur, err := s.GetAgent(ctx, a.a.ID)
			if err != nil {
				return err
			}
			_, err = s.RevokeKey(ctx, a.a.ID, cur.Keys[rng.IntN(len(cur.Keys))].DID, now, notifyEvent(audit.ActionAgentRevokeKey))
			return err
		}},
		{"revoke unknown key", func(a *agentState) error {
			_, err := s.RevokeKey(ctx, a.a.ID, "did:key:znone", now, notifyEvent(audit.ActionAgentRevokeKey))
			return err
		}},
		{"purge unclaimed", func(*agentState) error {
			_, err := s.PurgeUnclaimed(ctx, now.Add(2*time.Hour), 2, func(registry.Agent) audit.Event { return notifyEvent(audit.ActionAgentPurge) })
			return err
		}},
		{"revoke token", func(*agentState) error {
			revokeToken(t, s)
			return nil
		}},
	}
	for i := range 200 {
		before := snapshot()
		op := ops[rng.IntN(len(ops))]
		if len(agents) == 0 {
			op = ops[0]
		}
		var target *agentState
		if len(agents) > 0 {
			target = agents[rng.IntN(len(agents))]
		}
		err := op.do(target)
		after := snapshot()
		got := l.take()
		announced := map[string]bool{}
		var gotRevs []Change
		for _, c := range got {
			if c.Kind == KindAgentChanged {
				announced[c.ID] = true
			} else {
				gotRevs = append(gotRevs, c)
			}
		}
		if err != nil && len(got) > 0 {
			t.Fatalf("step %d %s failed (%v) but announced %v", i, op.name, err, got)
		}
		for id, a := range after {
			if b, ok := before[id]; (!ok || !reflect.DeepEqual(a, b)) && !announced[id] {
				t.Fatalf("step %d %s changed agent %s without announcing it (got %v)", i, op.name, id, got)
			}
		}
		for id := range before {
			if _, ok := after[id]; !ok && !announced[id] {
				t.Fatalf("step %d %s removed agent %s without announcing it", i, op.name, id)
			}
		}
		revs, lerr := s.ListRevocations(ctx, cursor, time.Time{}, 1000)
		if lerr != nil {
			t.Fatalf("ListRevocations: %v", lerr)
		}
		var want []Change
		for _, r := range revs {
			want = append(want, Change{Kind: r.Kind, ID: r.ID, Seq: r.Seq})
			cursor = r.Seq
		}
		if !slices.Equal(gotRevs, want) {
			t.Fatalf("step %d %s: announced revocations %v, the log has %v", i, op.name, gotRevs, want)
		}
	}
}

// TestPostgresChangesAcrossReplicas: a change committed by one store reaches another store on
// the same database through LISTEN/NOTIFY, and a store does not hear its own changes twice.
func TestPostgresChangesAcrossReplicas(t *testing.T) {
	pgtest.BaseURL(t)
	dsn := pgtest.URL(t)
	a, b := mustOpen(t, dsn), mustOpen(t, dsn)
	a.changes.pollEvery = time.Hour             // only notifications may deliver
	a.changes.idleCheck = 10 * time.Millisecond // quiet spells check the connection, keeping it
	la := subscribe(a)
	la.waitFor(t, "connected", isReset)
	time.Sleep(100 * time.Millisecond) // several idle checks
	own := revokeToken(t, a)
	jti := revokeToken(t, b)
	all := la.waitFor(t, "from replica B", func(c Change) bool { return c.ID == jti })
	n := 0
	for _, c := range all {
		if c.ID == own {
			n++
		}
	}
	if n != 1 {
		t.Errorf("A's own revocation delivered %d times to A, want once: %v", n, all)
	}
	if resets := slices.DeleteFunc(slices.Clone(all), func(c Change) bool { return !isReset(c) }); len(resets) != 1 {
		t.Errorf("%d resets, want only the one of connecting: the idle checks dropped the connection", len(resets))
	}
	// Another schema of the same database (another deployment) hears nothing of it.
	other := mustOpen(t, pgtest.URL(t))
	lo := subscribe(other)
	lo.waitFor(t, "connected", isReset)
	revokeToken(t, b)
	marker := revokeToken(t, other)
	for _, c := range lo.waitFor(t, "its own", func(c Change) bool { return c.ID == marker }) {
		if c.Kind == token.KindToken && c.ID != marker {
			t.Errorf("a store on another schema heard %v", c)
		}
	}
}

// gatedDial wraps the listener's dial: while held, dials wait (block) or fail (fail); conns
// records each connection's backend pid.
type gatedDial struct {
	mu    sync.Mutex
	held  chan struct{} // closed when released; nil when open
	fail  bool
	pids  chan uint32
	inner func(ctx context.Context) (*pgx.Conn, error)
}

func (g *gatedDial) dial(ctx context.Context) (*pgx.Conn, error) {
	g.mu.Lock()
	held, fail := g.held, g.fail
	g.mu.Unlock()
	if held != nil {
		if fail {
			return nil, errors.New("test: the database is held out of reach")
		}
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c, err := g.inner(ctx)
	if err == nil {
		select {
		case g.pids <- c.PgConn().PID():
		default:
		}
	}
	return c, err
}

func (g *gatedDial) hold(fail bool) {
	g.mu.Lock()
	g.held, g.fail = make(chan struct{}), fail
	g.mu.Unlock()
}

func (g *gatedDial) release() {
	g.mu.Lock()
	close(g.held)
	g.held = nil
	g.mu.Unlock()
}

// kill terminates the listener's backend, as a fail-over or an idle-connection reaper would.
func kill(t *testing.T, s *Store, pid uint32) {
	t.Helper()
	var ok bool
	if err := s.db.QueryRowContext(t.Context(), `SELECT pg_terminate_backend($1)`, int64(pid)).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
}

// TestPostgresListenerDropped: the listening connection is killed; what another replica revokes
// while it is down is still delivered — from the log when the connection is back (the listener
// waits to reconnect), and by polling the log while it cannot reconnect.
func TestPostgresListenerDropped(t *testing.T) {
	pgtest.BaseURL(t)
	dsn := pgtest.URL(t)
	for _, tc := range []struct {
		name string
		fail bool // dials fail at once (polling) rather than wait (recovery at reconnect)
	}{{"recovered at reconnect", false}, {"polled while down", true}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := mustOpen(t, dsn), mustOpen(t, dsn)
			g := &gatedDial{pids: make(chan uint32, 4), inner: a.changes.dial}
			a.changes.dial = g.dial
			if tc.fail {
				a.changes.pollEvery = 20 * time.Millisecond
			} else {
				a.changes.pollEvery = time.Hour
			}
			l := subscribe(a)
			l.waitFor(t, "connected", isReset)
			pid := <-g.pids
			g.hold(tc.fail)
			l.take()
			kill(t, a, pid)
			l.waitFor(t, "on losing the connection", isReset)
			jtis := []string{revokeToken(t, b), revokeToken(t, b)}
			if !tc.fail {
				g.release()
			}
			for _, jti := range jtis {
				l.waitFor(t, "revoked while down", func(c Change) bool { return c.ID == jti && c.Kind == token.KindToken && c.Seq > 0 })
			}
			if tc.fail {
				g.release()
				<-g.pids // reconnected
			}
			// Listening again: a later revocation arrives by notification.
			jti := revokeToken(t, b)
			l.waitFor(t, "after reconnecting", func(c Change) bool { return c.ID == jti })
		})
	}
}

func TestEncodeChangesSplits(t *testing.T) {
	var cs []Change
	for i := range 500 {
		cs = append(cs, Change{Kind: token.KindTask, ID: fmt.Sprintf("tsk_%040d", i), Seq: int64(i + 1)})
	}
	payloads := encodeChanges("st_origin", cs)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for %d changes, want them split", len(payloads), len(cs))
	}
	var got []Change
	for _, p := range payloads {
		if len(p) > 8000 {
			t.Errorf("payload of %d bytes, PostgreSQL takes at most 8000", len(p))
		}
		origin, c := parseChanges(p)
		if origin != "st_origin" {
			t.Errorf("origin %q", origin)
		}
		got = append(got, c...)
	}
	if !slices.Equal(got, cs) {
		t.Errorf("round trip lost changes: %d of %d", len(got), len(cs))
	}
}

// FuzzParseChanges: a payload never panics the listener, and what encodeChanges makes of
// well-formed changes reads back the same.
func FuzzParseChanges(f *testing.F) {
	f.Add("st_1\n12\ttoken\tjti_1\n0\tagent.changed\tagt_1\n", "task", "tsk_1", int64(3))
	f.Add("st_1\nx\ty\n\t\t\n-1\ttoken\ta\n", "key", "abc-_", int64(0))
	f.Add("", "", "", int64(-5))
	f.Fuzz(func(t *testing.T, payload, kind, id string, seq int64) {
		parseChanges(payload)
		if kind == "" || seq < 0 || strings.ContainsAny(kind+id, "\t\n") {
			return
		}
		c := Change{Kind: kind, ID: id, Seq: seq}
		ps := encodeChanges("st_x", []Change{c})
		if len(ps) != 1 {
			t.Fatalf("%d payloads", len(ps))
		}
		if o, got := parseChanges(ps[0]); o != "st_x" || len(got) != 1 || got[0] != c {
			t.Fatalf("parse(encode(%v)) = %q, %v", c, o, got)
		}
	})
}

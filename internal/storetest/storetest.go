// Package storetest is the conformance suite every mandate store backend passes (as Dex's
// storage/conformance): internal/sqlstore runs it on SQLite always and on PostgreSQL when
// MANDATE_TEST_POSTGRES is set.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// Store is everything the suite exercises.
type Store interface {
	audit.Store
	registry.Store
	principal.Store
	federation.Store
	token.Store
	delegation.Store
	vault.Store
	SinkCursor(ctx context.Context, sink string) (auditsink.Cursor, error)
	SaveSinkCursor(ctx context.Context, sink string, c auditsink.Cursor) error
	Use(ctx context.Context, id string, exp time.Time) error
	VerifyChain(ctx context.Context) error
	PurgeEnded(ctx context.Context, cutoff, now time.Time) (int64, error)
	audit.CheckpointStore
}

// Run runs the suite. newStore returns a new, empty store for one test, and closes it when that
// test ends (t.Cleanup). Tests run in parallel, each on its own store; every test ends by
// verifying the audit chain.
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s Store)
	}{
		{"Users", testUsers},
		{"UserErrors", testUserErrors},
		{"UserGrantable", testUserGrantable},
		{"APITokens", testAPITokens},
		{"APITokenErrors", testAPITokenErrors},
		{"BootstrapTokenExchange", testBootstrapTokenExchange},
		{"BootstrapTokenExchangeConcurrent", testBootstrapTokenExchangeConcurrent},
		{"CreateAndGetAgent", testCreateAndGetAgent},
		{"AgentErrors", testAgentErrors},
		{"ListAgents", testListAgents},
		{"ClaimAgent", testClaimAgent},
		{"ClaimAgentConcurrent", testClaimAgentConcurrent},
		{"UpdateAgent", testUpdateAgent},
		{"UpdateAgentErrors", testUpdateAgentErrors},
		{"UpdateAgentConcurrent", testUpdateAgentConcurrent},
		{"RotateKey", testRotateKey},
		{"RevokeKey", testRevokeKey},
		{"RotateKeyErrors", testRotateKeyErrors},
		{"SigningKeys", testSigningKeys},
		{"RevokedTokens", testRevokedTokens},
		{"Purge", testPurge},
		{"Retention", testRetention},
		{"RetentionManyBatches", testRetentionManyBatches},
		{"RetentionKeepsAuthority", testRetentionKeepsAuthority},
		{"RenewClaimCode", testRenewClaimCode},
		{"PurgeUnclaimed", testPurgeUnclaimed},
		{"Use", testUse},
		{"UseConcurrent", testUseConcurrent},
		{"RecordIssue", testRecordIssue},
		{"AuditEvents", testAuditEvents},
		{"ListEventsFilter", testListEventsFilter},
		{"AuditConcurrent", testAuditConcurrent},
		{"AuditQueries", testAuditQueries},
		{"AuditExplain", testAuditExplain},
		{"AuditSummarize", testAuditSummarize},
		{"Checkpoints", testCheckpoints},
		{"PruneEvents", testPruneEvents},
		{"SinkCursors", testSinkCursors},
		{"SinkCursorsConcurrent", testSinkCursorsConcurrent},
		{"AppendBadEvents", testAppendBadEvents},
		{"Grants", testGrants},
		{"GrantErrors", testGrantErrors},
		{"GrantRequests", testGrantRequests},
		{"GrantRequestApproval", testGrantRequestApproval},
		{"Tasks", testTasks},
		{"TaskErrors", testTaskErrors},
		{"EndTaskCascade", testEndTaskCascade},
		{"EndTaskConcurrent", testEndTaskConcurrent},
		{"RevokeGrantCascade", testRevokeGrantCascade},
		{"AgentAndKeyCascade", testAgentAndKeyCascade},
		{"RevocationLog", testRevocationLog},
		{"RevocationLogPurge", testRevocationLogPurge},
		{"RevocationLogConcurrent", testRevocationLogConcurrent},
		{"Upstreams", testUpstreams},
		{"UpstreamErrors", testUpstreamErrors},
		{"UpdateUpstream", testUpdateUpstream},
		{"UpstreamSecrets", testUpstreamSecrets},
		{"SwapSecrets", testSwapSecrets},
		{"SwapSecretsConcurrent", testSwapSecretsConcurrent},
		{"DeleteUpstream", testDeleteUpstream},
		{"UseBudgets", testUseBudgets},
		{"UseBudgetsAllOrNothing", testUseBudgetsAllOrNothing},
		{"UseBudgetsConcurrent", testUseBudgetsConcurrent},
		{"Rewrap", testRewrap},
		{"ServiceAccounts", testServiceAccounts},
		{"FederationIssuersAndRules", testFederation},
		{"FederationErrors", testFederationErrors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			tc.run(t, s)
			if err := s.VerifyChain(t.Context()); err != nil {
				t.Errorf("VerifyChain after the test: %v", err)
			}
		})
	}
}

// base is the suite's "now": a time with nanoseconds, which stores must keep.
var base = time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)

// at returns base + d.
func at(d time.Duration) time.Time { return base.Add(d) }

// newEvent starts an event the way callers do (denied, see audit.Outcome).
func newEvent(action string) audit.Event {
	ev := audit.New(base, ids.New("req"), action)
	ev.ActorType = audit.ActorUser
	ev.ActorID = "usr_actor"
	ev.Detail = "a <test> & \"quoted\" detail\n"
	return ev
}

// success is ev as the store records it for a committed mutation.
func success(ev audit.Event) audit.Event {
	ev.Outcome = audit.OutcomeSuccess
	return ev
}

// chainFields are set by the store; tests compare the chain with VerifyChain and seqs instead.
var chainFields = cmpopts.IgnoreFields(audit.Event{}, "Seq", "PrevHash", "Hash")

func mustCreateUser(t *testing.T, s Store, name string) principal.User {
	t.Helper()
	u := principal.User{ID: ids.New("usr"), Name: name, CreatedAt: base}
	if err := s.CreateUser(t.Context(), u, newEvent(audit.ActionUserCreate)); err != nil {
		t.Fatalf("CreateUser(%s): %v", name, err)
	}
	return u
}

func newKey(created time.Time) registry.Key {
	return registry.Key{DID: "did:key:z" + ids.New("k"), JKT: ids.New("jkt"), CreatedAt: created}
}

// mustCreateAgent creates an UNCLAIMED agent with one key and returns it (as stored) and its
// claim code, valid for an hour after base.
func mustCreateAgent(t *testing.T, s Store, handle string) (registry.Agent, string) {
	t.Helper()
	a := registry.Agent{
		ID:          ids.New("agt"),
		Handle:      handle,
		Name:        "Agent " + handle,
		Description: "does " + handle + " things",
		Status:      registry.StatusUnclaimed,
		CreatedAt:   base,
		Keys:        []registry.Key{newKey(base)},
	}
	code := ids.Secret("clm")
	cc := registry.ClaimCode{Hash: ids.Hash(code), ExpiresAt: at(time.Hour)}
	if err := s.CreateAgent(t.Context(), a, cc, newEvent(audit.ActionAgentRegister)); err != nil {
		t.Fatalf("CreateAgent(%s): %v", handle, err)
	}
	return a, code
}

func mustClaim(t *testing.T, s Store, code, ownerID string) registry.Agent {
	t.Helper()
	a, err := s.ClaimAgent(t.Context(), ids.Hash(code), ownerID, at(time.Minute), newEvent(audit.ActionAgentClaim))
	if err != nil {
		t.Fatalf("ClaimAgent: %v", err)
	}
	return a
}

// allEvents returns every event, oldest first.
func allEvents(t *testing.T, s Store) []audit.Event {
	t.Helper()
	evs, err := s.ListEvents(t.Context(), audit.Filter{Limit: 1 << 30})
	if err != nil {
		t.Fatalf("ListEvents: %v", err)
	}
	slices.Reverse(evs)
	return evs
}

func eventCount(t *testing.T, s Store) int {
	t.Helper()
	return len(allEvents(t, s))
}

// wantLastEvent checks that the newest event is want (chain fields aside).
func wantLastEvent(t *testing.T, s Store, want audit.Event) {
	t.Helper()
	evs, err := s.ListEvents(t.Context(), audit.Filter{Limit: 1})
	if err != nil {
		t.Fatalf("ListEvents: %v", err)
	}
	if len(evs) != 1 {
		t.Fatalf("ListEvents(Limit 1) returned %d events, want 1", len(evs))
	}
	if diff := cmp.Diff(want, evs[0], chainFields); diff != "" {
		t.Errorf("newest audit event (-want +got):\n%s", diff)
	}
}

// wantNewEvents checks that the events appended since there were before are want, oldest first
// (event ids and chain fields aside).
func wantNewEvents(t *testing.T, s Store, before int, want ...audit.Event) {
	t.Helper()
	got := allEvents(t, s)[before:]
	if diff := cmp.Diff(want, got, chainFields, cmpopts.IgnoreFields(audit.Event{}, "ID"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("new audit events (-want +got):\n%s", diff)
	}
}

// cascaded is the event a store appends for task tk ended by the cascade of the change by
// records.
func cascaded(by audit.Event, tk delegation.Task, status delegation.TaskStatus, cause, reason string) audit.Event {
	return success(delegation.CascadeEvent(by, tk, status, cause, reason))
}

// wantNoNewEvents checks that a failed mutation wrote no event.
func wantNoNewEvents(t *testing.T, s Store, before int) {
	t.Helper()
	if n := eventCount(t, s); n != before {
		t.Errorf("audit events: %d, want %d (a failed mutation must write none)", n, before)
	}
}

// errAny, as a wanted error, accepts any error but nil.
var errAny = errors.New("any error")

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	switch {
	case want == errAny:
		if err == nil {
			t.Errorf("%s succeeded, want an error", what)
		}
	case want == nil && err != nil:
		t.Errorf("%s: unexpected error %v", what, err)
	case want != nil && !errors.Is(err, want):
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

func mustGetAgent(t *testing.T, s Store, ref string) registry.Agent {
	t.Helper()
	a, err := s.GetAgent(t.Context(), ref)
	if err != nil {
		t.Fatalf("GetAgent(%s): %v", ref, err)
	}
	return a
}

// runConcurrently calls fn(i) for i in [0, n) from n goroutines started together.
func runConcurrently(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := range n {
		done.Go(func() {
			start.Wait()
			errs[i] = fn(i)
		})
	}
	start.Done()
	done.Wait()
	return errs
}

func testUsers(t *testing.T, s Store) {
	ctx := t.Context()
	if n, err := s.CountUsers(ctx); err != nil || n != 0 {
		t.Fatalf("CountUsers on an empty store = %d, %v; want 0, nil", n, err)
	}
	alice := principal.User{ID: ids.New("usr"), Name: "alice", Admin: true, CreatedAt: base}
	ev := newEvent(audit.ActionUserCreate)
	if err := s.CreateUser(ctx, alice, ev); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	want := success(ev)
	want.Target = alice.ID // defaulted by the store
	wantLastEvent(t, s, want)

	// bob's name is alice's id: lookups by id win.
	bob := principal.User{ID: ids.New("usr"), Name: alice.ID, CreatedAt: at(time.Second)}
	if err := s.CreateUser(ctx, bob, newEvent(audit.ActionUserCreate)); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}

	for _, tc := range []struct {
		name, ref string
		want      principal.User
	}{
		{"by name", "alice", alice},
		{"by id, which is also bob's name", alice.ID, alice},
		{"by id", bob.ID, bob},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.GetUser(ctx, tc.ref)
			if err != nil {
				t.Fatalf("GetUser(%s): %v", tc.ref, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("GetUser(%s) (-want +got):\n%s", tc.ref, diff)
			}
		})
	}

	users, err := s.ListUsers(ctx)
	if err != nil {
		t.Fatalf("ListUsers: %v", err)
	}
	if diff := cmp.Diff([]principal.User{alice, bob}, users, cmpopts.SortSlices(func(a, b principal.User) bool { return a.ID < b.ID })); diff != "" {
		t.Errorf("ListUsers (-want +got):\n%s", diff)
	}
	if n, err := s.CountUsers(ctx); err != nil || n != 2 {
		t.Errorf("CountUsers = %d, %v; want 2, nil", n, err)
	}
}

// testUserGrantable: a user's bound on what it may delegate round-trips, and none stays nil.
func testUserGrantable(t *testing.T, s Store) {
	ctx := t.Context()
	g := &principal.Grantable{Scopes: []string{"repo:read"}, Resources: []string{"https://api.example.com/"}}
	u := principal.User{ID: ids.New("usr"), Name: "bounded", CreatedAt: base, Grantable: g}
	if err := s.CreateUser(ctx, u, newEvent(audit.ActionUserCreate)); err != nil {
		t.Fatalf("CreateUser: %v", err)
	}
	got, err := s.GetUser(ctx, u.ID)
	if err != nil {
		t.Fatalf("GetUser: %v", err)
	}
	if diff := cmp.Diff(u, got); diff != "" {
		t.Errorf("GetUser (-want +got):\n%s", diff)
	}
	free := mustCreateUser(t, s, "free")
	if got, _ := s.GetUser(ctx, free.ID); got.Grantable != nil {
		t.Errorf("a user created without a bound reads back with %+v", got.Grantable)
	}
	secret := ids.Secret("mnd")
	tok := principal.APIToken{ID: ids.New("tok"), UserID: u.ID, Name: "t", Hash: ids.Hash(secret), CreatedAt: base}
	if err := s.CreateAPIToken(ctx, tok, newEvent(audit.ActionAPITokenCreate)); err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	if _, gu, err := s.LookupAPIToken(ctx, tok.Hash); err != nil || !cmp.Equal(gu.Grantable, g) {
		t.Errorf("LookupAPIToken user bound = %+v, %v", gu.Grantable, err)
	}
}

func testUserErrors(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	before := eventCount(t, s)

	err := s.CreateUser(ctx, principal.User{ID: ids.New("usr"), Name: "alice", CreatedAt: base}, newEvent(audit.ActionUserCreate))
	wantErr(t, "CreateUser with a taken name", err, principal.ErrNameTaken)
	wantNoNewEvents(t, s, before)
	if n, err := s.CountUsers(ctx); err != nil || n != 1 {
		t.Errorf("CountUsers after a failed create = %d, %v; want 1, nil", n, err)
	}
	if err := s.CreateUser(ctx, principal.User{ID: alice.ID, Name: "other", CreatedAt: base}, newEvent(audit.ActionUserCreate)); err == nil {
		t.Errorf("CreateUser with a taken id succeeded")
	}
	wantNoNewEvents(t, s, before)

	for _, ref := range []string{"nobody", ids.New("usr"), ""} {
		_, err := s.GetUser(ctx, ref)
		wantErr(t, fmt.Sprintf("GetUser(%q)", ref), err, principal.ErrNotFound)
	}
}

func testAPITokens(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	bob := mustCreateUser(t, s, "bob")

	mk := func(u principal.User, name string, created time.Time) (principal.APIToken, string) {
		secret := ids.Secret("mdt")
		tok := principal.APIToken{ID: ids.New("tok"), UserID: u.ID, Name: name, Hash: ids.Hash(secret),
			CreatedAt: created, ExpiresAt: created.Add(24 * time.Hour)}
		ev := newEvent(audit.ActionAPITokenCreate)
		if err := s.CreateAPIToken(ctx, tok, ev); err != nil {
			t.Fatalf("CreateAPIToken: %v", err)
		}
		want := success(ev)
		want.Target = tok.ID
		wantLastEvent(t, s, want)
		return tok, secret
	}
	t1, s1 := mk(alice, "laptop", base)
	t2, s2 := mk(alice, "ci", at(time.Minute))
	t3, _ := mk(bob, "bob's", at(2*time.Minute))

	gotTok, gotUser, err := s.LookupAPIToken(ctx, ids.Hash(s1))
	if err != nil {
		t.Fatalf("LookupAPIToken: %v", err)
	}
	if diff := cmp.Diff(t1, gotTok); diff != "" {
		t.Errorf("LookupAPIToken token (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(alice, gotUser); diff != "" {
		t.Errorf("LookupAPIToken user (-want +got):\n%s", diff)
	}

	list, err := s.ListAPITokens(ctx, alice.ID)
	if err != nil {
		t.Fatalf("ListAPITokens: %v", err)
	}
	if diff := cmp.Diff([]principal.APIToken{t2, t1}, list); diff != "" {
		t.Errorf("ListAPITokens, newest first (-want +got):\n%s", diff)
	}

	ev := newEvent(audit.ActionAPITokenRevoke)
	if err := s.RevokeAPIToken(ctx, t2.ID, at(time.Hour), ev); err != nil {
		t.Fatalf("RevokeAPIToken: %v", err)
	}
	want := success(ev)
	want.Target = t2.ID
	wantLastEvent(t, s, want)
	_, _, err = s.LookupAPIToken(ctx, ids.Hash(s2))
	wantErr(t, "LookupAPIToken of a revoked token", err, principal.ErrNotFound)

	// Revoking again succeeds and keeps the first time.
	if err := s.RevokeAPIToken(ctx, t2.ID, at(2*time.Hour), newEvent(audit.ActionAPITokenRevoke)); err != nil {
		t.Fatalf("RevokeAPIToken again: %v", err)
	}
	t2.RevokedAt = at(time.Hour)
	list, err = s.ListAPITokens(ctx, alice.ID)
	if err != nil {
		t.Fatalf("ListAPITokens: %v", err)
	}
	if diff := cmp.Diff([]principal.APIToken{t2, t1}, list); diff != "" {
		t.Errorf("ListAPITokens after revoke (-want +got):\n%s", diff)
	}
	if _, _, err := s.LookupAPIToken(ctx, ids.Hash(s1)); err != nil {
		t.Errorf("LookupAPIToken of the other token: %v", err)
	}
	list, err = s.ListAPITokens(ctx, bob.ID)
	if err != nil || len(list) != 1 || list[0].ID != t3.ID {
		t.Errorf("ListAPITokens(bob) = %v, %v; want [%s]", list, err, t3.ID)
	}
	list, err = s.ListAPITokens(ctx, ids.New("usr"))
	if err != nil || len(list) != 0 {
		t.Errorf("ListAPITokens(unknown user) = %v, %v; want none", list, err)
	}
}

// mustBootstrapToken stores a bootstrap token for u and returns it with its secret.
func mustBootstrapToken(t *testing.T, s Store, u principal.User) (principal.APIToken, string) {
	t.Helper()
	secret := ids.Secret("mdt")
	tok := principal.APIToken{ID: ids.New("tok"), UserID: u.ID, Name: "bootstrap", Hash: ids.Hash(secret),
		CreatedAt: base, ExpiresAt: at(24 * time.Hour), Bootstrap: true}
	if err := s.CreateAPIToken(t.Context(), tok, newEvent(audit.ActionAPITokenCreate)); err != nil {
		t.Fatalf("CreateAPIToken(bootstrap): %v", err)
	}
	return tok, secret
}

// testBootstrapTokenExchange: the exchange revokes the bootstrap token and stores the new one with
// both events; a used bootstrap token stays findable as a bootstrap token, and cannot be
// exchanged again; an ordinary token is never a bootstrap token.
func testBootstrapTokenExchange(t *testing.T, s Store) {
	ctx := t.Context()
	admin := mustCreateUser(t, s, "admin")
	boot, secret := mustBootstrapToken(t, s, admin)
	got, u, err := s.LookupAPIToken(ctx, ids.Hash(secret))
	if err != nil || !got.Bootstrap || u.ID != admin.ID {
		t.Fatalf("LookupAPIToken(bootstrap) = %+v, %v, %v", got, u.ID, err)
	}

	next := principal.APIToken{ID: ids.New("tok"), UserID: admin.ID, Name: "login host 2031-05-06", Hash: ids.Hash(ids.Secret("mdt")), CreatedAt: at(time.Minute)}
	before := eventCount(t, s)
	revokeEv, createEv := newEvent(audit.ActionAPITokenRevoke), newEvent(audit.ActionAPITokenCreate)
	if err := s.ExchangeBootstrapToken(ctx, boot.ID, at(time.Minute), next, revokeEv, createEv); err != nil {
		t.Fatalf("ExchangeBootstrapToken: %v", err)
	}
	evs := allEvents(t, s)[before:]
	if len(evs) != 2 || evs[0].Action != audit.ActionAPITokenRevoke || evs[0].Target != boot.ID ||
		evs[1].Action != audit.ActionAPITokenCreate || evs[1].Target != next.ID {
		t.Errorf("events of the exchange = %+v", evs)
	}
	_, _, err = s.LookupAPIToken(ctx, ids.Hash(secret))
	wantErr(t, "LookupAPIToken of the used bootstrap token", err, principal.ErrNotFound)
	spent, err := s.LookupBootstrapToken(ctx, ids.Hash(secret))
	boot.RevokedAt = at(time.Minute)
	if err != nil {
		t.Fatalf("LookupBootstrapToken of the used token: %v", err)
	}
	if diff := cmp.Diff(boot, spent); diff != "" {
		t.Errorf("LookupBootstrapToken (-want +got):\n%s", diff)
	}
	if got, _, err := s.LookupAPIToken(ctx, next.Hash); err != nil || got.Bootstrap {
		t.Errorf("LookupAPIToken(new token) = %+v, %v; want an ordinary token", got, err)
	}

	before = eventCount(t, s)
	again := next
	again.ID, again.Hash = ids.New("tok"), ids.Hash(ids.Secret("mdt"))
	err = s.ExchangeBootstrapToken(ctx, boot.ID, at(2*time.Minute), again, newEvent(audit.ActionAPITokenRevoke), newEvent(audit.ActionAPITokenCreate))
	wantErr(t, "ExchangeBootstrapToken of a used token", err, principal.ErrNotFound)
	err = s.ExchangeBootstrapToken(ctx, next.ID, at(2*time.Minute), again, newEvent(audit.ActionAPITokenRevoke), newEvent(audit.ActionAPITokenCreate))
	wantErr(t, "ExchangeBootstrapToken of an ordinary token", err, principal.ErrNotFound)
	wantNoNewEvents(t, s, before)
	if _, _, err := s.LookupAPIToken(ctx, again.Hash); !errors.Is(err, principal.ErrNotFound) {
		t.Errorf("a refused exchange stored its token: %v", err)
	}
	_, err = s.LookupBootstrapToken(ctx, next.Hash)
	wantErr(t, "LookupBootstrapToken of an ordinary token", err, principal.ErrNotFound)
}

// testBootstrapTokenExchangeConcurrent: of many logins racing with one bootstrap token, exactly
// one gets a token.
func testBootstrapTokenExchangeConcurrent(t *testing.T, s Store) {
	admin := mustCreateUser(t, s, "admin")
	boot, _ := mustBootstrapToken(t, s, admin)
	errs := runConcurrently(8, func(i int) error {
		next := principal.APIToken{ID: ids.New("tok"), UserID: admin.ID, Name: "login", Hash: ids.Hash(ids.Secret("mdt")), CreatedAt: at(time.Minute)}
		return s.ExchangeBootstrapToken(t.Context(), boot.ID, at(time.Minute), next, newEvent(audit.ActionAPITokenRevoke), newEvent(audit.ActionAPITokenCreate))
	})
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, principal.ErrNotFound):
			t.Errorf("ExchangeBootstrapToken: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d exchanges of one bootstrap token succeeded, want 1", won)
	}
	if toks, err := s.ListAPITokens(t.Context(), admin.ID); err != nil || len(toks) != 2 {
		t.Errorf("tokens after the race: %d, %v; want the bootstrap token and one new", len(toks), err)
	}
}

func testAPITokenErrors(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	before := eventCount(t, s)

	tok := principal.APIToken{ID: ids.New("tok"), UserID: ids.New("usr"), Name: "x", Hash: ids.Hash(ids.Secret("mdt")), CreatedAt: base}
	err := s.CreateAPIToken(ctx, tok, newEvent(audit.ActionAPITokenCreate))
	wantErr(t, "CreateAPIToken for an unknown user", err, principal.ErrNotFound)
	wantNoNewEvents(t, s, before)
	_, _, err = s.LookupAPIToken(ctx, tok.Hash)
	wantErr(t, "LookupAPIToken of a token never stored", err, principal.ErrNotFound)

	err = s.RevokeAPIToken(ctx, ids.New("tok"), base, newEvent(audit.ActionAPITokenRevoke))
	wantErr(t, "RevokeAPIToken of an unknown token", err, principal.ErrNotFound)
	wantNoNewEvents(t, s, before)

	tok.UserID = alice.ID
	if err := s.CreateAPIToken(ctx, tok, newEvent(audit.ActionAPITokenCreate)); err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	before = eventCount(t, s)
	dup := tok
	dup.ID = ids.New("tok")
	if err := s.CreateAPIToken(ctx, dup, newEvent(audit.ActionAPITokenCreate)); err == nil {
		t.Errorf("CreateAPIToken with a stored hash succeeded")
	}
	wantNoNewEvents(t, s, before)
}

func testCreateAndGetAgent(t *testing.T, s Store) {
	ctx := t.Context()
	k1 := newKey(base)
	k2 := newKey(at(-time.Hour)) // older, already rotated out
	k2.ExpiresAt = at(time.Hour)
	a := registry.Agent{
		ID:          ids.New("agt"),
		Handle:      "reporter",
		Name:        "Reporter",
		Description: "writes weekly reports",
		Status:      registry.StatusClaimed, // ignored: new agents are UNCLAIMED
		OwnerID:     "usr_ignored",
		CreatedAt:   base,
		Keys:        []registry.Key{k2, k1},
	}
	ev := newEvent(audit.ActionAgentRegister)
	ev.ActorType = audit.ActorAgent
	ev.ActorID = ""
	if err := s.CreateAgent(ctx, a, registry.ClaimCode{Hash: ids.Hash("code"), ExpiresAt: at(time.Hour)}, ev); err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	wantEv := success(ev)
	wantEv.AgentID, wantEv.Target = a.ID, a.ID
	wantLastEvent(t, s, wantEv)

	want := a
	want.Status = registry.StatusUnclaimed
	want.OwnerID = ""
	want.Keys = []registry.Key{k1, k2} // newest first
	for _, tc := range []struct{ name, ref string }{
		{"by id", a.ID},
		{"by handle", "@reporter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(want, mustGetAgent(t, s, tc.ref)); diff != "" {
				t.Errorf("GetAgent(%s) (-want +got):\n%s", tc.ref, diff)
			}
		})
	}
	for _, did := range []string{k1.DID, k2.DID} {
		got, err := s.GetAgentByDID(ctx, did)
		if err != nil {
			t.Fatalf("GetAgentByDID: %v", err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("GetAgentByDID(%s) (-want +got):\n%s", did, diff)
		}
	}
}

func testAgentErrors(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "taken")
	before := eventCount(t, s)

	for _, tc := range []struct {
		name   string
		handle string
		keys   []registry.Key
		want   error
	}{
		{"handle taken", "taken", []registry.Key{newKey(base)}, registry.ErrHandleTaken},
		{"did taken", "fresh", []registry.Key{a.Keys[0]}, registry.ErrDIDTaken},
		{"did taken as second key", "fresh2", []registry.Key{newKey(base), a.Keys[0]}, registry.ErrDIDTaken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := registry.Agent{ID: ids.New("agt"), Handle: tc.handle, Name: "n", CreatedAt: base, Keys: tc.keys}
			err := s.CreateAgent(ctx, b, registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: at(time.Hour)},
				newEvent(audit.ActionAgentRegister))
			wantErr(t, "CreateAgent", err, tc.want)
			wantNoNewEvents(t, s, before)
			_, err = s.GetAgent(ctx, b.ID)
			wantErr(t, "GetAgent of the agent that failed", err, registry.ErrNotFound)
			if tc.keys[0].DID != a.Keys[0].DID {
				_, err = s.GetAgentByDID(ctx, tc.keys[0].DID)
				wantErr(t, "GetAgentByDID of a key that failed", err, registry.ErrNotFound)
			}
		})
	}
	if got := mustGetAgent(t, s, "@taken"); got.ID != a.ID {
		t.Errorf("GetAgent(@taken) = %s, want %s", got.ID, a.ID)
	}

	for _, ref := range []string{ids.New("agt"), "@nobody", "@", "", "taken"} {
		_, err := s.GetAgent(ctx, ref)
		wantErr(t, fmt.Sprintf("GetAgent(%q)", ref), err, registry.ErrNotFound)
	}
	_, err := s.GetAgentByDID(ctx, "did:key:zunknown")
	wantErr(t, "GetAgentByDID(unknown)", err, registry.ErrNotFound)
}

func testListAgents(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	bob := mustCreateUser(t, s, "bob")
	_, codeA := mustCreateAgent(t, s, "a-alice")
	_, codeB := mustCreateAgent(t, s, "b-bob")
	_, codeC := mustCreateAgent(t, s, "c-alice-revoked")
	mustCreateAgent(t, s, "d-unclaimed")
	mustClaim(t, s, codeA, alice.ID)
	mustClaim(t, s, codeB, bob.ID)
	c := mustClaim(t, s, codeC, alice.ID)
	if _, err := s.UpdateAgent(ctx, c.ID, func(a *registry.Agent) error {
		a.Status, a.RevokedAt = registry.StatusRevoked, at(time.Hour)
		return nil
	}, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	all := map[string]registry.Agent{}
	for _, h := range []string{"a-alice", "b-bob", "c-alice-revoked", "d-unclaimed"} {
		all[h] = mustGetAgent(t, s, "@"+h)
	}
	for _, tc := range []struct {
		name string
		f    registry.Filter
		want []string // handles, in order
	}{
		{"all", registry.Filter{}, []string{"a-alice", "b-bob", "c-alice-revoked", "d-unclaimed"}},
		{"owner", registry.Filter{OwnerID: alice.ID}, []string{"a-alice", "c-alice-revoked"}},
		{"status", registry.Filter{Status: registry.StatusClaimed}, []string{"a-alice", "b-bob"}},
		{"unclaimed", registry.Filter{Status: registry.StatusUnclaimed}, []string{"d-unclaimed"}},
		{"owner and status", registry.Filter{OwnerID: alice.ID, Status: registry.StatusRevoked}, []string{"c-alice-revoked"}},
		{"no match", registry.Filter{OwnerID: bob.ID, Status: registry.StatusRevoked}, nil},
		{"unknown owner", registry.Filter{OwnerID: ids.New("usr")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListAgents(ctx, tc.f)
			if err != nil {
				t.Fatalf("ListAgents: %v", err)
			}
			var want []registry.Agent
			for _, h := range tc.want {
				want = append(want, all[h])
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListAgents(%+v) (-want +got):\n%s", tc.f, diff)
			}
		})
	}
}

func testClaimAgent(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a, code := mustCreateAgent(t, s, "claimable")
	before := eventCount(t, s)

	for _, tc := range []struct {
		name  string
		code  string
		owner string
		now   time.Time
		want  error
	}{
		{"wrong code", "not-the-code", alice.ID, at(time.Minute), registry.ErrClaimCode},
		{"empty code", "", alice.ID, at(time.Minute), registry.ErrClaimCode},
		{"expired code", code, alice.ID, at(time.Hour), registry.ErrClaimCode},
		{"long expired code", code, alice.ID, at(48 * time.Hour), registry.ErrClaimCode},
		{"unknown owner", code, ids.New("usr"), at(time.Minute), principal.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hash := ids.Hash(tc.code)
			if tc.code == "" {
				hash = ""
			}
			_, err := s.ClaimAgent(ctx, hash, tc.owner, tc.now, newEvent(audit.ActionAgentClaim))
			wantErr(t, "ClaimAgent", err, tc.want)
			wantNoNewEvents(t, s, before)
			if got := mustGetAgent(t, s, a.ID); got.Status != registry.StatusUnclaimed || got.OwnerID != "" {
				t.Errorf("after a failed claim the agent is %s owned by %q", got.Status, got.OwnerID)
			}
		})
	}

	ev := newEvent(audit.ActionAgentClaim)
	got, err := s.ClaimAgent(ctx, ids.Hash(code), alice.ID, at(time.Hour-time.Nanosecond), ev)
	if err != nil {
		t.Fatalf("ClaimAgent just before expiry: %v", err)
	}
	want := a
	want.Status, want.OwnerID, want.ClaimedAt = registry.StatusClaimed, alice.ID, at(time.Hour-time.Nanosecond)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ClaimAgent (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGetAgent(t, s, a.ID)); diff != "" {
		t.Errorf("GetAgent after claim (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.AgentID, wantEv.Target, wantEv.PrincipalID = a.ID, a.ID, alice.ID
	wantLastEvent(t, s, wantEv)

	before = eventCount(t, s)
	_, err = s.ClaimAgent(ctx, ids.Hash(code), alice.ID, at(time.Minute), newEvent(audit.ActionAgentClaim))
	wantErr(t, "ClaimAgent with a used code", err, registry.ErrClaimCode)
	wantNoNewEvents(t, s, before)

	// A revoked agent's code is useless too.
	b, codeB := mustCreateAgent(t, s, "revoked-first")
	if _, err := s.UpdateAgent(ctx, b.ID, func(a *registry.Agent) error {
		a.Status, a.RevokedAt = registry.StatusRevoked, base
		return nil
	}, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	_, err = s.ClaimAgent(ctx, ids.Hash(codeB), alice.ID, at(time.Minute), newEvent(audit.ActionAgentClaim))
	wantErr(t, "ClaimAgent of a revoked agent", err, registry.ErrClaimCode)
}

func testClaimAgentConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	var owners []principal.User
	for i := range 10 {
		owners = append(owners, mustCreateUser(t, s, fmt.Sprintf("user%d", i)))
	}
	a, code := mustCreateAgent(t, s, "contested")
	before := eventCount(t, s)

	errs := runConcurrently(10, func(i int) error {
		_, err := s.ClaimAgent(ctx, ids.Hash(code), owners[i].ID, at(time.Minute), newEvent(audit.ActionAgentClaim))
		return err
	})
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("claims %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, registry.ErrClaimCode):
			t.Errorf("claim %d: error %v, want %v", i, err, registry.ErrClaimCode)
		}
	}
	if winner < 0 {
		t.Fatalf("no claim succeeded")
	}
	if got := mustGetAgent(t, s, a.ID); got.OwnerID != owners[winner].ID || got.Status != registry.StatusClaimed {
		t.Errorf("agent is %s owned by %s, want CLAIMED by %s", got.Status, got.OwnerID, owners[winner].ID)
	}
	if n := eventCount(t, s); n != before+1 {
		t.Errorf("%d audit events written, want 1", n-before)
	}
}

func testUpdateAgent(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a, code := mustCreateAgent(t, s, "upd")
	orig := mustClaim(t, s, code, alice.ID)

	ev := newEvent(audit.ActionAgentRevoke)
	var seen registry.Agent
	got, err := s.UpdateAgent(ctx, a.ID, func(a *registry.Agent) error {
		seen = *a
		a.Status = registry.StatusRevoked
		a.RevokedAt = at(time.Hour)
		a.Name = "renamed"
		a.Description = "retired"
		// Not written:
		a.Handle = "other"
		a.CreatedAt = at(time.Hour)
		a.Keys = nil
		return nil
	}, ev)
	if err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	if diff := cmp.Diff(orig, seen); diff != "" {
		t.Errorf("fn saw (-want +got):\n%s", diff)
	}
	want := orig
	want.Status, want.RevokedAt, want.Name, want.Description = registry.StatusRevoked, at(time.Hour), "renamed", "retired"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("UpdateAgent returned (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGetAgent(t, s, "@upd")); diff != "" {
		t.Errorf("GetAgent after update (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.AgentID, wantEv.Target = a.ID, a.ID
	wantLastEvent(t, s, wantEv)

	// Owner and claim time can be written, and cleared.
	got, err = s.UpdateAgent(ctx, a.ID, func(a *registry.Agent) error {
		a.OwnerID, a.ClaimedAt = "", time.Time{}
		return nil
	}, newEvent(audit.ActionAgentRevoke))
	if err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	if got.OwnerID != "" || !got.ClaimedAt.IsZero() {
		t.Errorf("after clearing, owner %q claimed at %v", got.OwnerID, got.ClaimedAt)
	}
}

func testUpdateAgentErrors(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "upd")
	before := eventCount(t, s)
	errVeto := errors.New("veto")

	for _, tc := range []struct {
		name string
		id   string
		fn   func(*registry.Agent) error
		want error
	}{
		{"unknown agent", ids.New("agt"), func(*registry.Agent) error { return nil }, registry.ErrNotFound},
		{"fn fails", a.ID, func(a *registry.Agent) error {
			a.Status = registry.StatusRevoked
			return fmt.Errorf("wrapped: %w", errVeto)
		}, errVeto},
		{"unknown owner", a.ID, func(a *registry.Agent) error {
			a.Status, a.OwnerID = registry.StatusClaimed, ids.New("usr")
			return nil
		}, principal.ErrNotFound},
		{"invalid status", a.ID, func(a *registry.Agent) error {
			a.Status, a.Name = "BOGUS", "changed"
			return nil
		}, errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.UpdateAgent(ctx, tc.id, tc.fn, newEvent(audit.ActionAgentRevoke))
			wantErr(t, "UpdateAgent", err, tc.want)
			wantNoNewEvents(t, s, before)
			if diff := cmp.Diff(a, mustGetAgent(t, s, a.ID)); diff != "" {
				t.Errorf("agent changed by a failed update (-want +got):\n%s", diff)
			}
		})
	}
}

// testUpdateAgentConcurrent checks that UpdateAgent's read-modify-write is atomic: concurrent
// increments all count.
func testUpdateAgentConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "counter")
	const n = 10
	errs := runConcurrently(n, func(int) error {
		_, err := s.UpdateAgent(ctx, a.ID, func(a *registry.Agent) error {
			a.Description += "+"
			return nil
		}, newEvent(audit.ActionAgentRevoke))
		return err
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
	want := a.Description
	for range n {
		want += "+"
	}
	if got := mustGetAgent(t, s, a.ID).Description; got != want {
		t.Errorf("after %d concurrent updates Description = %q, want %q", n, got, want)
	}
}

// testRevokeKey: one key ends at once and is logged by thumbprint; the others stay.
func testRevokeKey(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "revkey")
	k1 := a.Keys[0]
	k2 := newKey(at(time.Minute))
	if _, err := s.RotateKey(ctx, a.ID, k2, at(time.Hour), newEvent(audit.ActionAgentRotateKey)); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	before := eventCount(t, s)
	_, err := s.RevokeKey(ctx, a.ID, "did:key:zunknown", at(2*time.Minute), newEvent(audit.ActionAgentRevokeKey))
	wantErr(t, "RevokeKey of an unknown key", err, registry.ErrNotFound)
	wantNoNewEvents(t, s, before)

	got, err := s.RevokeKey(ctx, a.ID, k1.DID, at(2*time.Minute), newEvent(audit.ActionAgentRevokeKey))
	if err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	k1.ExpiresAt = at(2 * time.Minute)
	if diff := cmp.Diff([]registry.Key{k2, k1}, got.Keys); diff != "" {
		t.Errorf("keys after RevokeKey (-want +got):\n%s", diff)
	}
	revs, err := s.ListRevocations(ctx, 0, at(0), 10)
	if err != nil || len(revs) != 1 || revs[0].Kind != token.KindKey || revs[0].ID != k1.JKT {
		t.Errorf("revocation log after RevokeKey: %+v, %v", revs, err)
	}
	if eventCount(t, s) != before+1 {
		t.Error("RevokeKey wrote no audit event")
	}
}

func testRotateKey(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "rot")
	k1 := a.Keys[0]

	k2 := newKey(at(time.Minute))
	ev := newEvent(audit.ActionAgentRotateKey)
	got, err := s.RotateKey(ctx, a.ID, k2, at(time.Hour), ev)
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	k1.ExpiresAt = at(time.Hour)
	want := a
	want.Keys = []registry.Key{k2, k1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("RotateKey (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.AgentID, wantEv.Target = a.ID, a.ID
	wantLastEvent(t, s, wantEv)

	// A later expiry leaves an earlier one alone.
	k3 := newKey(at(2 * time.Minute))
	got, err = s.RotateKey(ctx, a.ID, k3, at(2*time.Hour), newEvent(audit.ActionAgentRotateKey))
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	k2.ExpiresAt = at(2 * time.Hour)
	want.Keys = []registry.Key{k3, k2, k1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("second RotateKey (-want +got):\n%s", diff)
	}

	// An earlier expiry shortens every key that would outlive it (an emergency rotation).
	k4 := newKey(at(3 * time.Minute))
	got, err = s.RotateKey(ctx, a.ID, k4, at(30*time.Minute), newEvent(audit.ActionAgentRotateKey))
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	k1.ExpiresAt, k2.ExpiresAt, k3.ExpiresAt = at(30*time.Minute), at(30*time.Minute), at(30*time.Minute)
	want.Keys = []registry.Key{k4, k3, k2, k1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("third RotateKey (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGetAgent(t, s, a.ID)); diff != "" {
		t.Errorf("GetAgent after rotations (-want +got):\n%s", diff)
	}
	for _, k := range want.Keys {
		got, err := s.GetAgentByDID(ctx, k.DID)
		if err != nil || got.ID != a.ID {
			t.Errorf("GetAgentByDID(%s) = %s, %v; want %s", k.DID, got.ID, err, a.ID)
		}
	}

	// Other agents' keys are untouched.
	b, _ := mustCreateAgent(t, s, "other")
	if _, err := s.RotateKey(ctx, a.ID, newKey(at(4*time.Minute)), at(time.Minute), newEvent(audit.ActionAgentRotateKey)); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if diff := cmp.Diff(b, mustGetAgent(t, s, b.ID)); diff != "" {
		t.Errorf("another agent changed (-want +got):\n%s", diff)
	}
}

func testRotateKeyErrors(t *testing.T, s Store) {
	ctx := t.Context()
	a, _ := mustCreateAgent(t, s, "rot")
	b, _ := mustCreateAgent(t, s, "other")
	before := eventCount(t, s)
	for _, tc := range []struct {
		name string
		id   string
		key  registry.Key
		want error
	}{
		{"unknown agent", ids.New("agt"), newKey(base), registry.ErrNotFound},
		{"did of another agent", a.ID, b.Keys[0], registry.ErrDIDTaken},
		{"own current did", a.ID, a.Keys[0], registry.ErrDIDTaken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.RotateKey(ctx, tc.id, tc.key, at(time.Minute), newEvent(audit.ActionAgentRotateKey))
			wantErr(t, "RotateKey", err, tc.want)
			wantNoNewEvents(t, s, before)
			for _, x := range []registry.Agent{a, b} {
				if diff := cmp.Diff(x, mustGetAgent(t, s, x.ID)); diff != "" {
					t.Errorf("agent changed by a failed rotation (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func signingKey(kid string, created time.Time) token.SigningKey {
	return token.SigningKey{
		KID:       kid,
		Alg:       "EdDSA",
		PublicJWK: []byte(`{"kty":"OKP","crv":"Ed25519","x":"` + kid + `"}`),
		Private:   []byte{0, 1, 2, 0xff, 0},
		CreatedAt: created,
		ActiveAt:  created.Add(time.Minute),
	}
}

func testSigningKeys(t *testing.T, s Store) {
	ctx := t.Context()
	list := func(now time.Time) []token.SigningKey {
		t.Helper()
		keys, err := s.ListSigningKeys(ctx, now)
		if err != nil {
			t.Fatalf("ListSigningKeys: %v", err)
		}
		return keys
	}
	keys := list(base)
	if len(keys) != 0 {
		t.Fatalf("ListSigningKeys on an empty store = %v", keys)
	}

	k1 := signingKey("k1", base)
	ev := newEvent(audit.ActionKeyRotate)
	ev.ActorType = audit.ActorSystem
	if err := s.AddSigningKey(ctx, k1, time.Time{}, ev); err != nil {
		t.Fatalf("AddSigningKey: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target = "k1"
	wantLastEvent(t, s, wantEv)

	k2 := signingKey("k2", at(time.Hour))
	if err := s.AddSigningKey(ctx, k2, at(3*time.Hour), newEvent(audit.ActionKeyRotate)); err != nil {
		t.Fatalf("AddSigningKey: %v", err)
	}
	k1.PublishUntil = at(3 * time.Hour)
	k3 := signingKey("k3", at(2*time.Hour))
	if err := s.AddSigningKey(ctx, k3, at(4*time.Hour), newEvent(audit.ActionKeyRotate)); err != nil {
		t.Fatalf("AddSigningKey: %v", err)
	}
	k2.PublishUntil = at(4 * time.Hour) // k1 keeps its earlier PublishUntil

	for _, tc := range []struct {
		name string
		now  time.Time
		want []token.SigningKey
	}{
		{"all published", at(2 * time.Hour), []token.SigningKey{k3, k2, k1}},
		{"just before k1 goes", at(3*time.Hour - time.Nanosecond), []token.SigningKey{k3, k2, k1}},
		{"k1 gone", at(3 * time.Hour), []token.SigningKey{k3, k2}},
		{"only the current key", at(5 * time.Hour), []token.SigningKey{k3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, list(tc.now)); diff != "" {
				t.Errorf("ListSigningKeys(%v) (-want +got):\n%s", tc.now, diff)
			}
		})
	}

	before := eventCount(t, s)
	if err := s.AddSigningKey(ctx, signingKey("k3", at(5*time.Hour)), at(6*time.Hour), newEvent(audit.ActionKeyRotate)); err == nil {
		t.Errorf("AddSigningKey with a used kid succeeded")
	}
	wantNoNewEvents(t, s, before)
	if diff := cmp.Diff([]token.SigningKey{k3, k2, k1}, list(at(2*time.Hour))); diff != "" {
		t.Errorf("keys changed by a failed AddSigningKey (-want +got):\n%s", diff)
	}

	n, err := s.Purge(ctx, at(3*time.Hour))
	if err != nil || n != 1 {
		t.Errorf("Purge = %d, %v; want 1 (k1), nil", n, err)
	}
	if diff := cmp.Diff([]token.SigningKey{k3, k2}, list(base)); diff != "" {
		t.Errorf("after Purge (-want +got):\n%s", diff)
	}
}

func testRevokedTokens(t *testing.T, s Store) {
	ctx := t.Context()
	t1 := token.RevokedToken{JTI: ids.New("jti"), AgentID: ids.New("agt"), ExpiresAt: at(time.Hour), RevokedAt: base}
	t2 := token.RevokedToken{JTI: ids.New("jti"), AgentID: "", ExpiresAt: at(2 * time.Hour), RevokedAt: at(time.Minute)}
	ev := newEvent(audit.ActionTokenRevoke)
	if err := s.RevokeToken(ctx, t1, ev); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	wantEv := success(ev)
	wantEv.TokenID, wantEv.Target, wantEv.AgentID = t1.JTI, t1.JTI, t1.AgentID
	wantLastEvent(t, s, wantEv)
	if err := s.RevokeToken(ctx, t2, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	// Revoking again succeeds and keeps the first record.
	again := t1
	again.RevokedAt, again.ExpiresAt = at(time.Minute), at(10*time.Hour)
	if err := s.RevokeToken(ctx, again, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken again: %v", err)
	}

	for _, tc := range []struct {
		jti  string
		want bool
	}{{t1.JTI, true}, {t2.JTI, true}, {ids.New("jti"), false}, {"", false}} {
		got, err := s.IsTokenRevoked(ctx, tc.jti)
		if err != nil || got != tc.want {
			t.Errorf("IsTokenRevoked(%q) = %v, %v; want %v", tc.jti, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		want []token.RevokedToken
	}{
		{"both", base, []token.RevokedToken{t1, t2}},
		{"t1 expired", at(time.Hour), []token.RevokedToken{t2}},
		{"none", at(2 * time.Hour), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListRevokedTokens(ctx, tc.now)
			if err != nil {
				t.Fatalf("ListRevokedTokens: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListRevokedTokens (-want +got):\n%s", diff)
			}
		})
	}

	n, err := s.Purge(ctx, at(time.Hour))
	if err != nil || n != 2 {
		t.Errorf("Purge = %d, %v; want 2 (t1 and its revocation log entry), nil", n, err)
	}
	if got, err := s.IsTokenRevoked(ctx, t1.JTI); err != nil || got {
		t.Errorf("IsTokenRevoked(t1) after purge = %v, %v; want false", got, err)
	}
	if got, err := s.IsTokenRevoked(ctx, t2.JTI); err != nil || !got {
		t.Errorf("IsTokenRevoked(t2) after purge = %v, %v; want true", got, err)
	}
}

// testPurge purges more rows than one batch, and nothing that still matters.
func testPurge(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now()
	const expired, live = 1234, 7
	for i := range expired {
		if err := s.Use(ctx, fmt.Sprintf("old-%d", i), now.Add(-time.Minute)); err != nil {
			t.Fatalf("Use: %v", err)
		}
	}
	for i := range live {
		if err := s.Use(ctx, fmt.Sprintf("live-%d", i), now.Add(time.Hour)); err != nil {
			t.Fatalf("Use: %v", err)
		}
	}
	rt := token.RevokedToken{JTI: "rt-old", ExpiresAt: now.Add(-time.Second), RevokedAt: now.Add(-time.Hour)}
	if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	rt2 := token.RevokedToken{JTI: "rt-live", ExpiresAt: now.Add(time.Hour), RevokedAt: now.Add(-time.Hour)}
	if err := s.RevokeToken(ctx, rt2, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	before := eventCount(t, s)

	n, err := s.Purge(ctx, now)
	if err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if n != expired+2 { // the used jtis, rt-old and its revocation log entry
		t.Errorf("Purge removed %d rows, want %d", n, expired+2)
	}
	if n, err := s.Purge(ctx, now); err != nil || n != 0 {
		t.Errorf("second Purge = %d, %v; want 0, nil", n, err)
	}
	for i := range live {
		err := s.Use(ctx, fmt.Sprintf("live-%d", i), now.Add(time.Hour))
		wantErr(t, "Use of a live id after Purge", err, dpop.ErrReplay)
	}
	if got, err := s.IsTokenRevoked(ctx, "rt-live"); err != nil || !got {
		t.Errorf("IsTokenRevoked(rt-live) after Purge = %v, %v; want true", got, err)
	}
	wantNoNewEvents(t, s, before) // the audit trail is never purged
}

func testUse(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now()
	steps := []struct {
		name string
		id   string
		exp  time.Time
		want error
	}{
		{"first use", "a", now.Add(time.Minute), nil},
		{"replay", "a", now.Add(time.Minute), dpop.ErrReplay},
		{"replay with another expiry", "a", now.Add(time.Hour), dpop.ErrReplay},
		{"other id", "b", now.Add(time.Minute), nil},
		{"recorded already expired", "c", now.Add(-time.Second), nil},
		{"reuse after expiry", "c", now.Add(time.Minute), nil},
		{"replay of the reused id", "c", now.Add(time.Minute), dpop.ErrReplay},
	}
	for _, st := range steps {
		err := s.Use(ctx, st.id, st.exp)
		if st.want == nil && err != nil {
			t.Errorf("%s: Use(%s) = %v, want nil", st.name, st.id, err)
		}
		if st.want != nil && !errors.Is(err, st.want) {
			t.Errorf("%s: Use(%s) = %v, want %v", st.name, st.id, err, st.want)
		}
	}
}

func testUseConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	for _, id := range []string{"fresh", "expired"} {
		if id == "expired" {
			if err := s.Use(ctx, id, time.Now().Add(-time.Minute)); err != nil {
				t.Fatalf("Use: %v", err)
			}
		}
		errs := runConcurrently(10, func(int) error { return s.Use(ctx, id, exp) })
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, dpop.ErrReplay):
				t.Errorf("Use(%s): %v, want nil or %v", id, err, dpop.ErrReplay)
			}
		}
		if wins != 1 {
			t.Errorf("Use(%s) from 10 goroutines: %d succeeded, want exactly 1", id, wins)
		}
	}
}

// testRecordIssue: a token's single-use ids and its audit event commit together or not at all.
func testRecordIssue(t *testing.T, s Store) {
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	ev := newEvent(audit.ActionTokenIssue)
	ev.TokenID = "at_1"
	if err := s.RecordIssue(ctx, []token.SingleUse{{ID: "cca:1", ExpiresAt: exp}}, ev); err != nil {
		t.Fatalf("RecordIssue: %v", err)
	}
	wantLastEvent(t, s, success(ev))
	before := eventCount(t, s)
	again := newEvent(audit.ActionTokenIssue)
	err := s.RecordIssue(ctx, []token.SingleUse{{ID: "cca:2", ExpiresAt: exp}, {ID: "cca:1", ExpiresAt: exp}}, again)
	wantErr(t, "RecordIssue with a used id", err, dpop.ErrReplay)
	wantNoNewEvents(t, s, before)
	wantErr(t, "Use of an id from the rolled-back issue", s.Use(ctx, "cca:2", exp), nil)
	if err := s.RecordIssue(ctx, nil, newEvent(audit.ActionTokenIssue)); err != nil {
		t.Errorf("RecordIssue without single-use ids: %v", err)
	}
}

func testAuditEvents(t *testing.T, s Store) {
	ctx := t.Context()
	if evs, err := s.ListEvents(ctx, audit.Filter{}); err != nil || len(evs) != 0 {
		t.Fatalf("ListEvents on an empty store = %v, %v", evs, err)
	}
	full := audit.Event{
		ID:          ids.New("evt"),
		Time:        base,
		RequestID:   "req-1",
		Action:      audit.ActionTokenDeny,
		Outcome:     audit.OutcomeDenied,
		Reason:      "replay",
		Detail:      "ünïcode, \"quotes\", <html> & \\ \t\u2028 newline\n",
		ActorType:   audit.ActorAgent,
		ActorID:     ids.New("agt"),
		PrincipalID: ids.New("usr"),
		AgentID:     ids.New("agt"),
		Target:      "gr_x",
		TokenID:     ids.New("jti"),
	}
	if err := s.AppendEvent(ctx, full); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	// Standalone events keep their outcome: denials are recorded as denials.
	wantLastEvent(t, s, full)
	// An aggregated anonymous denial keeps its source, count and times.
	agg := newEvent(audit.ActionTokenDeny)
	agg.ActorType, agg.ActorID = audit.ActorAnonymous, ""
	agg.Source, agg.Count, agg.First, agg.Last = "2001:db8:1:2::/64", 999, at(time.Second), at(time.Minute)
	if err := s.AppendEvent(ctx, agg); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	wantLastEvent(t, s, agg)

	failure := newEvent(audit.ActionResourceDeny)
	failure.Outcome = audit.OutcomeFailure
	zeroTime := newEvent(audit.ActionTokenDeny)
	zeroTime.Time = time.Time{}
	for _, ev := range []audit.Event{failure, zeroTime} {
		if err := s.AppendEvent(ctx, ev); err != nil {
			t.Fatalf("AppendEvent: %v", err)
		}
		wantLastEvent(t, s, ev)
	}
	before := eventCount(t, s)
	if err := s.AppendEvent(ctx, full); err == nil {
		t.Errorf("AppendEvent with a used id succeeded")
	}
	wantNoNewEvents(t, s, before)

	evs := allEvents(t, s)
	if diff := cmp.Diff([]audit.Event{full, agg, failure, zeroTime}, evs, chainFields); diff != "" {
		t.Errorf("events, oldest first (-want +got):\n%s", diff)
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Errorf("event %d has Seq %d, want %d", i, ev.Seq, i+1)
		}
		prev := ""
		if i > 0 {
			prev = evs[i-1].Hash
		}
		if ev.PrevHash != prev {
			t.Errorf("event %d has PrevHash %q, want %q", i, ev.PrevHash, prev)
		}
		if len(ev.Hash) != 64 {
			t.Errorf("event %d has Hash %q, want 64 hex digits", i, ev.Hash)
		}
	}
}

func testListEventsFilter(t *testing.T, s Store) {
	ctx := t.Context()
	agentA, agentB := ids.New("agt"), ids.New("agt")
	var all []audit.Event // oldest first
	add := func(action, agentID string, outcome audit.Outcome) {
		ev := newEvent(action)
		ev.AgentID, ev.Outcome = agentID, outcome
		ev.PrincipalID = "usr_b"
		if agentID == agentA {
			ev.PrincipalID = "usr_a"
		}
		if len(all)%4 == 0 {
			ev.RequestID = "req_shared"
		}
		if err := s.AppendEvent(ctx, ev); err != nil {
			t.Fatalf("AppendEvent: %v", err)
		}
		all = append(all, ev)
	}
	for i := range 105 {
		agent := agentA
		if i%3 == 0 {
			agent = agentB
		}
		outcome := audit.OutcomeDenied
		if i%5 == 0 {
			outcome = audit.OutcomeFailure
		}
		action := audit.ActionTokenDeny
		if i%2 == 0 {
			action = audit.ActionResourceDeny
		}
		add(action, agent, outcome)
	}
	newestFirst := func(keep func(audit.Event) bool, limit int) []audit.Event {
		var out []audit.Event
		for i := len(all) - 1; i >= 0 && len(out) < limit; i-- {
			if keep(all[i]) {
				out = append(out, all[i])
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    audit.Filter
		keep func(audit.Event) bool
		n    int
	}{
		{"default limit 100", audit.Filter{}, func(audit.Event) bool { return true }, 100},
		{"limit", audit.Filter{Limit: 7}, func(audit.Event) bool { return true }, 7},
		{"above 100", audit.Filter{Limit: 1000}, func(audit.Event) bool { return true }, 1000},
		{"action", audit.Filter{Action: audit.ActionTokenDeny}, func(e audit.Event) bool { return e.Action == audit.ActionTokenDeny }, 100},
		{"agent", audit.Filter{AgentID: agentB}, func(e audit.Event) bool { return e.AgentID == agentB }, 100},
		{"outcome", audit.Filter{Outcome: audit.OutcomeFailure}, func(e audit.Event) bool { return e.Outcome == audit.OutcomeFailure }, 100},
		{"all three", audit.Filter{Action: audit.ActionResourceDeny, AgentID: agentB, Outcome: audit.OutcomeFailure, Limit: 3},
			func(e audit.Event) bool {
				return e.Action == audit.ActionResourceDeny && e.AgentID == agentB && e.Outcome == audit.OutcomeFailure
			}, 3},
		{"principal", audit.Filter{PrincipalID: "usr_a"}, func(e audit.Event) bool { return e.AgentID == agentA }, 100},
		{"request id", audit.Filter{RequestID: "req_shared"}, func(e audit.Event) bool { return e.RequestID == "req_shared" }, 100},
		{"no match", audit.Filter{Action: "nothing"}, func(audit.Event) bool { return false }, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListEvents(ctx, tc.f)
			if err != nil {
				t.Fatalf("ListEvents: %v", err)
			}
			if diff := cmp.Diff(newestFirst(tc.keep, tc.n), got, chainFields, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListEvents(%+v) (-want +got):\n%s", tc.f, diff)
			}
		})
	}
}

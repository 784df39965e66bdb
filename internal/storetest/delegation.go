package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// The delegation events the suite writes; the store records them as they are.
const (
	actionGrantCreate   = delegation.ActionGrantCreate
	actionGrantRevoke   = delegation.ActionGrantRevoke
	actionRequestCreate = delegation.ActionGrantRequest
	actionRequestDeny   = delegation.ActionGrantDeny
	actionTaskCreate    = delegation.ActionTaskStart
	actionTaskEnd       = delegation.ActionTaskEnd
)

// mustClaimedAgent creates an agent claimed by owner.
func mustClaimedAgent(t *testing.T, s Store, handle string, owner principal.User) registry.Agent {
	t.Helper()
	_, code := mustCreateAgent(t, s, handle)
	return mustClaim(t, s, code, owner.ID)
}

// newGrant returns an active grant with every field set, expiring 30 days after created.
func newGrant(principalID, agentID string, created time.Time) delegation.Grant {
	return delegation.Grant{
		ID:          ids.New("gr"),
		PrincipalID: principalID,
		AgentID:     agentID,
		Scopes:      []string{"calendar.read", "mail.send"},
		Resources:   []string{"https://api.example.com/", "https://mail.example.com/"},
		AuthorizationDetails: []json.RawMessage{
			json.RawMessage(`{"type":"payment","amount":{"value":"10.00","currency":"EUR"},"note":"<b> & \"q\""}`),
			json.RawMessage(`{"type":"calendar","actions":["read"]}`),
		},
		Limits: delegation.Limits{
			MaxTaskTTL:         time.Hour + time.Nanosecond,
			MaxTokenTTL:        5 * time.Minute,
			MaxDepth:           3,
			AllowSubdelegation: true,
			Budget:             map[string]int64{"calls": 100, "task_calls:ahrefs": 10, "max_request_bytes": 1 << 40},
		},
		Status:    delegation.GrantActive,
		CreatedAt: created,
		ExpiresAt: created.Add(30 * 24 * time.Hour),
	}
}

func mustCreateGrant(t *testing.T, s Store, g delegation.Grant) delegation.Grant {
	t.Helper()
	if err := s.CreateGrant(t.Context(), g, newEvent(actionGrantCreate)); err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	return g
}

func mustGetGrant(t *testing.T, s Store, id string) delegation.Grant {
	t.Helper()
	g, err := s.GetGrant(t.Context(), id)
	if err != nil {
		t.Fatalf("GetGrant(%s): %v", id, err)
	}
	return g
}

// newRequest returns a pending request with every field set, lapsing an hour after created.
func newRequest(agent registry.Agent, created time.Time) delegation.GrantRequest {
	return delegation.GrantRequest{
		ID:                   ids.New("grq"),
		AgentID:              agent.ID,
		OwnerID:              agent.OwnerID,
		Scopes:               []string{"calendar.read"},
		Resources:            []string{"https://api.example.com/"},
		AuthorizationDetails: []json.RawMessage{json.RawMessage(`{"type":"calendar","actions":["read"]}`)},
		Limits:               delegation.Limits{MaxTaskTTL: time.Hour, MaxDepth: 2, Budget: map[string]int64{"calls": 5}},
		Reason:               "weekly report ünïcode <&>",
		Status:               delegation.RequestPending,
		CreatedAt:            created,
		ExpiresAt:            created.Add(time.Hour),
	}
}

func mustCreateRequest(t *testing.T, s Store, r delegation.GrantRequest) delegation.GrantRequest {
	t.Helper()
	if err := s.CreateGrantRequest(t.Context(), r, newEvent(actionRequestCreate)); err != nil {
		t.Fatalf("CreateGrantRequest: %v", err)
	}
	return r
}

func mustGetRequest(t *testing.T, s Store, id string) delegation.GrantRequest {
	t.Helper()
	r, err := s.GetGrantRequest(t.Context(), id)
	if err != nil {
		t.Fatalf("GetGrantRequest(%s): %v", id, err)
	}
	return r
}

// newTask returns an active task under g, or under parent when it is not nil, expiring an hour
// after created.
func newTask(g delegation.Grant, parent *delegation.Task, created time.Time) delegation.Task {
	tk := delegation.Task{
		ID:                   ids.New("tsk"),
		GrantID:              g.ID,
		Depth:                1,
		PrincipalID:          g.PrincipalID,
		AgentID:              g.AgentID,
		InstanceJKT:          ids.New("jkt"),
		Purpose:              "write the weekly report",
		Scopes:               []string{"calendar.read"},
		Resources:            g.Resources,
		AuthorizationDetails: g.AuthorizationDetails[:1],
		Budget:               map[string]int64{"calls": 10},
		Status:               delegation.TaskActive,
		CreatedAt:            created,
		ExpiresAt:            created.Add(time.Hour),
	}
	tk.RootID = tk.ID
	if parent != nil {
		tk.ParentID, tk.RootID, tk.Depth = parent.ID, parent.RootID, parent.Depth+1
	}
	return tk
}

func mustCreateTask(t *testing.T, s Store, tk delegation.Task) delegation.Task {
	t.Helper()
	if err := s.CreateTask(t.Context(), tk, nil, newEvent(actionTaskCreate)); err != nil {
		t.Fatalf("CreateTask: %v", err)
	}
	return tk
}

func mustGetTask(t *testing.T, s Store, id string) delegation.Task {
	t.Helper()
	tk, err := s.GetTask(t.Context(), id)
	if err != nil {
		t.Fatalf("GetTask(%s): %v", id, err)
	}
	return tk
}

// wantTasks checks that the stored tasks are want.
func wantTasks(t *testing.T, s Store, want ...delegation.Task) {
	t.Helper()
	for _, w := range want {
		if diff := cmp.Diff(w, mustGetTask(t, s, w.ID)); diff != "" {
			t.Errorf("task %s (-want +got):\n%s", w.ID, diff)
		}
	}
}

// ended is tk as ended with status at at.
func ended(tk delegation.Task, status delegation.TaskStatus, at time.Time) delegation.Task {
	tk.Status, tk.EndedAt = status, at
	return tk
}

// lastSeq returns the seq of the newest revocation log entry, expired or not, or 0.
func lastSeq(t *testing.T, s Store) int64 {
	t.Helper()
	revs, err := s.ListRevocations(t.Context(), 0, time.Time{}, 1<<30)
	if err != nil {
		t.Fatalf("ListRevocations: %v", err)
	}
	if len(revs) == 0 {
		return 0
	}
	return revs[len(revs)-1].Seq
}

// wantRevocations checks that the log entries after cursor (unexpired at the zero time, which
// is all of them) are want, Seq aside, with seqs strictly increasing and above after. It returns
// the last seq (after when there are none).
func wantRevocations(t *testing.T, s Store, after int64, want ...token.Revocation) int64 {
	t.Helper()
	got, err := s.ListRevocations(t.Context(), after, time.Time{}, 1<<30)
	if err != nil {
		t.Fatalf("ListRevocations(%d): %v", after, err)
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(token.Revocation{}, "Seq"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("revocation log after %d (-want +got):\n%s", after, diff)
	}
	last := after
	for _, r := range got {
		if r.Seq <= last {
			t.Errorf("revocation %s %s has seq %d after seq %d", r.Kind, r.ID, r.Seq, last)
		}
		last = r.Seq
	}
	return last
}

func taskRevocation(tk delegation.Task, at time.Time) token.Revocation {
	return token.Revocation{Kind: token.KindTask, ID: tk.ID, ExpiresAt: tk.ExpiresAt, RevokedAt: at}
}

func testGrants(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	bob := mustCreateUser(t, s, "bob")
	a1 := mustClaimedAgent(t, s, "a1", alice)
	a2 := mustClaimedAgent(t, s, "a2", alice)

	g1 := newGrant(alice.ID, a1.ID, base)
	ev := newEvent(actionGrantCreate)
	if err := s.CreateGrant(ctx, g1, ev); err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = g1.ID, alice.ID, a1.ID
	wantLastEvent(t, s, wantEv)

	// Nothing but what a grant needs: empty lists, zero limits, no expiry.
	g2 := mustCreateGrant(t, s, delegation.Grant{ID: ids.New("gr"), PrincipalID: alice.ID, AgentID: a2.ID,
		Status: delegation.GrantActive, CreatedAt: at(time.Minute)})
	g3 := mustCreateGrant(t, s, newGrant(bob.ID, a1.ID, at(2*time.Minute)))
	for _, g := range []delegation.Grant{g1, g2, g3} {
		if diff := cmp.Diff(g, mustGetGrant(t, s, g.ID)); diff != "" {
			t.Errorf("GetGrant(%s) (-want +got):\n%s", g.ID, diff)
		}
	}

	for _, tc := range []struct {
		name             string
		principal, agent string
		want             []delegation.Grant
	}{
		{"all, newest first", "", "", []delegation.Grant{g3, g2, g1}},
		{"principal", alice.ID, "", []delegation.Grant{g2, g1}},
		{"agent", "", a1.ID, []delegation.Grant{g3, g1}},
		{"both", alice.ID, a1.ID, []delegation.Grant{g1}},
		{"no match", bob.ID, a2.ID, nil},
		{"unknown principal", ids.New("usr"), "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListGrants(ctx, tc.principal, tc.agent)
			if err != nil {
				t.Fatalf("ListGrants: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListGrants(%q, %q) (-want +got):\n%s", tc.principal, tc.agent, diff)
			}
		})
	}

	ev = newEvent(actionGrantRevoke)
	got, err := s.RevokeGrant(ctx, g2.ID, at(time.Hour), ev)
	if err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	g2.Status, g2.RevokedAt = delegation.GrantRevoked, at(time.Hour)
	if diff := cmp.Diff(g2, got); diff != "" {
		t.Errorf("RevokeGrant returned (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(g2, mustGetGrant(t, s, g2.ID)); diff != "" {
		t.Errorf("GetGrant after RevokeGrant (-want +got):\n%s", diff)
	}
	wantEv = success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = g2.ID, alice.ID, a2.ID
	wantLastEvent(t, s, wantEv)
	wantRevocations(t, s, 0, token.Revocation{Kind: token.KindGrant, ID: g2.ID, RevokedAt: at(time.Hour)})
	if diff := cmp.Diff(g1, mustGetGrant(t, s, g1.ID)); diff != "" {
		t.Errorf("another grant changed (-want +got):\n%s", diff)
	}
}

func testGrantErrors(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	before := eventCount(t, s)

	for _, tc := range []struct {
		name string
		fn   func(*delegation.Grant)
		want error
	}{
		{"unknown principal", func(g *delegation.Grant) { g.PrincipalID = ids.New("usr") }, delegation.ErrNotFound},
		{"unknown agent", func(g *delegation.Grant) { g.AgentID = ids.New("agt") }, delegation.ErrNotFound},
		{"used id", func(x *delegation.Grant) { x.ID = g.ID }, errAny},
		{"invalid status", func(g *delegation.Grant) { g.Status = "bogus" }, errAny},
		{"invalid authorization details", func(g *delegation.Grant) {
			g.AuthorizationDetails = []json.RawMessage{json.RawMessage(`{"type":`)}
		}, errAny},
		{"unknown request", func(g *delegation.Grant) { g.RequestID = ids.New("grq") }, delegation.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newGrant(alice.ID, a.ID, at(time.Minute))
			tc.fn(&x)
			wantErr(t, "CreateGrant", s.CreateGrant(ctx, x, newEvent(actionGrantCreate)), tc.want)
			wantNoNewEvents(t, s, before)
			if x.ID != g.ID {
				_, err := s.GetGrant(ctx, x.ID)
				wantErr(t, "GetGrant of the grant that failed", err, delegation.ErrNotFound)
			}
		})
	}
	if diff := cmp.Diff(g, mustGetGrant(t, s, g.ID)); diff != "" {
		t.Errorf("grant changed by failed creates (-want +got):\n%s", diff)
	}

	for _, id := range []string{ids.New("gr"), ""} {
		_, err := s.GetGrant(ctx, id)
		wantErr(t, fmt.Sprintf("GetGrant(%q)", id), err, delegation.ErrNotFound)
		_, err = s.RevokeGrant(ctx, id, at(time.Hour), newEvent(actionGrantRevoke))
		wantErr(t, fmt.Sprintf("RevokeGrant(%q)", id), err, delegation.ErrNotFound)
	}
	wantNoNewEvents(t, s, before)

	if _, err := s.RevokeGrant(ctx, g.ID, at(time.Hour), newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	before, seq := eventCount(t, s), lastSeq(t, s)
	_, err := s.RevokeGrant(ctx, g.ID, at(2*time.Hour), newEvent(actionGrantRevoke))
	wantErr(t, "RevokeGrant of a revoked grant", err, delegation.ErrNotActive)
	wantNoNewEvents(t, s, before)
	wantRevocations(t, s, seq)
	if got := mustGetGrant(t, s, g.ID); !got.RevokedAt.Equal(at(time.Hour)) {
		t.Errorf("a second revocation changed RevokedAt to %v", got.RevokedAt)
	}
}

func testGrantRequests(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	bob := mustCreateUser(t, s, "bob")
	a := mustClaimedAgent(t, s, "a", alice)
	b := mustClaimedAgent(t, s, "b", bob)

	r1 := newRequest(a, base)
	ev := newEvent(actionRequestCreate)
	ev.ActorType, ev.ActorID = audit.ActorAgent, a.ID
	if err := s.CreateGrantRequest(ctx, r1, ev); err != nil {
		t.Fatalf("CreateGrantRequest: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = r1.ID, alice.ID, a.ID
	wantLastEvent(t, s, wantEv)
	// Nothing but what a request needs.
	r2 := mustCreateRequest(t, s, delegation.GrantRequest{ID: ids.New("grq"), AgentID: a.ID, OwnerID: alice.ID,
		Status: delegation.RequestPending, CreatedAt: at(time.Minute)})
	r3 := mustCreateRequest(t, s, newRequest(b, at(2*time.Minute)))
	for _, r := range []delegation.GrantRequest{r1, r2, r3} {
		if diff := cmp.Diff(r, mustGetRequest(t, s, r.ID)); diff != "" {
			t.Errorf("GetGrantRequest(%s) (-want +got):\n%s", r.ID, diff)
		}
	}

	// Polling: each touch returns the request as it was, and writes no event.
	before := eventCount(t, s)
	got, err := s.TouchGrantRequest(ctx, r1.ID, at(3*time.Minute))
	if err != nil {
		t.Fatalf("TouchGrantRequest: %v", err)
	}
	if diff := cmp.Diff(r1, got); diff != "" {
		t.Errorf("first TouchGrantRequest returned (-want +got):\n%s", diff)
	}
	got, err = s.TouchGrantRequest(ctx, r1.ID, at(4*time.Minute))
	if err != nil {
		t.Fatalf("TouchGrantRequest: %v", err)
	}
	r1.LastPolledAt = at(3 * time.Minute)
	if diff := cmp.Diff(r1, got); diff != "" {
		t.Errorf("second TouchGrantRequest returned (-want +got):\n%s", diff)
	}
	r1.LastPolledAt = at(4 * time.Minute)
	if diff := cmp.Diff(r1, mustGetRequest(t, s, r1.ID)); diff != "" {
		t.Errorf("GetGrantRequest after touches (-want +got):\n%s", diff)
	}
	wantNoNewEvents(t, s, before)

	ev = newEvent(actionRequestDeny)
	got, err = s.DenyGrantRequest(ctx, r2.ID, at(5*time.Minute), ev)
	if err != nil {
		t.Fatalf("DenyGrantRequest: %v", err)
	}
	r2.Status, r2.DecidedAt = delegation.RequestDenied, at(5*time.Minute)
	if diff := cmp.Diff(r2, got); diff != "" {
		t.Errorf("DenyGrantRequest returned (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(r2, mustGetRequest(t, s, r2.ID)); diff != "" {
		t.Errorf("GetGrantRequest after deny (-want +got):\n%s", diff)
	}
	wantEv = success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = r2.ID, alice.ID, a.ID
	wantLastEvent(t, s, wantEv)

	for _, tc := range []struct {
		name   string
		owner  string
		status delegation.RequestStatus
		want   []delegation.GrantRequest
	}{
		{"all, newest first", "", "", []delegation.GrantRequest{r3, r2, r1}},
		{"owner", alice.ID, "", []delegation.GrantRequest{r2, r1}},
		{"status", "", delegation.RequestPending, []delegation.GrantRequest{r3, r1}},
		{"both", alice.ID, delegation.RequestDenied, []delegation.GrantRequest{r2}},
		{"no match", bob.ID, delegation.RequestDenied, nil},
		{"approved", "", delegation.RequestApproved, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListGrantRequests(ctx, tc.owner, tc.status)
			if err != nil {
				t.Fatalf("ListGrantRequests: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListGrantRequests(%q, %q) (-want +got):\n%s", tc.owner, tc.status, diff)
			}
		})
	}

	before = eventCount(t, s)
	for _, tc := range []struct {
		name string
		id   string
		at   time.Time
		want error
	}{
		{"denied", r2.ID, at(6 * time.Minute), delegation.ErrNotActive},
		{"lapsed", r3.ID, r3.ExpiresAt, delegation.ErrNotActive},
		{"unknown", ids.New("grq"), at(6 * time.Minute), delegation.ErrNotFound},
	} {
		t.Run("deny "+tc.name, func(t *testing.T) {
			_, err := s.DenyGrantRequest(ctx, tc.id, tc.at, newEvent(actionRequestDeny))
			wantErr(t, "DenyGrantRequest", err, tc.want)
			wantNoNewEvents(t, s, before)
		})
	}
	if diff := cmp.Diff(r3, mustGetRequest(t, s, r3.ID)); diff != "" {
		t.Errorf("a lapsed request changed by a failed deny (-want +got):\n%s", diff)
	}
	_, err = s.TouchGrantRequest(ctx, ids.New("grq"), at(time.Hour))
	wantErr(t, "TouchGrantRequest(unknown)", err, delegation.ErrNotFound)
	_, err = s.GetGrantRequest(ctx, ids.New("grq"))
	wantErr(t, "GetGrantRequest(unknown)", err, delegation.ErrNotFound)

	for _, tc := range []struct {
		name string
		fn   func(*delegation.GrantRequest)
		want error
	}{
		{"unknown agent", func(r *delegation.GrantRequest) { r.AgentID = ids.New("agt") }, delegation.ErrNotFound},
		{"unknown owner", func(r *delegation.GrantRequest) { r.OwnerID = ids.New("usr") }, delegation.ErrNotFound},
		{"used id", func(r *delegation.GrantRequest) { r.ID = r1.ID }, errAny},
		{"invalid status", func(r *delegation.GrantRequest) { r.Status = "bogus" }, errAny},
	} {
		t.Run("create "+tc.name, func(t *testing.T) {
			r := newRequest(a, at(time.Hour))
			tc.fn(&r)
			wantErr(t, "CreateGrantRequest", s.CreateGrantRequest(ctx, r, newEvent(actionRequestCreate)), tc.want)
			wantNoNewEvents(t, s, before)
		})
	}
}

// testGrantRequestApproval: CreateGrant with a RequestID approves the pending request in its
// transaction, and refuses one that is not pending.
func testGrantRequestApproval(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	r1 := mustCreateRequest(t, s, newRequest(a, base))
	r2 := mustCreateRequest(t, s, newRequest(a, base))
	r3 := mustCreateRequest(t, s, newRequest(a, base))
	r4 := mustCreateRequest(t, s, newRequest(a, base))
	if _, err := s.DenyGrantRequest(ctx, r2.ID, at(time.Minute), newEvent(actionRequestDeny)); err != nil {
		t.Fatalf("DenyGrantRequest: %v", err)
	}
	r2 = mustGetRequest(t, s, r2.ID)

	g := newGrant(alice.ID, a.ID, at(2*time.Minute))
	g.RequestID = r1.ID
	ev := newEvent(actionGrantCreate)
	if err := s.CreateGrant(ctx, g, ev); err != nil {
		t.Fatalf("CreateGrant answering a request: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = g.ID, alice.ID, a.ID
	wantLastEvent(t, s, wantEv)
	if diff := cmp.Diff(g, mustGetGrant(t, s, g.ID)); diff != "" {
		t.Errorf("GetGrant (-want +got):\n%s", diff)
	}
	r1.Status, r1.GrantID, r1.DecidedAt = delegation.RequestApproved, g.ID, g.CreatedAt
	if diff := cmp.Diff(r1, mustGetRequest(t, s, r1.ID)); diff != "" {
		t.Errorf("approved request (-want +got):\n%s", diff)
	}

	before := eventCount(t, s)
	for _, tc := range []struct {
		name    string
		request string
		created time.Time
		fn      func(*delegation.Grant)
		want    error
	}{
		{"approved twice", r1.ID, at(3 * time.Minute), nil, delegation.ErrNotActive},
		{"denied", r2.ID, at(3 * time.Minute), nil, delegation.ErrNotActive},
		{"lapsed", r3.ID, r3.ExpiresAt, nil, delegation.ErrNotActive},
		{"unknown request", ids.New("grq"), at(3 * time.Minute), nil, delegation.ErrNotFound},
		{"grant fails after the approval", r4.ID, at(3 * time.Minute),
			func(g *delegation.Grant) { g.AgentID = ids.New("agt") }, delegation.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newGrant(alice.ID, a.ID, tc.created)
			x.RequestID = tc.request
			if tc.fn != nil {
				tc.fn(&x)
			}
			wantErr(t, "CreateGrant", s.CreateGrant(ctx, x, newEvent(actionGrantCreate)), tc.want)
			wantNoNewEvents(t, s, before)
			_, err := s.GetGrant(ctx, x.ID)
			wantErr(t, "GetGrant of the grant that failed", err, delegation.ErrNotFound)
		})
	}
	for _, r := range []delegation.GrantRequest{r1, r2, r3, r4} {
		if diff := cmp.Diff(r, mustGetRequest(t, s, r.ID)); diff != "" {
			t.Errorf("request changed by a failed approval (-want +got):\n%s", diff)
		}
	}
	_, err := s.DenyGrantRequest(ctx, r1.ID, at(time.Hour), newEvent(actionRequestDeny))
	wantErr(t, "DenyGrantRequest of an approved request", err, delegation.ErrNotActive)
	wantNoNewEvents(t, s, before)

	// The request that failed to be approved still can be.
	g4 := newGrant(alice.ID, a.ID, at(4*time.Minute))
	g4.RequestID = r4.ID
	if err := s.CreateGrant(ctx, g4, newEvent(actionGrantCreate)); err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	if got := mustGetRequest(t, s, r4.ID); got.Status != delegation.RequestApproved || got.GrantID != g4.ID {
		t.Errorf("request is %s with grant %q, want approved with %s", got.Status, got.GrantID, g4.ID)
	}
}

func testTasks(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	bob := mustCreateUser(t, s, "bob")
	a1 := mustClaimedAgent(t, s, "a1", alice)
	a2 := mustClaimedAgent(t, s, "a2", alice)
	b1 := mustClaimedAgent(t, s, "b1", bob)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a1.ID, base))
	g2 := mustCreateGrant(t, s, newGrant(alice.ID, a2.ID, base))
	gb := mustCreateGrant(t, s, newGrant(bob.ID, b1.ID, base))

	t1 := newTask(g, nil, at(time.Minute))
	exp := time.Now().Add(time.Minute)
	ev := newEvent(actionTaskCreate)
	ev.ActorType, ev.ActorID = audit.ActorAgent, a1.ID
	if err := s.CreateTask(ctx, t1, []token.SingleUse{{ID: "dpop:1", ExpiresAt: exp}, {ID: "cca:1", ExpiresAt: exp}}, ev); err != nil {
		t.Fatalf("CreateTask: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = t1.ID, alice.ID, a1.ID
	wantLastEvent(t, s, wantEv)
	for _, id := range []string{"dpop:1", "cca:1"} {
		wantErr(t, "Use of an id a task used", s.Use(ctx, id, exp), dpop.ErrReplay)
	}

	// Handed down to another agent of the principal.
	t2 := newTask(g, &t1, at(2*time.Minute))
	t2.AgentID = a2.ID
	mustCreateTask(t, s, t2)
	// Nothing but what a task needs.
	t3 := mustCreateTask(t, s, delegation.Task{ID: "tsk_minimal", GrantID: g2.ID, RootID: "tsk_minimal", Depth: 1,
		PrincipalID: alice.ID, AgentID: a2.ID, Status: delegation.TaskActive, CreatedAt: at(3 * time.Minute)})
	t4 := mustCreateTask(t, s, newTask(gb, nil, at(4*time.Minute)))
	wantTasks(t, s, t1, t2, t3, t4)

	for _, tc := range []struct {
		name                    string
		principal, agent, grant string
		want                    []delegation.Task
	}{
		{"all, newest first", "", "", "", []delegation.Task{t4, t3, t2, t1}},
		{"principal", alice.ID, "", "", []delegation.Task{t3, t2, t1}},
		{"agent", "", a2.ID, "", []delegation.Task{t3, t2}},
		{"grant", "", "", g.ID, []delegation.Task{t2, t1}},
		{"all three", alice.ID, a2.ID, g.ID, []delegation.Task{t2}},
		{"no match", bob.ID, a1.ID, "", nil},
		{"unknown grant", "", "", ids.New("gr"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListTasks(ctx, tc.principal, tc.agent, tc.grant)
			if err != nil {
				t.Fatalf("ListTasks: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ListTasks(%q, %q, %q) (-want +got):\n%s", tc.principal, tc.agent, tc.grant, diff)
			}
		})
	}
	if n := lastSeq(t, s); n != 0 {
		t.Errorf("creating tasks wrote to the revocation log (last seq %d)", n)
	}
}

func testTaskErrors(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	revoked := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	root := mustCreateTask(t, s, newTask(g, nil, at(time.Minute)))
	done := mustCreateTask(t, s, newTask(g, nil, at(time.Minute)))
	if _, err := s.EndTask(ctx, done.ID, delegation.TaskCompleted, at(2*time.Minute), newEvent(actionTaskEnd)); err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	if _, err := s.RevokeGrant(ctx, revoked.ID, at(2*time.Minute), newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	exp := time.Now().Add(time.Minute)
	if err := s.Use(ctx, "cca:used", exp); err != nil {
		t.Fatalf("Use: %v", err)
	}
	before := eventCount(t, s)

	for _, tc := range []struct {
		name string
		fn   func(*delegation.Task)
		uses []string
		want error
	}{
		{"replay", nil, []string{"cca:fresh", "cca:used"}, dpop.ErrReplay},
		{"unknown grant", func(t *delegation.Task) { t.GrantID = ids.New("gr") }, []string{"cca:fresh"}, delegation.ErrNotFound},
		{"unknown parent", func(t *delegation.Task) { t.ParentID, t.Depth = ids.New("tsk"), 2 }, []string{"cca:fresh"}, delegation.ErrNotFound},
		{"unknown agent", func(t *delegation.Task) { t.AgentID = ids.New("agt") }, []string{"cca:fresh"}, delegation.ErrNotFound},
		{"unknown principal", func(t *delegation.Task) { t.PrincipalID = ids.New("usr") }, []string{"cca:fresh"}, delegation.ErrNotFound},
		{"revoked grant", func(t *delegation.Task) { t.GrantID = revoked.ID }, []string{"cca:fresh"}, delegation.ErrNotActive},
		{"ended parent", func(t *delegation.Task) { t.ParentID, t.RootID, t.Depth = done.ID, done.ID, 2 }, []string{"cca:fresh"}, delegation.ErrNotActive},
		{"used id", func(t *delegation.Task) { t.ID = root.ID }, []string{"cca:fresh"}, errAny},
		{"invalid status", func(t *delegation.Task) { t.Status = "bogus" }, []string{"cca:fresh"}, errAny},
		{"invalid authorization details", func(t *delegation.Task) {
			t.AuthorizationDetails = []json.RawMessage{json.RawMessage(`[1,`)}
		}, []string{"cca:fresh"}, errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tk := newTask(g, nil, at(3*time.Minute))
			if tc.fn != nil {
				tc.fn(&tk)
			}
			var uses []token.SingleUse
			for _, id := range tc.uses {
				uses = append(uses, token.SingleUse{ID: id, ExpiresAt: exp})
			}
			wantErr(t, "CreateTask", s.CreateTask(ctx, tk, uses, newEvent(actionTaskCreate)), tc.want)
			wantNoNewEvents(t, s, before)
			if tk.ID != root.ID {
				_, err := s.GetTask(ctx, tk.ID)
				wantErr(t, "GetTask of the task that failed", err, delegation.ErrNotFound)
			}
		})
	}
	// Every failure rolled back its uses: the fresh id is still unused.
	wantErr(t, "Use of an id from the failed creates", s.Use(ctx, "cca:fresh", exp), nil)
	wantTasks(t, s, root)

	for _, id := range []string{ids.New("tsk"), ""} {
		_, err := s.GetTask(ctx, id)
		wantErr(t, fmt.Sprintf("GetTask(%q)", id), err, delegation.ErrNotFound)
	}
}

// testEndTaskCascade ends tasks in chains three deep: every active descendant ends with the task,
// each with its revocation log entry, and what has ended stays as it ended.
func testEndTaskCascade(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	b := mustClaimedAgent(t, s, "b", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))

	// r1 ─┬─ c1 ── gc1      r2 ── c2 ── gc2      r3
	//     └─ c1b
	r1 := mustCreateTask(t, s, newTask(g, nil, at(1*time.Minute)))
	c1 := newTask(g, &r1, at(2*time.Minute))
	c1.AgentID = b.ID
	mustCreateTask(t, s, c1)
	c1b := mustCreateTask(t, s, newTask(g, &r1, at(3*time.Minute)))
	gc1 := mustCreateTask(t, s, newTask(g, &c1, at(4*time.Minute)))
	r2 := mustCreateTask(t, s, newTask(g, nil, at(5*time.Minute)))
	c2 := mustCreateTask(t, s, newTask(g, &r2, at(6*time.Minute)))
	gc2 := mustCreateTask(t, s, newTask(g, &c2, at(7*time.Minute)))
	r3 := mustCreateTask(t, s, newTask(g, nil, at(8*time.Minute)))

	// Ending a whole chain from its root: the task's event, then one per task the cascade ended.
	before := eventCount(t, s)
	ev := newEvent(actionTaskEnd)
	got, err := s.EndTask(ctx, r2.ID, delegation.TaskCompleted, at(10*time.Minute), ev)
	if err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	r2, c2, gc2 = ended(r2, delegation.TaskCompleted, at(10*time.Minute)), ended(c2, delegation.TaskCompleted, at(10*time.Minute)),
		ended(gc2, delegation.TaskCompleted, at(10*time.Minute))
	if diff := cmp.Diff(r2, got); diff != "" {
		t.Errorf("EndTask returned (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = r2.ID, alice.ID, a.ID
	wantNewEvents(t, s, before, wantEv,
		cascaded(wantEv, c2, delegation.TaskCompleted, r2.ID, delegation.ReasonCascadeTask),
		cascaded(wantEv, gc2, delegation.TaskCompleted, r2.ID, delegation.ReasonCascadeTask))
	wantTasks(t, s, r1, c1, c1b, gc1, r2, c2, gc2, r3)
	seq := wantRevocations(t, s, 0, taskRevocation(r2, at(10*time.Minute)), taskRevocation(c2, at(10*time.Minute)),
		taskRevocation(gc2, at(10*time.Minute)))

	// Revoking a middle task ends its subtree only. A task ended by a cascade of its own (its
	// key's revocation) passes that cause on.
	before = eventCount(t, s)
	ev = newEvent(actionTaskEnd)
	ev.Cause, ev.Reason = "did:key:zcause", delegation.ReasonCascadeKey
	got, err = s.EndTask(ctx, c1.ID, delegation.TaskRevoked, at(11*time.Minute), ev)
	if err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	c1, gc1 = ended(c1, delegation.TaskRevoked, at(11*time.Minute)), ended(gc1, delegation.TaskRevoked, at(11*time.Minute))
	if diff := cmp.Diff(c1, got); diff != "" {
		t.Errorf("EndTask returned (-want +got):\n%s", diff)
	}
	wantEv = success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = c1.ID, alice.ID, b.ID
	wantNewEvents(t, s, before, wantEv, cascaded(wantEv, gc1, delegation.TaskRevoked, "did:key:zcause", delegation.ReasonCascadeKey))
	wantTasks(t, s, r1, c1, c1b, gc1, r2, c2, gc2, r3)
	seq = wantRevocations(t, s, seq, taskRevocation(c1, at(11*time.Minute)), taskRevocation(gc1, at(11*time.Minute)))

	// Completing the root then ends what is still active, and leaves the revoked subtree alone.
	if _, err := s.EndTask(ctx, r1.ID, delegation.TaskCompleted, at(12*time.Minute), newEvent(actionTaskEnd)); err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	r1, c1b = ended(r1, delegation.TaskCompleted, at(12*time.Minute)), ended(c1b, delegation.TaskCompleted, at(12*time.Minute))
	wantTasks(t, s, r1, c1, c1b, gc1, r2, c2, gc2, r3)
	seq = wantRevocations(t, s, seq, taskRevocation(r1, at(12*time.Minute)), taskRevocation(c1b, at(12*time.Minute)))

	before = eventCount(t, s)
	for _, tc := range []struct {
		name   string
		id     string
		status delegation.TaskStatus
		want   error
	}{
		{"root again", r1.ID, delegation.TaskCompleted, delegation.ErrNotActive},
		{"root again, revoking", r1.ID, delegation.TaskRevoked, delegation.ErrNotActive},
		{"ended by the cascade", gc1.ID, delegation.TaskRevoked, delegation.ErrNotActive},
		{"unknown", ids.New("tsk"), delegation.TaskRevoked, delegation.ErrNotFound},
		{"to active", r3.ID, delegation.TaskActive, errAny},
		{"to a bogus status", r3.ID, "bogus", errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.EndTask(ctx, tc.id, tc.status, at(time.Hour), newEvent(actionTaskEnd))
			wantErr(t, "EndTask", err, tc.want)
			wantNoNewEvents(t, s, before)
			wantRevocations(t, s, seq)
		})
	}
	wantTasks(t, s, r1, c1, c1b, gc1, r2, c2, gc2, r3)
}

// testEndTaskConcurrent: of concurrent ends of one task exactly one wins.
func testEndTaskConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	root := mustCreateTask(t, s, newTask(g, nil, at(time.Minute)))
	child := mustCreateTask(t, s, newTask(g, &root, at(2*time.Minute)))
	before := eventCount(t, s)

	const n = 10
	errs := runConcurrently(n, func(i int) error {
		status := delegation.TaskCompleted
		if i%2 == 1 {
			status = delegation.TaskRevoked
		}
		_, err := s.EndTask(ctx, root.ID, status, at(time.Duration(i)*time.Second), newEvent(actionTaskEnd))
		return err
	})
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("ends %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, delegation.ErrNotActive):
			t.Errorf("end %d: error %v, want %v", i, err, delegation.ErrNotActive)
		}
	}
	if winner < 0 {
		t.Fatalf("no end succeeded")
	}
	status := delegation.TaskCompleted
	if winner%2 == 1 {
		status = delegation.TaskRevoked
	}
	endedAt := at(time.Duration(winner) * time.Second)
	wantTasks(t, s, ended(root, status, endedAt), ended(child, status, endedAt))
	if n := eventCount(t, s); n != before+2 {
		t.Errorf("%d audit events written, want 2 (the end and its cascade to the child)", n-before)
	}
	wantRevocations(t, s, 0, taskRevocation(root, endedAt), taskRevocation(child, endedAt))
}

// testRevokeGrantCascade: revoking a grant revokes every active task under it, at any depth.
func testRevokeGrantCascade(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	b := mustClaimedAgent(t, s, "b", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	other := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))

	t1 := mustCreateTask(t, s, newTask(g, nil, at(1*time.Minute)))
	done := mustCreateTask(t, s, newTask(g, nil, at(2*time.Minute)))
	t3 := newTask(g, &t1, at(3*time.Minute))
	t3.AgentID = b.ID
	mustCreateTask(t, s, t3)
	t4 := mustCreateTask(t, s, newTask(g, &t3, at(4*time.Minute)))
	t5 := mustCreateTask(t, s, newTask(g, nil, at(5*time.Minute)))
	u := mustCreateTask(t, s, newTask(other, nil, at(6*time.Minute)))
	if _, err := s.EndTask(ctx, done.ID, delegation.TaskCompleted, at(7*time.Minute), newEvent(actionTaskEnd)); err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	done = ended(done, delegation.TaskCompleted, at(7*time.Minute))
	seq := lastSeq(t, s)

	before := eventCount(t, s)
	ev := newEvent(actionGrantRevoke)
	got, err := s.RevokeGrant(ctx, g.ID, at(time.Hour), ev)
	if err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	g.Status, g.RevokedAt = delegation.GrantRevoked, at(time.Hour)
	if diff := cmp.Diff(g, got); diff != "" {
		t.Errorf("RevokeGrant returned (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.Target, wantEv.PrincipalID, wantEv.AgentID = g.ID, alice.ID, a.ID
	t1, t3, t4, t5 = ended(t1, delegation.TaskRevoked, at(time.Hour)), ended(t3, delegation.TaskRevoked, at(time.Hour)),
		ended(t4, delegation.TaskRevoked, at(time.Hour)), ended(t5, delegation.TaskRevoked, at(time.Hour))
	var want []audit.Event
	for _, tk := range []delegation.Task{t1, t5, t3, t4} { // by depth, then creation
		want = append(want, cascaded(wantEv, tk, delegation.TaskRevoked, g.ID, delegation.ReasonCascadeGrant))
	}
	wantNewEvents(t, s, before, append([]audit.Event{wantEv}, want...)...)
	wantTasks(t, s, t1, done, t3, t4, t5, u)
	seq = wantRevocations(t, s, seq,
		token.Revocation{Kind: token.KindGrant, ID: g.ID, ExpiresAt: g.ExpiresAt, RevokedAt: at(time.Hour)},
		taskRevocation(t1, at(time.Hour)), taskRevocation(t5, at(time.Hour)), // depth 1, by creation
		taskRevocation(t3, at(time.Hour)), taskRevocation(t4, at(time.Hour)))

	before = eventCount(t, s)
	_, err = s.RevokeGrant(ctx, g.ID, at(2*time.Hour), newEvent(actionGrantRevoke))
	wantErr(t, "RevokeGrant again", err, delegation.ErrNotActive)
	err = s.CreateTask(ctx, newTask(g, nil, at(2*time.Hour)), nil, newEvent(actionTaskCreate))
	wantErr(t, "CreateTask under the revoked grant", err, delegation.ErrNotActive)
	wantNoNewEvents(t, s, before)
	wantRevocations(t, s, seq)
	if diff := cmp.Diff(other, mustGetGrant(t, s, other.ID)); diff != "" {
		t.Errorf("another grant changed (-want +got):\n%s", diff)
	}
}

// testAgentAndKeyCascade: revoking an agent key revokes the tasks given to that key, and revoking
// an agent revokes its tasks, each with every task under it (other agents' too), each with its
// own event naming the key or the agent as its cause, in the transaction of the revocation.
func testAgentAndKeyCascade(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	b := mustClaimedAgent(t, s, "b", alice)
	c := mustClaimedAgent(t, s, "c", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	onKey := func(tk delegation.Task, ag registry.Agent) delegation.Task {
		tk.AgentID, tk.KeyJKT = ag.ID, ag.Keys[0].JKT
		return tk
	}
	// t1 (a, on a's key) ── t2 (b) ── t3 (c)      u1 (a, on another key) ── u2 (b)
	t1 := mustCreateTask(t, s, onKey(newTask(g, nil, at(1*time.Minute)), a))
	t2 := mustCreateTask(t, s, onKey(newTask(g, &t1, at(2*time.Minute)), b))
	t3 := mustCreateTask(t, s, onKey(newTask(g, &t2, at(3*time.Minute)), c))
	u1 := newTask(g, nil, at(4*time.Minute))
	u1.KeyJKT = ids.New("jkt")
	mustCreateTask(t, s, u1)
	u2 := mustCreateTask(t, s, onKey(newTask(g, &u1, at(5*time.Minute)), b))

	before := eventCount(t, s)
	ev := newEvent(audit.ActionAgentRevokeKey)
	if _, err := s.RevokeKey(ctx, a.ID, a.Keys[0].DID, at(time.Hour), ev); err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	wantEv := success(ev)
	wantEv.AgentID, wantEv.Target = a.ID, a.ID
	t1, t2, t3 = ended(t1, delegation.TaskRevoked, at(time.Hour)), ended(t2, delegation.TaskRevoked, at(time.Hour)),
		ended(t3, delegation.TaskRevoked, at(time.Hour))
	wantNewEvents(t, s, before, wantEv,
		cascaded(wantEv, t1, delegation.TaskRevoked, a.Keys[0].DID, delegation.ReasonCascadeKey),
		cascaded(wantEv, t2, delegation.TaskRevoked, a.Keys[0].DID, delegation.ReasonCascadeKey),
		cascaded(wantEv, t3, delegation.TaskRevoked, a.Keys[0].DID, delegation.ReasonCascadeKey))
	wantTasks(t, s, t1, t2, t3, u1, u2)

	before = eventCount(t, s)
	ev = newEvent(audit.ActionAgentRevoke)
	if _, err := s.UpdateAgent(ctx, a.ID, func(ag *registry.Agent) error {
		ag.Status, ag.RevokedAt = registry.StatusRevoked, at(2*time.Hour)
		return nil
	}, ev); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	wantEv = success(ev)
	wantEv.AgentID, wantEv.Target = a.ID, a.ID
	u1, u2 = ended(u1, delegation.TaskRevoked, at(2*time.Hour)), ended(u2, delegation.TaskRevoked, at(2*time.Hour))
	wantNewEvents(t, s, before, wantEv,
		cascaded(wantEv, u1, delegation.TaskRevoked, a.ID, delegation.ReasonCascadeAgent),
		cascaded(wantEv, u2, delegation.TaskRevoked, a.ID, delegation.ReasonCascadeAgent))
	wantTasks(t, s, t1, t2, t3, u1, u2)

	// Changing a revoked agent again cascades nothing.
	before = eventCount(t, s)
	if _, err := s.UpdateAgent(ctx, a.ID, func(ag *registry.Agent) error { return nil }, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	if n := eventCount(t, s) - before; n != 1 {
		t.Errorf("%d events for an update of a revoked agent, want 1", n)
	}
}

// testRevocationLog: every kind of revocation appends to the log in its transaction, in order;
// verifiers page through it with a cursor and never see what has expired.
func testRevocationLog(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	doomed := mustClaimedAgent(t, s, "doomed", alice)
	g := mustCreateGrant(t, s, newGrant(alice.ID, a.ID, base))
	g2 := newGrant(alice.ID, a.ID, base)
	g2.ExpiresAt = at(3 * time.Hour)
	mustCreateGrant(t, s, g2)
	tk := mustCreateTask(t, s, newTask(g, nil, base)) // expires at base + 1h
	wantRevocations(t, s, 0)                          // creating and claiming log nothing

	revokeAgent := func(at time.Time) {
		t.Helper()
		if _, err := s.UpdateAgent(ctx, doomed.ID, func(a *registry.Agent) error {
			a.Status, a.RevokedAt = registry.StatusRevoked, at
			return nil
		}, newEvent(audit.ActionAgentRevoke)); err != nil {
			t.Fatalf("UpdateAgent: %v", err)
		}
	}
	revokeAgent(at(time.Minute))
	if _, err := s.RevokeGrant(ctx, g2.ID, at(2*time.Minute), newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	if _, err := s.EndTask(ctx, tk.ID, delegation.TaskCompleted, at(3*time.Minute), newEvent(actionTaskEnd)); err != nil {
		t.Fatalf("EndTask: %v", err)
	}
	rt := token.RevokedToken{JTI: ids.New("jti"), AgentID: a.ID, ExpiresAt: at(2 * time.Hour), RevokedAt: at(4 * time.Minute)}
	if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	all := []token.Revocation{
		{Kind: token.KindAgent, ID: doomed.ID, RevokedAt: at(time.Minute)}, // never expires
		{Kind: token.KindGrant, ID: g2.ID, ExpiresAt: at(3 * time.Hour), RevokedAt: at(2 * time.Minute)},
		{Kind: token.KindTask, ID: tk.ID, ExpiresAt: at(time.Hour), RevokedAt: at(3 * time.Minute)},
		{Kind: token.KindToken, ID: rt.JTI, ExpiresAt: at(2 * time.Hour), RevokedAt: at(4 * time.Minute)},
	}
	last := wantRevocations(t, s, 0, all...)

	// What revokes nothing new logs nothing: changing a revoked agent, revoking a revoked token.
	revokeAgent(at(5 * time.Minute))
	if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken again: %v", err)
	}
	if _, err := s.UpdateAgent(ctx, a.ID, func(a *registry.Agent) error {
		a.Name = "renamed"
		return nil
	}, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	wantRevocations(t, s, last)

	list := func(after int64, now time.Time, limit int) []token.Revocation {
		t.Helper()
		revs, err := s.ListRevocations(ctx, after, now, limit)
		if err != nil {
			t.Fatalf("ListRevocations(%d, %v, %d): %v", after, now, limit, err)
		}
		return revs
	}
	// Paging with a cursor.
	var paged []token.Revocation
	after := int64(0)
	for page := 0; ; page++ {
		revs := list(after, base, 3)
		if len(revs) > 3 {
			t.Fatalf("ListRevocations with limit 3 returned %d entries", len(revs))
		}
		if len(revs) == 0 {
			break
		}
		if page > len(all) {
			t.Fatalf("paging does not end")
		}
		paged = append(paged, revs...)
		after = revs[len(revs)-1].Seq
	}
	if diff := cmp.Diff(list(0, base, 100), paged); diff != "" {
		t.Errorf("paged log differs from one read (-want +got):\n%s", diff)
	}
	if after != last {
		t.Errorf("paging ended at seq %d, want %d", after, last)
	}
	if got := list(0, base, 0); len(got) != len(all) {
		t.Errorf("ListRevocations with limit 0 returned %d entries, want the default limit to cover %d", len(got), len(all))
	}
	if got := list(last, base, 10); len(got) != 0 {
		t.Errorf("ListRevocations after the last seq = %v, want none", got)
	}

	ignoreSeq := cmpopts.IgnoreFields(token.Revocation{}, "Seq")
	for _, tc := range []struct {
		name string
		now  time.Time
		want []token.Revocation
	}{
		{"all live", at(time.Hour - time.Nanosecond), all},
		{"task expired", at(time.Hour), []token.Revocation{all[0], all[1], all[3]}},
		{"token expired", at(2 * time.Hour), all[:2]},
		{"only the agent, which never expires", at(1000 * time.Hour), all[:1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, list(0, tc.now, 100), ignoreSeq); diff != "" {
				t.Errorf("ListRevocations at %v (-want +got):\n%s", tc.now, diff)
			}
		})
	}
	// The limit counts entries returned, not the expired ones left out.
	if diff := cmp.Diff(all[:2], list(0, at(2*time.Hour), 2), ignoreSeq); diff != "" {
		t.Errorf("ListRevocations with expired entries and limit 2 (-want +got):\n%s", diff)
	}
}

// testRevocationLogPurge: Purge removes expired log entries, and seqs never go back even when the
// newest entries were purged.
func testRevocationLogPurge(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	a := mustClaimedAgent(t, s, "a", alice)
	doomed := mustClaimedAgent(t, s, "doomed", alice)
	g := newGrant(alice.ID, a.ID, base)
	g.ExpiresAt = at(time.Hour)
	mustCreateGrant(t, s, g)
	tk := mustCreateTask(t, s, newTask(g, nil, base)) // expires at base + 1h
	r := mustCreateRequest(t, s, newRequest(a, base))

	if _, err := s.UpdateAgent(ctx, doomed.ID, func(a *registry.Agent) error {
		a.Status, a.RevokedAt = registry.StatusRevoked, base
		return nil
	}, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	if _, err := s.RevokeGrant(ctx, g.ID, base, newEvent(actionGrantRevoke)); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	rt := token.RevokedToken{JTI: ids.New("jti"), ExpiresAt: at(2 * time.Hour), RevokedAt: base}
	if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	top := lastSeq(t, s) // the token's entry, newest
	before := eventCount(t, s)

	n, err := s.Purge(ctx, at(2*time.Hour))
	if err != nil {
		t.Fatalf("Purge: %v", err)
	}
	if n != 4 { // the grant's, the task's and the token's entries, and the revoked token
		t.Errorf("Purge removed %d rows, want 4", n)
	}
	if n, err := s.Purge(ctx, at(2*time.Hour)); err != nil || n != 0 {
		t.Errorf("second Purge = %d, %v; want 0, nil", n, err)
	}
	agentEntry := token.Revocation{Kind: token.KindAgent, ID: doomed.ID, RevokedAt: base}
	wantRevocations(t, s, 0, agentEntry)
	wantNoNewEvents(t, s, before)
	// Grants, tasks and requests are state, not tokens: they stay.
	g.Status, g.RevokedAt = delegation.GrantRevoked, base
	if diff := cmp.Diff(g, mustGetGrant(t, s, g.ID)); diff != "" {
		t.Errorf("grant after Purge (-want +got):\n%s", diff)
	}
	wantTasks(t, s, ended(tk, delegation.TaskRevoked, base))
	if diff := cmp.Diff(r, mustGetRequest(t, s, r.ID)); diff != "" {
		t.Errorf("grant request after Purge (-want +got):\n%s", diff)
	}

	// A verifier that had read up to top must see the next entry.
	rt2 := token.RevokedToken{JTI: ids.New("jti"), ExpiresAt: at(3 * time.Hour), RevokedAt: at(2 * time.Hour)}
	if err := s.RevokeToken(ctx, rt2, newEvent(audit.ActionTokenRevoke)); err != nil {
		t.Fatalf("RevokeToken: %v", err)
	}
	wantRevocations(t, s, top, token.Revocation{Kind: token.KindToken, ID: rt2.JTI, ExpiresAt: rt2.ExpiresAt, RevokedAt: rt2.RevokedAt})
}

// testRevocationLogConcurrent follows the log with a cursor while revocations commit from many
// goroutines: the follower must see every entry exactly once, which fails if an entry can become
// visible after one with a larger seq.
func testRevocationLogConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	const writers, each = 5, 10
	var done atomic.Bool
	var seen []token.Revocation
	var followErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		after := int64(0)
		for {
			finished := done.Load() // read before listing, so the last pass sees every commit
			revs, err := s.ListRevocations(ctx, after, base, 4)
			if err != nil {
				followErr = err
				return
			}
			seen = append(seen, revs...)
			if len(revs) > 0 {
				after = revs[len(revs)-1].Seq
			} else if finished {
				return
			}
		}
	})
	errs := runConcurrently(writers, func(i int) error {
		for j := range each {
			rt := token.RevokedToken{JTI: fmt.Sprintf("jti-%d-%d", i, j), ExpiresAt: at(time.Hour), RevokedAt: base}
			if err := s.RevokeToken(ctx, rt, newEvent(audit.ActionTokenRevoke)); err != nil {
				return err
			}
		}
		return nil
	})
	done.Store(true)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if followErr != nil {
		t.Fatalf("follower: %v", followErr)
	}
	got := map[string]int{}
	for _, r := range seen {
		got[r.ID]++
	}
	for i := range writers {
		for j := range each {
			if id := fmt.Sprintf("jti-%d-%d", i, j); got[id] != 1 {
				t.Errorf("the follower saw %s %d times, want once", id, got[id])
			}
		}
	}
	if len(seen) != writers*each {
		t.Errorf("the follower saw %d entries, want %d", len(seen), writers*each)
	}
	all, err := s.ListRevocations(ctx, 0, base, 1000)
	if err != nil {
		t.Fatalf("ListRevocations: %v", err)
	}
	if diff := cmp.Diff(all, seen); diff != "" {
		t.Errorf("the follower's entries differ from the log (-want +got):\n%s", diff)
	}
}

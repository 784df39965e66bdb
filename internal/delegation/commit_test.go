package delegation_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
)

// TestCommitExchange: the exchange commits its new task with a task.start event (purpose and
// terms) and the token's event in one transaction; a grant revoked between the plan and the
// commit wins — refused as revoked_meanwhile, and nothing is written.
func TestCommitExchange(t *testing.T) {
	ctx := t.Context()
	st, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	ev := func(action string) audit.Event {
		e := audit.New(now, ids.New("req"), action)
		e.ActorType = audit.ActorSystem
		return e
	}
	u := principal.User{ID: ids.New("usr"), Name: "erin", CreatedAt: now}
	if err := st.CreateUser(ctx, u, ev(audit.ActionUserCreate)); err != nil {
		t.Fatal(err)
	}
	a := registry.Agent{ID: ids.New("agt"), Handle: "erins-bot", Status: registry.StatusUnclaimed, CreatedAt: now,
		Keys: []registry.Key{{DID: "did:key:z" + ids.New("k"), JKT: ids.New("jkt"), CreatedAt: now}}}
	code := ids.Secret("clm")
	if err := st.CreateAgent(ctx, a, registry.ClaimCode{Hash: ids.Hash(code), ExpiresAt: now.Add(time.Hour)}, ev(audit.ActionAgentRegister)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ClaimAgent(ctx, ids.Hash(code), u.ID, now, ev(audit.ActionAgentClaim)); err != nil {
		t.Fatal(err)
	}
	svc := delegation.New(delegation.Config{Store: st, Agents: st, Tokens: st, Audit: st, Now: func() time.Time { return now }})
	newGrant := func() delegation.Grant {
		g := delegation.Grant{ID: ids.New("gr"), PrincipalID: u.ID, AgentID: a.ID, Scopes: []string{"read"},
			Resources: []string{"https://api.example/"}, Limits: delegation.Limits{MaxTaskTTL: time.Hour, MaxTokenTTL: time.Minute, MaxDepth: 1},
			Status: delegation.GrantActive, CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
		if err := st.CreateGrant(ctx, g, ev(delegation.ActionGrantCreate)); err != nil {
			t.Fatal(err)
		}
		return g
	}
	plan := func(g delegation.Grant) *delegation.Plan {
		tk := delegation.Task{ID: ids.New("tsk"), GrantID: g.ID, Depth: 1, PrincipalID: u.ID, AgentID: a.ID, KeyJKT: a.Keys[0].JKT,
			Purpose: "file the report", Scopes: g.Scopes, Resources: g.Resources, Status: delegation.TaskActive,
			CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		tk.RootID = tk.ID
		return &delegation.Plan{NewTask: &tk}
	}
	count := func() int {
		evs, err := st.ListEvents(ctx, audit.Filter{Limit: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}

	g := newGrant()
	p := plan(g)
	x := ev(delegation.ActionTokenExchange)
	x.TaskID = p.NewTask.ID
	before := count()
	if err := svc.CommitExchange(ctx, p, []token.SingleUse{{ID: "dpop:" + ids.New("j"), ExpiresAt: now.Add(time.Hour)}}, x); err != nil {
		t.Fatalf("CommitExchange: %v", err)
	}
	evs, err := st.ListEvents(ctx, audit.Filter{TaskID: p.NewTask.ID, Ascending: true})
	if err != nil {
		t.Fatal(err)
	}
	if count() != before+2 || len(evs) != 2 || evs[0].Action != delegation.ActionTaskStart || evs[1].Action != delegation.ActionTokenExchange ||
		evs[0].Purpose != "file the report" || len(evs[0].Terms) == 0 || evs[0].Seq+1 != evs[1].Seq {
		t.Fatalf("events of the new task: %+v", evs)
	}

	g = newGrant()
	p = plan(g)
	if _, err := st.RevokeGrant(ctx, g.ID, now, ev(delegation.ActionGrantRevoke)); err != nil {
		t.Fatal(err)
	}
	before = count()
	err = svc.CommitExchange(ctx, p, nil, ev(delegation.ActionTokenExchange))
	if de, ok := apperr.As(err); !ok || de.Reason != "revoked_meanwhile" || de.Kind != apperr.Forbidden || !errors.Is(err, delegation.ErrNotActive) {
		t.Fatalf("commit under a grant revoked meanwhile: %v, want revoked_meanwhile", err)
	}
	if n := count(); n != before {
		t.Errorf("%d events written by a refused commit", n-before)
	}
	if _, err := st.GetTask(ctx, p.NewTask.ID); !errors.Is(err, delegation.ErrNotFound) {
		t.Errorf("the refused task was stored: %v", err)
	}
}

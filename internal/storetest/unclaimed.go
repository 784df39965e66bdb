package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/registry"
)

func testRenewClaimCode(t *testing.T, s Store) {
	ctx := t.Context()
	owner := mustCreateUser(t, s, "renew-owner")
	a, oldCode := mustCreateAgent(t, s, "renew-me")

	newCode := ids.Secret("clm")
	ev := newEvent(audit.ActionAgentClaimCode)
	if err := s.RenewClaimCode(ctx, a.ID, registry.ClaimCode{Hash: ids.Hash(newCode), ExpiresAt: at(2 * time.Hour)}, ev); err != nil {
		t.Fatalf("RenewClaimCode: %v", err)
	}
	ev.AgentID, ev.Target = a.ID, a.ID
	wantLastEvent(t, s, success(ev))

	before := eventCount(t, s)
	_, err := s.ClaimAgent(ctx, ids.Hash(oldCode), owner.ID, at(time.Minute), newEvent(audit.ActionAgentClaim))
	wantErr(t, "ClaimAgent with the replaced code", err, registry.ErrClaimCode)
	wantNoNewEvents(t, s, before)
	// The new code lasts its own lifetime, past the old one's.
	got, err := s.ClaimAgent(ctx, ids.Hash(newCode), owner.ID, at(90*time.Minute), newEvent(audit.ActionAgentClaim))
	if err != nil || got.Status != registry.StatusClaimed {
		t.Fatalf("ClaimAgent with the new code = %v, %v; want CLAIMED", got.Status, err)
	}

	before = eventCount(t, s)
	err = s.RenewClaimCode(ctx, a.ID, registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: at(3 * time.Hour)}, newEvent(audit.ActionAgentClaimCode))
	wantErr(t, "RenewClaimCode of a CLAIMED agent", err, registry.ErrConflict)
	err = s.RenewClaimCode(ctx, "agt_nobody", registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: at(3 * time.Hour)}, newEvent(audit.ActionAgentClaimCode))
	wantErr(t, "RenewClaimCode of no agent", err, registry.ErrNotFound)
	wantNoNewEvents(t, s, before)
}

// testPurgeUnclaimed: only UNCLAIMED agents whose code lapsed by the cut-off go, in batches,
// each with its event; their handles and keys can be registered again; CLAIMED and REVOKED
// agents, agents with a live code and agents something refers to stay.
func testPurgeUnclaimed(t *testing.T, s Store) {
	ctx := t.Context()
	owner := mustCreateUser(t, s, "purge-owner")
	const lapsed = 7
	var gone []registry.Agent
	for i := range lapsed {
		a, _ := mustCreateAgent(t, s, fmt.Sprintf("lapsed-%d", i)) // code expires at base+1h
		gone = append(gone, a)
	}
	claimed, code := mustCreateAgent(t, s, "claimed")
	mustClaim(t, s, code, owner.ID)
	revoked, _ := mustCreateAgent(t, s, "revoked")
	if _, err := s.UpdateAgent(ctx, revoked.ID, func(a *registry.Agent) error {
		a.Status, a.RevokedAt = registry.StatusRevoked, at(time.Minute)
		return nil
	}, newEvent(audit.ActionAgentRevoke)); err != nil {
		t.Fatalf("UpdateAgent: %v", err)
	}
	renewed, _ := mustCreateAgent(t, s, "renewed")
	if err := s.RenewClaimCode(ctx, renewed.ID, registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: at(48 * time.Hour)}, newEvent(audit.ActionAgentClaimCode)); err != nil {
		t.Fatalf("RenewClaimCode: %v", err)
	}
	referred, _ := mustCreateAgent(t, s, "referred")
	mustCreateGrant(t, s, newGrant(owner.ID, referred.ID, base))

	// Before the cut-off reaches the codes' expiry nothing goes.
	if got, err := s.PurgeUnclaimed(ctx, at(time.Hour-time.Nanosecond), 100, purgeEvent); err != nil || len(got) != 0 {
		t.Fatalf("PurgeUnclaimed before the codes lapsed = %d agents, %v; want none", len(got), err)
	}
	before := eventCount(t, s)
	var purged []registry.Agent
	for {
		got, err := s.PurgeUnclaimed(ctx, at(24*time.Hour), 3, purgeEvent)
		if err != nil {
			t.Fatalf("PurgeUnclaimed: %v", err)
		}
		if len(got) > 3 {
			t.Fatalf("PurgeUnclaimed(limit 3) deleted %d agents", len(got))
		}
		purged = append(purged, got...)
		if len(got) < 3 {
			break
		}
	}
	if len(purged) != lapsed {
		t.Fatalf("PurgeUnclaimed deleted %d agents, want the %d lapsed ones", len(purged), lapsed)
	}
	evs := allEvents(t, s)[before:]
	if len(evs) != lapsed {
		t.Fatalf("PurgeUnclaimed wrote %d events, want one per agent (%d)", len(evs), lapsed)
	}
	for i, a := range purged {
		if a.Status != registry.StatusUnclaimed || a.Handle[:7] != "lapsed-" {
			t.Errorf("purged %s (@%s, %s): only lapsed UNCLAIMED agents may go", a.ID, a.Handle, a.Status)
		}
		if _, err := s.GetAgent(ctx, a.ID); err == nil {
			t.Errorf("agent %s is still there after PurgeUnclaimed", a.ID)
		}
		ev := evs[i]
		if ev.Action != audit.ActionAgentPurge || ev.AgentID != a.ID || ev.Target != a.ID || ev.Outcome != audit.OutcomeSuccess {
			t.Errorf("event %d = %s %s agent %s target %s; want %s success for %s", i, ev.Action, ev.Outcome, ev.AgentID, ev.Target, audit.ActionAgentPurge, a.ID)
		}
	}
	for _, a := range []registry.Agent{claimed, revoked, renewed, referred} {
		if got := mustGetAgent(t, s, a.ID); got.ID != a.ID {
			t.Errorf("agent @%s went", a.Handle)
		}
	}
	// The handle and the key are free again.
	again := gone[0]
	again.ID = ids.New("agt")
	again.Keys = []registry.Key{{DID: gone[0].Keys[0].DID, JKT: gone[0].Keys[0].JKT, CreatedAt: at(25 * time.Hour)}}
	if err := s.CreateAgent(ctx, again, registry.ClaimCode{Hash: ids.Hash(ids.Secret("clm")), ExpiresAt: at(26 * time.Hour)}, newEvent(audit.ActionAgentRegister)); err != nil {
		t.Errorf("CreateAgent with a purged agent's handle and key: %v", err)
	}
	if got, err := s.PurgeUnclaimed(ctx, at(24*time.Hour), 100, purgeEvent); err != nil || len(got) != 0 {
		t.Errorf("second PurgeUnclaimed = %d agents, %v; want none", len(got), err)
	}
}

func purgeEvent(a registry.Agent) audit.Event {
	ev := newEvent(audit.ActionAgentPurge)
	ev.ActorType = audit.ActorSystem
	return ev
}

package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/proxy"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
)

// proofStores say where the server's DPoP proofs are used up. Every proof is first recorded in
// the process's memory (the checkers' store), which refuses a replay at this replica for
// nothing. On PostgreSQL, where replicas share the database, a proof is then used up there too,
// under the id "dpop:" + dpop.Proof.ReplayID, in the write the request makes anyway when there is
// one:
//   - the token endpoint: in the token's issue (oauth.Config.SharedProofs);
//   - the proxy: in the call's pending audit record (proxy.Config.ProofUses), so a replayed proof
//     costs no commit and is refused before anything is forwarded;
//   - /v1 (agent and service-account tokens), which writes nothing per request: on its own, one
//     statement (store).
//
// SQLite is one process: memory alone is complete, and no proof id is written to the database.
//
// A shared write that fails for the database's sake (not a replay) forgets the proof in memory
// again: the request was answered 503, and the client's retry of it must be judged afresh, not
// refused as a replay at this replica only.
type proofStores struct {
	shared  bool
	store   dpop.ReplayStore   // for checkers that use a proof up themselves (/v1)
	pending proxy.PendingUsing // nil = the proxy's pending records use nothing up
	issues  token.Store        // the token endpoint's store of issues
	// notUsed forgets the proof of a proxied call refused as unavailable (the proxy calls it
	// for every such 503, before or at the pending write). Only where the database decides:
	// with memory alone, forgetting would let a copy of the proof through.
	notUsed func(proofID string)
}

func (s *Server) sharedProofs(memory *dpop.MemoryReplayStore) proofStores {
	if s.store.Dialect() != sqlstore.DialectPostgres {
		return proofStores{store: memory, issues: s.store}
	}
	return proofStores{shared: true, store: dbProofs{memory: memory, db: s.store},
		pending: s.store, issues: issuesForget{s.store, memory}, notUsed: memory.Forget}
}

// forget forgets in memory the proofs among uses when err is the database's failure.
func forget(memory *dpop.MemoryReplayStore, uses []token.SingleUse, err error) {
	if err == nil || errors.Is(err, dpop.ErrReplay) {
		return
	}
	for _, u := range uses {
		if id, ok := strings.CutPrefix(u.ID, "dpop:"); ok {
			memory.Forget(id)
		}
	}
}

// issuesForget is the token endpoint's store, forgetting a token's proof when its issue failed.
type issuesForget struct {
	*sqlstore.Store
	memory *dpop.MemoryReplayStore
}

func (p issuesForget) RecordIssue(ctx context.Context, uses []token.SingleUse, ev audit.Event) error {
	err := p.Store.RecordIssue(ctx, uses, ev)
	forget(p.memory, uses, err)
	return err
}

// dbProofs uses a proof up in memory, then in the database every replica shares.
type dbProofs struct {
	memory *dpop.MemoryReplayStore
	db     dpop.ReplayStore
}

func (p dbProofs) Use(ctx context.Context, id string, exp time.Time) error {
	if err := p.memory.Use(ctx, id, exp); err != nil {
		return err
	}
	err := p.db.Use(ctx, "dpop:"+id, exp)
	forget(p.memory, []token.SingleUse{{ID: "dpop:" + id}}, err)
	return err
}

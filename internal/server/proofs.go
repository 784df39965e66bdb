package server

import (
	"context"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/proxy"
	"github.com/mandate-dev/mandate/internal/sqlstore"
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
type proofStores struct {
	shared  bool
	store   dpop.ReplayStore   // for checkers that use a proof up themselves (/v1)
	pending proxy.PendingUsing // nil = the proxy's pending records use nothing up
}

func (s *Server) sharedProofs(memory *dpop.MemoryReplayStore) proofStores {
	if s.store.Dialect() != sqlstore.DialectPostgres {
		return proofStores{store: memory}
	}
	return proofStores{shared: true, store: dbProofs{memory: memory, db: s.store}, pending: s.store}
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
	return p.db.Use(ctx, "dpop:"+id, exp)
}

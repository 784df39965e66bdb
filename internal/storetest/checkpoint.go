package storetest

import (
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// testCheckpoints: checkpoints are stored once per seq (the first kept), listed oldest first
// and paged, and the one before a time found; the chain head and start are reported.
func testCheckpoints(t *testing.T, s Store) {
	ctx := t.Context()
	if seq, hash, err := s.ChainHead(ctx); err != nil || seq != 0 || hash != "" {
		t.Fatalf("ChainHead of an empty chain = %d, %q, %v", seq, hash, err)
	}
	if _, ok, err := s.LastCheckpoint(ctx); err != nil || ok {
		t.Fatalf("LastCheckpoint with none = %v, %v", ok, err)
	}
	for range 5 {
		if err := s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)); err != nil {
			t.Fatal(err)
		}
	}
	seq, hash, err := s.ChainHead(ctx)
	if err != nil || seq != 5 || len(hash) != 64 {
		t.Fatalf("ChainHead = %d, %q, %v; want seq 5", seq, hash, err)
	}
	hashes := map[int64]string{}
	if err := s.ScanEvents(ctx, 1, func(ev *audit.Event) error { hashes[ev.Seq] = ev.Hash; return nil }); err != nil || hashes[5] != hash {
		t.Fatalf("ScanEvents = %v, %v; want seq 5 with the head's hash", hashes, err)
	}
	cp := func(seq int64, min int) audit.Checkpoint {
		return audit.Checkpoint{Seq: seq, Hash: hashes[seq], Time: at(time.Duration(min) * time.Minute), JWS: "jws-" + string(rune('0'+seq))}
	}
	for _, c := range []audit.Checkpoint{cp(2, 1), cp(4, 2), cp(5, 3)} {
		if err := s.AddCheckpoint(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	dup := cp(4, 9)
	dup.JWS = "another replica's"
	if err := s.AddCheckpoint(ctx, dup); err != nil {
		t.Fatalf("AddCheckpoint of a seq already stored: %v", err)
	}
	all, err := s.ListCheckpoints(ctx, 0, 0)
	if err != nil || len(all) != 3 || all[0].Seq != 2 || all[1].JWS != "jws-4" || !all[1].Time.Equal(at(2*time.Minute)) {
		t.Fatalf("ListCheckpoints = %+v, %v", all, err)
	}
	if page, err := s.ListCheckpoints(ctx, 2, 1); err != nil || len(page) != 1 || page[0].Seq != 4 {
		t.Errorf("ListCheckpoints(after 2, limit 1) = %+v, %v", page, err)
	}
	if last, ok, err := s.LastCheckpoint(ctx); err != nil || !ok || last.Seq != 5 {
		t.Errorf("LastCheckpoint = %+v, %v, %v", last, ok, err)
	}
	if c, ok, err := s.CheckpointBefore(ctx, at(150*time.Second), 10); err != nil || !ok || c.Seq != 4 {
		t.Errorf("CheckpointBefore(2m30s) = %+v, %v, %v; want seq 4", c, ok, err)
	}
	if c, ok, err := s.CheckpointBefore(ctx, at(time.Hour), 3); err != nil || !ok || c.Seq != 2 {
		t.Errorf("CheckpointBefore(max seq 3) = %+v, %v, %v; want seq 2", c, ok, err)
	}
	if _, ok, err := s.CheckpointBefore(ctx, at(0), 10); err != nil || ok {
		t.Errorf("CheckpointBefore(before all) = %v, %v; want none", ok, err)
	}
}

// testPruneEvents: events up to a seq go in one step; the chain then starts right after it,
// verifies from the checkpoint there, and goes on growing from its head.
func testPruneEvents(t *testing.T, s Store) {
	ctx := t.Context()
	for range 6 {
		if err := s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)); err != nil {
			t.Fatal(err)
		}
	}
	var hash3 string
	err := s.ScanEvents(ctx, 3, func(ev *audit.Event) error {
		if ev.Seq == 3 {
			hash3 = ev.Hash
		}
		return nil
	})
	if err != nil || hash3 == "" {
		t.Fatalf("ScanEvents: %v", err)
	}
	if err := s.AddCheckpoint(ctx, audit.Checkpoint{Seq: 3, Hash: hash3, Time: base, JWS: "x"}); err != nil {
		t.Fatal(err)
	}
	// As retention does: the cut recorded (seq 7), and a checkpoint over the record, first.
	cut := newEvent(audit.ActionAuditPrune)
	cut.ActorType, cut.Outcome, cut.Target = audit.ActorSystem, audit.OutcomeSuccess, "3"
	if err := s.AppendEvent(ctx, cut); err != nil {
		t.Fatal(err)
	}
	var hash7 string
	if err := s.ScanEvents(ctx, 7, func(ev *audit.Event) error { hash7 = ev.Hash; return nil }); err != nil || hash7 == "" {
		t.Fatalf("ScanEvents: %v", err)
	}
	if err := s.AddCheckpoint(ctx, audit.Checkpoint{Seq: 7, Hash: hash7, Time: base, JWS: "y"}); err != nil {
		t.Fatal(err)
	}
	n, err := s.PruneEvents(ctx, 3)
	if err != nil || n != 3 {
		t.Fatalf("PruneEvents(3) = %d, %v; want 3", n, err)
	}
	if first, err := s.FirstSeq(ctx); err != nil || first != 4 {
		t.Errorf("FirstSeq = %d, %v; want 4", first, err)
	}
	if err := s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)); err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	if err := s.ScanEvents(ctx, 0, func(ev *audit.Event) error { seqs = append(seqs, ev.Seq); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 5 || seqs[0] != 4 || seqs[4] != 8 {
		t.Errorf("seqs after pruning and appending = %v, want 4..8", seqs)
	}
	// Run's VerifyChain then checks the chain from the checkpoint of seq 3.
}

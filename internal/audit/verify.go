package audit

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ErrChainBroken is wrapped by Report.Err when the chain does not verify.
var ErrChainBroken = errors.New("audit hash chain broken")

// Problem is the first thing wrong with a chain: the sequence number where it is, a stable
// reason word and a sentence.
type Problem struct {
	Seq int64 `json:"seq"`
	// FromSeq, when set, is the first sequence number the change may be at: a re-hashed chain
	// shows only at the next checkpoint, so the edit is somewhere in FromSeq..Seq.
	FromSeq int64  `json:"from_seq,omitempty"`
	EventID string `json:"event_id,omitempty"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail"`
}

// Reasons of a Problem.
const (
	ReasonSeqGap             = "seq_gap"             // sequence numbers skip: events were deleted
	ReasonSeqRepeat          = "seq_repeat"          // a sequence number comes twice, or goes back
	ReasonPrevHash           = "prev_hash"           // an event does not link to the one before it
	ReasonHash               = "hash"                // an event does not match its hash: a field was changed
	ReasonCheckpointMismatch = "checkpoint_mismatch" // the chain at a checkpoint's seq has another hash: re-hashed
	ReasonTruncated          = "truncated"           // the chain ends before a checkpoint's seq
	ReasonBadCheckpoint      = "bad_checkpoint"      // a checkpoint's signature does not verify
	ReasonUnanchoredStart    = "unanchored_start"    // the chain starts after seq 1 and no checkpoint vouches for the cut
	ReasonUnrecordedCut      = "unrecorded_cut"      // the chain starts after seq 1 and no signed audit.prune event records that cut
)

// Report is what a verification found. OK is true when the chain verifies.
type Report struct {
	OK       bool   `json:"ok"`
	Events   int64  `json:"events"`
	FirstSeq int64  `json:"first_seq,omitempty"`
	LastSeq  int64  `json:"last_seq,omitempty"`
	HeadHash string `json:"head_hash,omitempty"`
	// StartsAt is set when the chain does not start at seq 1 (retention removed what came
	// before): the checkpoint that vouches for the cut.
	StartsAt *Checkpoint `json:"starts_at,omitempty"`
	// Checkpoints is how many signed checkpoints matched the chain; CheckpointsBeforeStart
	// were signed for events no longer in it (removed by retention), so they were not checked.
	Checkpoints            int         `json:"checkpoints"`
	CheckpointsBeforeStart int         `json:"checkpoints_before_start,omitempty"`
	LastCheckpoint         *Checkpoint `json:"last_checkpoint,omitempty"`
	// SignaturesChecked is false when the checkpoints were taken as given (the store's own
	// check, which has no keys).
	SignaturesChecked bool     `json:"signatures_checked"`
	Problem           *Problem `json:"problem,omitempty"`
	// TornLines are the lines of a sink's file that were skipped as torn (not JSON): a sink
	// writes such a record again on a line of its own.
	TornLines  []int         `json:"torn_lines,omitempty"`
	Duration   time.Duration `json:"-"`
	DurationMS int64         `json:"duration_ms"`
}

// Err is nil when the chain verifies, else an error wrapping ErrChainBroken that names the
// first bad sequence number.
func (r *Report) Err() error {
	if r.Problem == nil {
		return nil
	}
	p := r.Problem
	where := fmt.Sprintf("seq %d", p.Seq)
	if p.FromSeq > 0 && p.FromSeq < p.Seq {
		where = fmt.Sprintf("seq %d (changed at or after seq %d)", p.Seq, p.FromSeq)
	}
	return fmt.Errorf("%w at %s: %s (%s)", ErrChainBroken, where, p.Detail, p.Reason)
}

// Verifier checks a chain fed to it event by event in sequence order, against signed
// checkpoints: sequence continuity, links, each event's hash, each checkpoint's signature, and
// that the chain at each checkpoint's seq has the hash it signs. Checkpoints kept outside the
// database catch what links alone cannot: a truncated tail (the chain ends before a checkpoint)
// and a re-hashed chain (the hash at a checkpoint's seq differs). Not safe for concurrent use.
type Verifier struct {
	cps     []Checkpoint // by seq
	next    int          // cps[next] is the first not yet reached
	badCp   *Problem     // the first checkpoint that does not verify
	rep     Report
	started bool
	prev    string // hash of the last event
	good    int64  // seq of the last checkpoint that matched (or the start)
	begin   time.Time
	// A chain that starts after seq 1 must hold the audit.prune event that recorded the cut
	// (retention writes it, then signs a checkpoint over it, before it removes anything):
	// cutAt is the seq before the chain's first, pruneSeq the seq of the first prune event
	// whose cut reaches it.
	cutAt, pruneSeq int64
	// tail: the chain is read from the event of one checkpoint on (CheckTail), not whole.
	tail bool
}

// NewTailVerifier returns a verifier of the chain from the event that checkpoint signs to the
// head: what the server checks at every start, cheaply.
func NewTailVerifier(keys *jose.JSONWebKeySet, checkpoint Checkpoint) *Verifier {
	v := NewVerifier(keys, []Checkpoint{checkpoint})
	v.tail = true
	return v
}

// NewVerifier returns a verifier for the given checkpoints (duplicates are fine). With keys,
// each checkpoint's JWS is verified and its claims taken from it; with nil keys the
// checkpoints are taken as given (Seq and Hash), as the store's own check does.
func NewVerifier(keys *jose.JSONWebKeySet, checkpoints []Checkpoint) *Verifier {
	v := &Verifier{begin: time.Now()}
	v.rep.SignaturesChecked = keys != nil
	seen := map[string]bool{}
	for _, c := range checkpoints {
		key := c.JWS
		if key == "" {
			key = fmt.Sprint(c.Seq, c.Hash)
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		if keys != nil {
			vc, err := ParseCheckpoint(c.JWS, *keys)
			if err != nil {
				seq := c.Seq
				if dc, derr := DecodeCheckpoint(c.JWS); derr == nil {
					seq = dc.Seq
				}
				if v.badCp == nil || seq < v.badCp.Seq {
					v.badCp = &Problem{Seq: seq, Reason: ReasonBadCheckpoint,
						Detail: fmt.Sprintf("the checkpoint for seq %d is not one the published keys signed: %v", seq, err)}
				}
				continue
			}
			c = vc
		}
		v.cps = append(v.cps, c)
	}
	slices.SortStableFunc(v.cps, func(a, b Checkpoint) int { return cmp.Compare(a.Seq, b.Seq) })
	return v
}

func (v *Verifier) fail(p Problem) bool {
	v.rep.Problem = &p
	return false
}

// Add checks the next event. It returns false once the chain is broken; further events are
// then ignored.
func (v *Verifier) Add(ev *Event) bool {
	if v.rep.Problem != nil {
		return false
	}
	if !v.start(ev) {
		return false
	}
	last := v.rep.LastSeq
	if v.rep.Events > 0 {
		switch {
		case ev.Seq <= last:
			return v.fail(Problem{Seq: ev.Seq, EventID: ev.ID, Reason: ReasonSeqRepeat,
				Detail: fmt.Sprintf("event %s has seq %d after seq %d: a sequence number came again", ev.ID, ev.Seq, last)})
		case ev.Seq > last+1:
			missing := fmt.Sprintf("seq %d", last+1)
			if ev.Seq > last+2 {
				missing = fmt.Sprintf("seqs %d to %d", last+1, ev.Seq-1)
			}
			return v.fail(Problem{Seq: last + 1, Reason: ReasonSeqGap,
				Detail: fmt.Sprintf("the events of %s are missing: the chain goes from seq %d to seq %d", missing, last, ev.Seq)})
		case ev.PrevHash != v.prev:
			return v.fail(Problem{Seq: ev.Seq, EventID: ev.ID, Reason: ReasonPrevHash,
				Detail: fmt.Sprintf("event %s does not link to the event before it (its prev_hash is not the hash of seq %d)", ev.ID, last)})
		}
	}
	if ev.ComputeHash() != ev.Hash {
		return v.fail(Problem{Seq: ev.Seq, EventID: ev.ID, Reason: ReasonHash,
			Detail: fmt.Sprintf("event %s does not match its hash: a field was changed after it was written", ev.ID)})
	}
	for v.next < len(v.cps) && v.cps[v.next].Seq <= ev.Seq {
		c := v.cps[v.next]
		v.next++
		if c.Seq < ev.Seq {
			continue // cannot happen: the seqs before were checked, or are before the start
		}
		if c.Hash != ev.Hash {
			return v.fail(Problem{Seq: ev.Seq, FromSeq: v.good + 1, EventID: ev.ID, Reason: ReasonCheckpointMismatch,
				Detail: fmt.Sprintf("the chain at seq %d has hash %s, but the checkpoint signed at %s says %s: the chain was rewritten (an event at seq %d..%d changed and the hashes after it were recomputed, or the tail was cut and written again)",
					ev.Seq, short(ev.Hash), c.Time.Format(time.RFC3339), short(c.Hash), v.good+1, ev.Seq)})
		}
		v.rep.Checkpoints++
		v.rep.LastCheckpoint = &c
		v.good = ev.Seq
	}
	if v.cutAt > 0 && v.pruneSeq == 0 && ev.Action == ActionAuditPrune && ev.Outcome == OutcomeSuccess {
		if cut, err := strconv.ParseInt(ev.Target, 10, 64); err == nil && cut >= v.cutAt {
			v.pruneSeq = ev.Seq
		}
	}
	v.rep.Events++
	v.rep.LastSeq, v.rep.HeadHash, v.prev = ev.Seq, ev.Hash, ev.Hash
	return true
}

// start checks the first event: seq 1 with no link, or the event after a checkpoint whose hash
// it links to (a retention cut, which Finish checks was recorded); for a tail verifier, the
// event its checkpoint signs (its hash is checked as it is added).
func (v *Verifier) start(ev *Event) bool {
	if v.started {
		return true
	}
	v.started = true
	if v.tail {
		v.rep.FirstSeq = ev.Seq
		v.good = ev.Seq - 1
		if len(v.cps) == 0 || v.cps[0].Seq != ev.Seq {
			want := v.tailSeq()
			return v.fail(Problem{Seq: want, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("the event of the last signed checkpoint (seq %d) is gone: the chain was cut there", want)})
		}
		c := v.cps[0]
		v.rep.StartsAt = &c
		return true
	}
	v.rep.FirstSeq = ev.Seq
	v.good = ev.Seq - 1
	for v.next < len(v.cps) && v.cps[v.next].Seq < ev.Seq-1 {
		v.rep.CheckpointsBeforeStart++
		v.next++
	}
	if ev.Seq == 1 {
		if ev.PrevHash != "" {
			return v.fail(Problem{Seq: 1, EventID: ev.ID, Reason: ReasonPrevHash,
				Detail: fmt.Sprintf("event %s is the first of the chain but links to a hash before it", ev.ID)})
		}
		return true
	}
	var anchors []Checkpoint
	for i := v.next; i < len(v.cps) && v.cps[i].Seq == ev.Seq-1; i++ {
		anchors = append(anchors, v.cps[i])
	}
	for _, c := range anchors {
		if c.Hash == ev.PrevHash {
			v.rep.StartsAt = &c
			v.rep.Checkpoints++
			v.rep.LastCheckpoint = &c
			v.next += len(anchors)
			v.prev = ev.PrevHash
			v.cutAt = ev.Seq - 1
			return true
		}
	}
	if len(anchors) > 0 {
		return v.fail(Problem{Seq: ev.Seq, EventID: ev.ID, Reason: ReasonPrevHash,
			Detail: fmt.Sprintf("the chain starts at seq %d, linked to hash %s, but the checkpoint at seq %d signs %s", ev.Seq, short(ev.PrevHash), ev.Seq-1, short(anchors[0].Hash))})
	}
	return v.fail(Problem{Seq: ev.Seq, EventID: ev.ID, Reason: ReasonUnanchoredStart,
		Detail: fmt.Sprintf("the chain starts at seq %d: the events before it are gone and no signed checkpoint at seq %d vouches for the cut", ev.Seq, ev.Seq-1)})
}

// tailSeq is the seq of a tail verifier's checkpoint (0 when it did not verify).
func (v *Verifier) tailSeq() int64 {
	if len(v.cps) == 0 {
		if v.badCp != nil {
			return v.badCp.Seq
		}
		return 0
	}
	return v.cps[0].Seq
}

// Finish checks what only the end shows (a tail cut before a checkpoint) and returns the
// report.
func (v *Verifier) Finish() Report {
	if v.rep.Problem == nil && v.next < len(v.cps) {
		c := v.cps[len(v.cps)-1] // the furthest: the whole missing tail
		if v.tail && v.rep.Events == 0 {
			v.fail(Problem{Seq: c.Seq, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("the event of the last signed checkpoint (seq %d) is gone: the chain was cut there", c.Seq)})
		} else if v.rep.Events == 0 {
			v.fail(Problem{Seq: 1, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("the chain is empty, but a checkpoint signed at %s covers seq %d", c.Time.Format(time.RFC3339), c.Seq)})
		} else {
			v.fail(Problem{Seq: v.rep.LastSeq + 1, Reason: ReasonTruncated,
				Detail: fmt.Sprintf("the chain ends at seq %d, but a checkpoint signed at %s covers seq %d: events %d..%d were removed",
					v.rep.LastSeq, c.Time.Format(time.RFC3339), c.Seq, v.rep.LastSeq+1, c.Seq)})
		}
	}
	if v.rep.Problem == nil && v.cutAt > 0 {
		switch {
		case v.pruneSeq == 0:
			v.fail(Problem{Seq: v.cutAt + 1, Reason: ReasonUnrecordedCut,
				Detail: fmt.Sprintf("the chain starts at seq %d, but no audit.prune event in it records a retention cut through seq %d: events 1..%d were deleted outside mandate", v.cutAt+1, v.cutAt, v.cutAt)})
		case v.pruneSeq > v.good:
			v.fail(Problem{Seq: v.pruneSeq, Reason: ReasonUnrecordedCut,
				Detail: fmt.Sprintf("the chain starts at seq %d, and the audit.prune event recording that cut (seq %d) is not covered by a signed checkpoint: it may have been written outside mandate", v.cutAt+1, v.pruneSeq)})
		}
	}
	if v.badCp != nil && (v.rep.Problem == nil || v.badCp.Seq < v.rep.Problem.Seq) {
		v.rep.Problem = v.badCp
	}
	v.rep.OK = v.rep.Problem == nil
	v.rep.Duration = time.Since(v.begin)
	v.rep.DurationMS = v.rep.Duration.Milliseconds()
	return v.rep
}

// short is the start of a hash, enough to tell two apart in a sentence.
func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	if h == "" {
		return `""`
	}
	return h
}

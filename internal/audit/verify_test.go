package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

var t0 = time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)

func testKeys(t testing.TB, seeds ...byte) *CheckpointKeys {
	t.Helper()
	var masters [][]byte
	for _, s := range seeds {
		masters = append(masters, bytes.Repeat([]byte{s}, 32))
	}
	k, err := NewCheckpointKeys(masters...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// chain links evs as the store does, from the hash prev on.
func chain(evs []Event, prev string) []Event {
	for i := range evs {
		evs[i].PrevHash = prev
		evs[i].Hash = evs[i].ComputeHash()
		prev = evs[i].Hash
	}
	return evs
}

// newChain is n events, seq 1 to n, with every kind of field set on some.
func newChain(n int) []Event {
	evs := make([]Event, n)
	for i := range evs {
		ev := New(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("req_%d", i), ActionTokenIssue)
		ev.Seq = int64(i + 1)
		ev.ActorType, ev.ActorID, ev.Detail = ActorAgent, "agt_1", fmt.Sprintf("event <%d> & more", i)
		if i%3 == 0 {
			ev.TaskID, ev.Purpose = "tsk_1", "summarise the <quarterly> report"
			ev.Terms = json.RawMessage(`{"scopes":["read"],"budget":{"calls":3}}`)
			ev.Chain = []Link{{AgentID: "agt_0", Handle: "root"}, {AgentID: "agt_1", InstanceKey: "jkt"}}
		}
		if i%4 == 1 {
			ev.Call = &Call{Upstream: "ahrefs", Method: "GET", Path: "/v3/x", Query: []QueryParam{{Name: "q", ValueHash: "h"}}, Status: 200}
		}
		evs[i] = ev
	}
	return chain(evs, "")
}

// sign makes a checkpoint of evs[seq-1] (evs start at seq 1).
func sign(t testing.TB, k *CheckpointKeys, evs []Event, seq int64) Checkpoint {
	t.Helper()
	c, err := k.Sign("https://mandate.example", seq, evs[seq-1].Hash, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func verify(k *CheckpointKeys, evs []Event, cps []Checkpoint) Report {
	var keys *jose.JSONWebKeySet
	if k != nil {
		ks := k.JWKS()
		keys = &ks
	}
	v := NewVerifier(keys, cps)
	for i := range evs {
		if !v.Add(&evs[i]) {
			break
		}
	}
	return v.Finish()
}

func TestCheckpointSignParse(t *testing.T) {
	k := testKeys(t, 1)
	evs := newChain(3)
	c := sign(t, k, evs, 3)
	got, err := ParseCheckpoint(c.JWS, k.JWKS())
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 3 || got.Hash != evs[2].Hash || got.Issuer != "https://mandate.example" || got.KeyID != k.KeyID() || !got.Time.Equal(c.Time) {
		t.Errorf("ParseCheckpoint = %+v, want %+v", got, c)
	}
	// The header a JOSE library reads: EdDSA, the typ, kid = the RFC 7638 thumbprint.
	h, _ := base64.RawURLEncoding.DecodeString(strings.Split(c.JWS, ".")[0])
	var hdr map[string]string
	if err := json.Unmarshal(h, &hdr); err != nil {
		t.Fatal(err)
	}
	jwk := k.JWKS().Keys[0]
	tp, _ := thumbprint(jwk)
	if hdr["alg"] != "EdDSA" || hdr["typ"] != CheckpointType || hdr["kid"] != tp {
		t.Errorf("header = %v, want alg EdDSA, typ %s, kid %s", hdr, CheckpointType, tp)
	}
	// Only the master key signs: another one's checkpoint, or an edited one, does not verify.
	other := sign(t, testKeys(t, 2), evs, 3)
	if _, err := ParseCheckpoint(other.JWS, k.JWKS()); !errors.Is(err, ErrCheckpointSignature) {
		t.Errorf("a checkpoint by another key: %v, want ErrCheckpointSignature", err)
	}
	parts := strings.Split(c.JWS, ".")
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"x","iat":1,"seq":3,"hash":"`+strings.Repeat("0", 64)+`"}`)) + "." + parts[2]
	if _, err := ParseCheckpoint(forged, k.JWKS()); !errors.Is(err, ErrCheckpointSignature) {
		t.Errorf("an edited checkpoint: %v, want ErrCheckpointSignature", err)
	}
}

// A rotation adds a master key in front: the signing key stays, and the published keys hold
// every master key's, so a checkpoint signed by what is then the oldest still verifies.
func TestCheckpointKeysAcrossRotation(t *testing.T) {
	before := testKeys(t, 1)
	after := testKeys(t, 2, 1) // newest first
	if before.KeyID() != after.KeyID() {
		t.Errorf("the signing key changed with a rotation: %s → %s", before.KeyID(), after.KeyID())
	}
	if n := len(after.JWKS().Keys); n != 2 {
		t.Errorf("published %d keys, want 2", n)
	}
	pruned := testKeys(t, 2) // the old master key dropped: its checkpoints verify with a saved JWKS
	c := sign(t, before, newChain(1), 1)
	if _, err := ParseCheckpoint(c.JWS, pruned.JWKS()); err == nil {
		t.Error("a checkpoint verified without its key")
	}
	saved := before.JWKS()
	saved.Keys = append(saved.Keys, pruned.JWKS().Keys...)
	if _, err := ParseCheckpoint(c.JWS, saved); err != nil {
		t.Errorf("with a saved JWKS: %v", err)
	}
}

func TestVerifier(t *testing.T) {
	k := testKeys(t, 1)
	type tc struct {
		evs      []Event
		cps      []Checkpoint
		wantSeq  int64 // 0: verifies
		reason   string
		fromSeq  int64
		startsAt int64
	}
	tests := map[string]func() tc{
		"clean": func() tc {
			evs := newChain(10)
			return tc{evs: evs, cps: []Checkpoint{sign(t, k, evs, 4), sign(t, k, evs, 10)}}
		},
		"clean without checkpoints": func() tc { return tc{evs: newChain(10)} },
		"edited field": func() tc {
			evs := newChain(10)
			evs[4].Detail = "nothing happened"
			return tc{evs: evs, wantSeq: 5, reason: ReasonHash}
		},
		"edited ext field": func() tc {
			evs := newChain(10)
			evs[6].Purpose = "something harmless"
			return tc{evs: evs, wantSeq: 7, reason: ReasonHash}
		},
		"deleted event": func() tc {
			evs := newChain(10)
			return tc{evs: append(evs[:4:4], evs[5:]...), wantSeq: 5, reason: ReasonSeqGap}
		},
		"repeated event": func() tc {
			evs := newChain(10)
			return tc{evs: append(evs[:5:5], evs[4:]...), wantSeq: 5, reason: ReasonSeqRepeat}
		},
		"relinked": func() tc {
			evs := newChain(10)
			evs[3].PrevHash = evs[1].Hash
			return tc{evs: evs, wantSeq: 4, reason: ReasonPrevHash}
		},
		"truncated tail": func() tc {
			evs := newChain(10)
			cps := []Checkpoint{sign(t, k, evs, 10)}
			return tc{evs: evs[:7], cps: cps, wantSeq: 8, reason: ReasonTruncated}
		},
		"truncated to nothing": func() tc {
			evs := newChain(3)
			return tc{evs: nil, cps: []Checkpoint{sign(t, k, evs, 3)}, wantSeq: 1, reason: ReasonTruncated}
		},
		"truncated and written again": func() tc {
			evs := newChain(10)
			cps := []Checkpoint{sign(t, k, evs, 5), sign(t, k, evs, 10)}
			for i := 7; i < 10; i++ {
				evs[i].Detail = "rewritten"
			}
			chain(evs[7:], evs[6].Hash)
			return tc{evs: evs, cps: cps, wantSeq: 10, fromSeq: 6, reason: ReasonCheckpointMismatch}
		},
		"re-hashed after an edit": func() tc {
			evs := newChain(10)
			cps := []Checkpoint{sign(t, k, evs, 2), sign(t, k, evs, 6), sign(t, k, evs, 10)}
			evs[3].Detail = "nothing happened"
			chain(evs, "") // the attacker recomputes every hash with the public algorithm
			return tc{evs: evs, cps: cps, wantSeq: 6, fromSeq: 3, reason: ReasonCheckpointMismatch}
		},
		"forged checkpoint": func() tc {
			evs := newChain(10)
			return tc{evs: evs, cps: []Checkpoint{sign(t, testKeys(t, 9), evs, 8)}, wantSeq: 8, reason: ReasonBadCheckpoint}
		},
		"pruned, starts after a checkpoint": func() tc {
			evs := prunedChain(10, 7, "5")
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 2), sign(t, k, evs, 5), sign(t, k, evs, 10)}, startsAt: 5}
		},
		"pruned in steps, stopped half way": func() tc {
			evs := prunedChain(12, 9, "6")
			return tc{evs: evs[3:], cps: []Checkpoint{sign(t, k, evs, 3), sign(t, k, evs, 6), sign(t, k, evs, 9)}, startsAt: 3}
		},
		// Deleting the head up to a checkpoint is a cut nobody recorded (red team: it passed as
		// retention, with retention off).
		"head deleted up to a checkpoint, no record of the cut": func() tc {
			evs := newChain(10)
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 2), sign(t, k, evs, 5), sign(t, k, evs, 10)}, wantSeq: 6, reason: ReasonUnrecordedCut}
		},
		"head deleted past the recorded cut": func() tc {
			evs := prunedChain(10, 8, "3")
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 3), sign(t, k, evs, 5), sign(t, k, evs, 10)}, wantSeq: 6, reason: ReasonUnrecordedCut}
		},
		"record of the cut not covered by a signed checkpoint": func() tc {
			evs := prunedChain(10, 9, "5")
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 5), sign(t, k, evs, 8)}, wantSeq: 9, reason: ReasonUnrecordedCut}
		},
		"head deleted to just after a checkpoint's event": func() tc {
			evs := prunedChain(10, 8, "6")
			return tc{evs: evs[6:], cps: []Checkpoint{sign(t, k, evs, 6), sign(t, k, evs, 10)}, startsAt: 6}
		},
		"head deleted to a checkpoint's own event (off by one)": func() tc {
			evs := prunedChain(10, 8, "6")
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 6), sign(t, k, evs, 10)}, wantSeq: 6, reason: ReasonUnanchoredStart}
		},
		"head deleted, no checkpoint for the cut": func() tc {
			evs := newChain(10)
			return tc{evs: evs[5:], cps: []Checkpoint{sign(t, k, evs, 10)}, wantSeq: 6, reason: ReasonUnanchoredStart}
		},
		"pruned start relinked": func() tc {
			evs := newChain(10)
			cps := []Checkpoint{sign(t, k, evs, 5)}
			evs[5].PrevHash = strings.Repeat("0", 64)
			return tc{evs: evs[5:], cps: cps, wantSeq: 6, reason: ReasonPrevHash}
		},
		"first event links to something": func() tc {
			evs := newChain(3)
			evs[0].PrevHash = "x"
			return tc{evs: evs, wantSeq: 1, reason: ReasonPrevHash}
		},
	}
	for name, mk := range tests {
		t.Run(name, func(t *testing.T) {
			tt := mk()
			rep := verify(k, tt.evs, tt.cps)
			if tt.wantSeq == 0 {
				if !rep.OK || rep.Err() != nil {
					t.Fatalf("report %+v: %v, want OK", rep, rep.Err())
				}
				if tt.startsAt != 0 && (rep.StartsAt == nil || rep.StartsAt.Seq != tt.startsAt) {
					t.Errorf("StartsAt = %+v, want the checkpoint of seq %d", rep.StartsAt, tt.startsAt)
				}
				if want := int64(len(tt.evs)); rep.Events != want {
					t.Errorf("Events = %d, want %d", rep.Events, want)
				}
				return
			}
			if rep.OK || rep.Problem == nil {
				t.Fatalf("verified, want a problem at seq %d (%s)", tt.wantSeq, tt.reason)
			}
			p := rep.Problem
			if p.Seq != tt.wantSeq || p.Reason != tt.reason || p.FromSeq != tt.fromSeq {
				t.Errorf("problem %+v, want seq %d from %d reason %s", p, tt.wantSeq, tt.fromSeq, tt.reason)
			}
			err := rep.Err()
			if !errors.Is(err, ErrChainBroken) || !strings.Contains(err.Error(), fmt.Sprintf("seq %d", tt.wantSeq)) {
				t.Errorf("Err() = %v, want ErrChainBroken naming seq %d", err, tt.wantSeq)
			}
		})
	}
}

// prunedChain is newChain(n) whose event at seq pruneAt is retention's record of a cut through
// seq cut.
func prunedChain(n int, pruneAt int64, cut string) []Event {
	evs := newChain(n)
	ev := &evs[pruneAt-1]
	ev.Action, ev.Outcome, ev.Target, ev.ActorType = ActionAuditPrune, OutcomeSuccess, cut, ActorSystem
	return chain(evs, "")
}

// A tail verifier reads the chain from the event of the last checkpoint on, as the server does
// at every start.
func TestTailVerifier(t *testing.T) {
	k := testKeys(t, 1)
	keys := k.JWKS()
	run := func(evs []Event, cp Checkpoint) Report {
		v := NewTailVerifier(&keys, cp)
		for i := range evs {
			if !v.Add(&evs[i]) {
				break
			}
		}
		return v.Finish()
	}
	evs := newChain(10)
	cp := sign(t, k, evs, 6)
	if rep := run(evs[5:], cp); !rep.OK || rep.StartsAt == nil || rep.StartsAt.Seq != 6 {
		t.Errorf("clean tail: %+v %v", rep, rep.Err())
	}
	for name, tc := range map[string]struct {
		evs     []Event
		wantSeq int64
		reason  string
	}{
		"tail cut before the checkpoint": {evs[:4], 6, ReasonTruncated},
		"tail cut at the checkpoint":     {nil, 6, ReasonTruncated},
		"edited at the checkpoint": {func() []Event {
			e := slices.Clone(evs)
			e[5].Detail = "x"
			e[5].Hash = e[5].ComputeHash()
			return e[5:]
		}(), 6, ReasonCheckpointMismatch},
	} {
		rep := run(tc.evs, cp)
		if rep.OK || rep.Problem.Seq != tc.wantSeq || rep.Problem.Reason != tc.reason {
			t.Errorf("%s: %+v, want seq %d %s", name, rep.Problem, tc.wantSeq, tc.reason)
		}
	}
}

// The store's own check has no keys: checkpoints are taken as given.
func TestVerifierWithoutKeys(t *testing.T) {
	evs := newChain(5)
	rep := verify(nil, evs, []Checkpoint{{Seq: 3, Hash: evs[2].Hash}})
	if !rep.OK || rep.SignaturesChecked || rep.Checkpoints != 1 {
		t.Errorf("report %+v, want OK, 1 checkpoint, signatures not checked", rep)
	}
	rep = verify(nil, evs, []Checkpoint{{Seq: 3, Hash: evs[1].Hash}})
	if rep.OK || rep.Problem.Reason != ReasonCheckpointMismatch {
		t.Errorf("report %+v, want a checkpoint mismatch", rep)
	}
}

// Any change to one field of one event, any deletion and any swap of two events is detected,
// with or without the checkpoints (a re-hash needs them: see TestVerifier).
func TestVerifierDetectsEveryChange(t *testing.T) {
	k := testKeys(t, 1)
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 2000 {
		evs := newChain(12)
		cps := []Checkpoint{sign(t, k, evs, 12)}
		i := r.IntN(len(evs))
		what := ""
		switch r.IntN(4) {
		case 0: // one byte of the event's JSON form, where it still decodes to an event
			b, _ := json.Marshal(evs[i])
			for range 50 {
				c := bytes.Clone(b)
				j := r.IntN(len(c))
				c[j] ^= byte(1 + r.IntN(127))
				var ev Event
				if json.Unmarshal(c, &ev) == nil && !eventsEqual(ev, evs[i]) {
					evs[i], what = ev, fmt.Sprintf("byte %d of event %d", j, i+1)
					break
				}
			}
			if what == "" {
				continue
			}
		case 1:
			what = fmt.Sprintf("delete event %d", i+1)
			evs = append(evs[:i:i], evs[i+1:]...)
		case 2:
			j := (i + 1 + r.IntN(len(evs)-1)) % len(evs)
			what = fmt.Sprintf("swap events %d and %d", i+1, j+1)
			evs[i], evs[j] = evs[j], evs[i]
		case 3:
			what = fmt.Sprintf("time of event %d", i+1)
			evs[i].Time = evs[i].Time.Add(time.Duration(1 + r.IntN(1000)))
		}
		if rep := verify(k, evs, cps); rep.OK {
			t.Fatalf("iteration %d: %s went unnoticed", iter, what)
		}
	}
}

// eventsEqual compares the JSON forms (a change that decodes to the same event is no change).
func eventsEqual(a, b Event) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// An export (JSON lines, checkpoints as lines too) reads back to a chain that verifies: the
// hash covers every field as written, "<" in raw Terms included.
func TestLinesRoundTrip(t *testing.T) {
	k := testKeys(t, 1)
	evs := newChain(20)
	var buf bytes.Buffer
	for i := range evs {
		if err := WriteLine(&buf, evs[i]); err != nil {
			t.Fatal(err)
		}
		if (i+1)%7 == 0 {
			if err := WriteLine(&buf, sign(t, k, evs, int64(i+1))); err != nil {
				t.Fatal(err)
			}
		}
	}
	buf.WriteString("\n" + sign(t, k, evs, 20).JWS + "\n") // a bare JWS line
	var got []Event
	var cps []Checkpoint
	err := ReadLines(&buf, func(ev *Event) error { got = append(got, *ev); return nil },
		func(c Checkpoint) error { cps = append(cps, c); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 20 || len(cps) != 3 {
		t.Fatalf("read %d events and %d checkpoints, want 20 and 3", len(got), len(cps))
	}
	if rep := verify(k, got, cps); !rep.OK || rep.Checkpoints != 3 {
		t.Errorf("report %+v: %v", rep, rep.Err())
	}
	if err := ReadLines(strings.NewReader("{}\n"), func(*Event) error { return nil }, func(Checkpoint) error { return nil }); err == nil ||
		!strings.Contains(err.Error(), "line 1") {
		t.Errorf("a line that is no event: %v, want an error naming line 1", err)
	}
}

func FuzzReadLines(f *testing.F) {
	k := testKeys(f, 1)
	evs := newChain(3)
	var buf bytes.Buffer
	for i := range evs {
		WriteLine(&buf, evs[i])
	}
	WriteLine(&buf, sign(f, k, evs, 3))
	f.Add(buf.String())
	f.Add("eyJhbGciOiJub25lIn0.e30.\n")
	f.Add(`{"checkpoint":"a.b.c"}`)
	// A sink's records, a torn line, members the hash does not cover.
	f.Add(`{"type":"event","seq":1,"hash":"x","id":"evt_1"}` + "\n" + `{"type":"checkpoint","seq":1,"jws":"a.b.c"}` + "\n" + `{"type":"ev` + "\n")
	f.Add(`{"seq":1,"hash":"x","PRINCIPAL_ID":"usr_1","principal_id":"usr_2"}`)
	f.Add(`{"type":"other"}` + "\n" + `{"seq":1,"seq":2,"hash":"h"}`)
	f.Fuzz(func(t *testing.T, s string) {
		ks := k.JWKS()
		v := NewVerifier(&ks, nil)
		var cps []Checkpoint
		var torn []int
		_ = ReadSinkLines(strings.NewReader(s), func(ev *Event) error { v.Add(ev); return nil },
			func(c Checkpoint) error { cps = append(cps, c); return nil }, func(n int) { torn = append(torn, n) })
		v.Finish()
		lines := strings.Count(s, "\n") + 1
		for i, n := range torn {
			if n < 1 || n > lines || (i > 0 && n <= torn[i-1]) {
				t.Fatalf("torn lines %v of a text of %d lines", torn, lines)
			}
		}
		for _, c := range cps {
			if pc, err := ParseCheckpoint(c.JWS, ks); err == nil && pc.Seq != c.Seq {
				t.Fatalf("a checkpoint reads as seq %d and verifies as seq %d", c.Seq, pc.Seq)
			}
		}
	})
}

// A sink delivers at least once: an event sent again (same seq, same hash, matching it) is
// dropped; an event of a seen seq with other content is not, and the verifier names it.
func TestRedeliveries(t *testing.T) {
	k := testKeys(t, 1)
	evs := newChain(10)
	var d Redeliveries
	var fed []Event
	for _, i := range []int{0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9} {
		if ev := evs[i]; !d.Again(&ev) {
			fed = append(fed, ev)
		}
	}
	if d.Dropped != 4 || len(fed) != 10 {
		t.Fatalf("dropped %d, passed %d; want 4 and 10", d.Dropped, len(fed))
	}
	if rep := verify(k, fed, []Checkpoint{sign(t, k, evs, 10)}); !rep.OK {
		t.Errorf("after dropping redeliveries: %v", rep.Err())
	}
	forged := evs[2]
	forged.Detail = "nothing happened"
	forged.Hash = forged.ComputeHash()
	d = Redeliveries{}
	fed = nil
	for _, ev := range []Event{evs[0], evs[1], evs[2], evs[3], forged} {
		if !d.Again(&ev) {
			fed = append(fed, ev)
		}
	}
	if rep := verify(k, fed, nil); rep.OK || rep.Problem.Seq != 3 || rep.Problem.Reason != ReasonSeqRepeat {
		t.Errorf("a different event of a seen seq: %+v, want seq_repeat at 3", rep.Problem)
	}
}

// A file sink's export verifies as written: {"type":"event",…} and {"type":"checkpoint",…,"jws"}
// records, a torn line skipped and named; an event line with a member the hash does not cover
// (unknown, in another case, or twice) is refused, since a reader of the file would show it.
func TestSinkFileLines(t *testing.T) {
	k := testKeys(t, 1)
	evs := newChain(6)
	cp := sign(t, k, evs, 4)
	var buf bytes.Buffer
	for i := range evs {
		line, err := json.Marshal(evs[i])
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString(`{"type":"event",` + string(line[1:]) + "\n")
		if i == 3 {
			fmt.Fprintf(&buf, `{"type":"checkpoint","seq":4,"hash":%q,"time":"2031-01-01T00:00:00Z","jws":%q}`+"\n", cp.Hash, cp.JWS)
			buf.WriteString(`{"type":"event","id":"evt_torn","se` + "\n") // a crash mid-write
		}
	}
	keys := k.JWKS()
	var cps []Checkpoint
	var got []Event
	var torn []int
	err := ReadSinkLines(bytes.NewReader(buf.Bytes()), func(ev *Event) error { got = append(got, *ev); return nil },
		func(c Checkpoint) error { cps = append(cps, c); return nil }, func(n int) { torn = append(torn, n) })
	if err != nil || len(got) != 6 || len(cps) != 1 || !slices.Equal(torn, []int{6}) {
		t.Fatalf("read %d events, %d checkpoints, torn %v: %v", len(got), len(cps), torn, err)
	}
	v := NewVerifier(&keys, cps)
	for i := range got {
		v.Add(&got[i])
	}
	if rep := v.Finish(); !rep.OK || rep.Checkpoints != 1 {
		t.Errorf("the sink's export: %+v %v", rep, rep.Err())
	}
	if err := ReadLines(bytes.NewReader(buf.Bytes()), func(*Event) error { return nil }, func(Checkpoint) error { return nil }); err == nil || !strings.Contains(err.Error(), "line 6") {
		t.Errorf("a torn line read strictly: %v, want an error naming line 6", err)
	}
	line, _ := json.Marshal(evs[0])
	for name, extra := range map[string]string{"unknown": `"approved_by":"ceo",`, "other case": `"PRINCIPAL_ID":"usr_forged",`, "twice": `"detail":"x",`} {
		bad := "{" + extra + string(line[1:]) + "\n"
		err := ReadLines(strings.NewReader(bad), func(*Event) error { return nil }, func(Checkpoint) error { return nil })
		if err == nil {
			t.Errorf("%s member: the line was read", name)
		}
	}
}

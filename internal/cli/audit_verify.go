package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
)

// mandate audit verify and mandate audit checkpoints: tamper evidence an auditor can check
// (docs/audit-verify.md).

func newAuditVerifyCmd() *cobra.Command {
	var f struct {
		checkpoints, keys []string
		events            string
	}
	cmd := &cobra.Command{
		Use:   "verify [--checkpoints FILE]... [--events FILE --keys JWKS_FILE]",
		Short: "Check the audit chain: links, hashes, sequence and signed checkpoints",
		Long: `Check the audit hash chain: every sequence number once and in order, every event linked to
the one before it and matching its hash, every checkpoint signed by a published key, and the
chain at each checkpoint's seq having the hash it signs. Checkpoints kept outside the database
(--checkpoints, saved with mandate audit checkpoints) also catch a truncated tail and a chain
whose hashes were all recomputed after an edit, which anyone with database access can do.

Without --events the server checks its own events (an admin); with --events it runs offline,
without a server, on an export (JSON lines of events, checkpoint lines allowed) and the
published checkpoint keys (--keys, a JWKS saved with mandate audit checkpoints --keys-out or
from GET /v1/audit/checkpoint-keys).

It exits non-zero when the chain is broken, naming the first bad sequence number.`,
		Example: "  mandate audit verify\n  mandate audit verify --checkpoints audit-checkpoints.jsonl\n" +
			"  mandate audit verify --events audit-events.jsonl --checkpoints audit-checkpoints.jsonl --keys audit-keys.json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			outside, err := readCheckpointFiles(f.checkpoints)
			if err != nil {
				return err
			}
			keys, err := readKeyFiles(f.keys)
			if err != nil {
				return err
			}
			var res api.VerifyJSON
			if f.events != "" {
				if len(f.keys) == 0 {
					return errors.New("--events needs --keys: the JWKS the checkpoints verify with (mandate audit checkpoints --keys-out FILE, or GET /v1/audit/checkpoint-keys)")
				}
				res.Keys = keys
				if res.Report, err = verifyFile(f.events, outside, keys); err != nil {
					return err
				}
				if wantJSON(cmd) {
					if err := printJSON(cmd.OutOrStdout(), res); err != nil {
						return err
					}
				}
			} else {
				req := api.VerifyRequest{Keys: keys}
				for _, c := range outside {
					req.Checkpoints = append(req.Checkpoints, c.JWS)
				}
				if _, err := callAPI(cmd, http.MethodPost, "/v1/audit/verify", req, &res); err != nil {
					return err
				}
			}
			if !wantJSON(cmd) {
				printReport(cmd.OutOrStdout(), res, len(outside))
			}
			return res.Report.Err()
		},
	}
	addJSONFlag(cmd)
	cmd.Flags().String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	cmd.Flags().StringArrayVar(&f.checkpoints, "checkpoints", nil, "a file of checkpoints kept outside the database (JSON lines or one JWS a line); repeatable")
	cmd.Flags().StringVar(&f.events, "events", "", "verify offline: a JSON-lines export of the events, in seq order")
	cmd.Flags().StringArrayVar(&f.keys, "keys", nil, "a JWKS of checkpoint keys (GET /v1/audit/checkpoint-keys); repeatable; required with --events")
	return cmd
}

// printReport writes what the verification found, in sentences.
func printReport(w io.Writer, res api.VerifyJSON, outside int) {
	r := res.Report
	state := "OK"
	if !r.OK {
		state = "BROKEN"
	}
	fmt.Fprintf(w, "audit chain %s: %d events", state, r.Events)
	if r.Events > 0 {
		fmt.Fprintf(w, ", seq %d to %d", r.FirstSeq, r.LastSeq)
	}
	sig := "signatures checked"
	if !r.SignaturesChecked {
		sig = "signatures not checked"
	}
	fmt.Fprintf(w, ", %d checkpoints matched (%s; %d given from outside), in %v\n", r.Checkpoints, sig, outside,
		time.Duration(r.DurationMS)*time.Millisecond) // from the server, only the milliseconds travel
	if r.HeadHash != "" {
		fmt.Fprintf(w, "head: seq %d hash %s\n", r.LastSeq, termSafe(r.HeadHash))
	}
	if c := r.StartsAt; c != nil {
		fmt.Fprintf(w, "starts after retention: from seq %d, vouched for by the checkpoint of seq %d signed %s\n", r.FirstSeq, c.Seq, c.Time.Format(time.RFC3339))
	}
	if r.CheckpointsBeforeStart > 0 {
		fmt.Fprintf(w, "%d checkpoints are of events retention removed (not checked)\n", r.CheckpointsBeforeStart)
	}
	if c := r.LastCheckpoint; c != nil {
		fmt.Fprintf(w, "last checkpoint: seq %d signed %s by key %s\n", c.Seq, c.Time.Format(time.RFC3339), termSafe(c.KeyID))
	}
	if len(r.TornLines) > 0 {
		fmt.Fprintf(w, "skipped %d torn lines (not JSON: a write cut by a crash; the sink sends such a record again), first at line %d\n", len(r.TornLines), r.TornLines[0])
	}
	if p := r.Problem; p != nil {
		fmt.Fprintf(w, "FIRST BAD SEQ %d (%s): %s\n", p.Seq, termSafe(p.Reason), termSafe(p.Detail))
	}
	var kids []string
	for _, k := range res.Keys.Keys {
		kids = append(kids, termSafe(k.KeyID))
	}
	fmt.Fprintf(w, "checkpoint keys: %s\n", strings.Join(kids, ", "))
}

// verifyFile verifies an export offline. Its checkpoint lines join the outside ones; a first
// pass collects them, so the verifier knows every checkpoint before the first event.
func verifyFile(path string, outside []audit.Checkpoint, keys jose.JSONWebKeySet) (audit.Report, error) {
	inFile, err := readCheckpoints(path, true)
	if err != nil {
		return audit.Report{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return audit.Report{}, err
	}
	defer f.Close()
	v := audit.NewVerifier(&keys, append(outside, inFile...))
	var again audit.Redeliveries // a sink delivers at least once: the same event twice is no tampering
	var torn []int
	err = audit.ReadSinkLines(f, func(ev *audit.Event) error {
		if !again.Again(ev) {
			v.Add(ev)
		}
		return nil
	}, func(audit.Checkpoint) error { return nil }, func(n int) { torn = append(torn, n) })
	if err != nil {
		return audit.Report{}, fmt.Errorf("--events %s: %w", path, err)
	}
	rep := v.Finish()
	rep.TornLines = torn
	// A sink's crash tears at most the line it was writing, and the next line is that record
	// sent again: torn lines one after another, or a file of no event, are not a crash.
	var p *audit.Problem
	for i := 1; i < len(torn) && p == nil; i++ {
		if torn[i] == torn[i-1]+1 {
			p = &audit.Problem{Seq: rep.LastSeq + 1, Reason: "unreadable",
				Detail: fmt.Sprintf("lines %d and %d of %s are both not JSON: a crash tears one line, which the sink then sends again", torn[i-1], torn[i], path)}
		}
	}
	if p == nil && rep.Events == 0 && rep.Problem == nil {
		p = &audit.Problem{Seq: 1, Reason: "unreadable", Detail: fmt.Sprintf("%s holds no audit event", path)}
	}
	if p != nil && rep.Problem == nil {
		rep.Problem, rep.OK = p, false
	}
	return rep, nil
}

func readCheckpointFiles(paths []string) ([]audit.Checkpoint, error) {
	var all []audit.Checkpoint
	for _, p := range paths {
		cps, err := readCheckpoints(p, false)
		if err != nil {
			return nil, err
		}
		all = append(all, cps...)
	}
	return all, nil
}

// readCheckpoints reads the checkpoint lines of a file. In an events file (skipEvents) the
// event lines are skipped without being decoded.
func readCheckpoints(path string, skipEvents bool) ([]audit.Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if skipEvents {
		r = checkpointLines(f)
	}
	var cps []audit.Checkpoint
	var torn func(int) // a checkpoints file given with --checkpoints is read strictly
	if skipEvents {
		torn = func(int) {} // the events pass counts them
	}
	err = audit.ReadSinkLines(r, func(ev *audit.Event) error {
		return fmt.Errorf("an audit event (seq %d) in a checkpoints file: give the events with --events", ev.Seq)
	}, func(c audit.Checkpoint) error {
		cps = append(cps, c)
		return nil
	}, torn)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cps, nil
}

// checkpointLines passes on only the lines of r that may be checkpoints (they name the member
// "checkpoint", or are not JSON objects), so a first pass over an export decodes no event; every
// other line becomes an empty one, so errors name the file's own line numbers.
func checkpointLines(r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) > 0 && line[0] == '{' && !bytes.Contains(line, []byte(`"checkpoint"`)) {
				line = nil
			}
			if _, err := pw.Write(append(line, '\n')); err != nil {
				return
			}
		}
		pw.CloseWithError(sc.Err())
	}()
	return pr
}

func readKeyFiles(paths []string) (jose.JSONWebKeySet, error) {
	var all jose.JSONWebKeySet
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return all, err
		}
		var ks jose.JSONWebKeySet
		if err := json.Unmarshal(raw, &ks); err != nil {
			return all, fmt.Errorf("--keys %s: not a JWKS: %w", p, err)
		}
		all.Keys = append(all.Keys, ks.Keys...)
	}
	return all, nil
}

func newAuditCheckpointsCmd() *cobra.Command {
	var out, keysOut string
	cmd := &cobra.Command{
		Use:   "checkpoints [--out FILE] [--keys-out FILE]",
		Short: "Save the audit chain's signed checkpoints (and their keys) outside the database",
		Long: `Save the audit chain's signed checkpoints, oldest first, as JSON lines: to standard output, or
appended to --out, which keeps every line it has and gains only the checkpoints after its last
(run it from cron: a copy the database cannot rewrite). The server first signs a checkpoint of
the head, if it moved, so the copy covers every event so far. --keys-out writes the JWKS they
verify with, for mandate audit verify --keys. Needs an admin.`,
		Example: "  mandate audit checkpoints --out audit-checkpoints.jsonl --keys-out audit-keys.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var after int64
			w := cmd.OutOrStdout()
			if out != "" {
				have, err := readCheckpoints(out, false)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("--out: %w", err)
				}
				for _, c := range have {
					after = max(after, c.Seq)
				}
				f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
				if err != nil {
					return fmt.Errorf("--out: %w", err)
				}
				defer f.Close()
				w = f
			}
			// Sign the head first, so the copy covers every event so far.
			if _, err := callAPIQuiet(cmd, http.MethodPost, "/v1/audit/checkpoints", nil); err != nil {
				return err
			}
			n := 0
			for {
				var page api.CheckpointsJSON
				q := url.Values{"after": {fmt.Sprint(after)}, "limit": {"1000"}}
				if _, err := callAPIQuiet(cmd, http.MethodGet, "/v1/audit/checkpoints?"+q.Encode(), &page); err != nil {
					return err
				}
				for _, c := range page.Checkpoints {
					if err := audit.WriteLine(w, c); err != nil {
						return fmt.Errorf("write checkpoints: %w", err)
					}
					after = c.Seq
					n++
				}
				if page.Next == 0 {
					break
				}
			}
			if keysOut != "" {
				var keys jose.JSONWebKeySet
				if _, err := callAPIQuiet(cmd, http.MethodGet, "/v1/audit/checkpoint-keys", &keys); err != nil {
					return err
				}
				b, err := json.MarshalIndent(keys, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(keysOut, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("--keys-out: %w", err)
				}
			}
			if out != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d new checkpoints appended to %s\n", n, termSafe(out))
			}
			return nil
		},
	}
	cmd.Flags().String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	cmd.Flags().StringVar(&out, "out", "", "append the checkpoints not yet in this file to it (created 0600)")
	cmd.Flags().StringVar(&keysOut, "keys-out", "", "write the JWKS of the checkpoint keys to this file")
	return cmd
}

// callAPIQuiet calls the API and decodes the answer, never printing it (the command has no
// --json: what it writes is the data).
func callAPIQuiet(cmd *cobra.Command, method, path string, out any) ([]byte, error) {
	c, err := managementClient(cmd)
	if err != nil {
		return nil, err
	}
	return c.do(cmd.Context(), method, path, nil, out)
}

package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// JSON lines: the export form of the trail. Each line is one Event as JSON, or one Checkpoint
// (a line with a "checkpoint" member holding the compact JWS), or a bare compact JWS (a
// checkpoints file of one JWS a line), or a sink's record ({"type":"event", …the event} or
// {"type":"checkpoint", …, "jws": …}). One file may hold them all, in any mix.

// maxLine bounds one line of an export (an event is a few KiB at most).
const maxLine = 4 << 20

// WriteLine writes v as one JSON line without HTML escaping: an event's Terms are raw JSON,
// kept byte for byte, and its hash covers them as written ("<" must stay "<").
func WriteLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// ReadLines reads a JSON-lines export, calling event for each event line and checkpoint for
// each checkpoint line, in file order. Blank lines are skipped. A line that is neither names
// its line number.
func ReadLines(r io.Reader, event func(*Event) error, checkpoint func(Checkpoint) error) error {
	return ReadSinkLines(r, event, checkpoint, nil)
}

// ReadSinkLines is ReadLines for a file a sink wrote: a line that is not JSON (torn by a crash
// mid-write; the sink then sends that record again on a line of its own) is passed to torn with
// its line number instead of failing the read. Skipping it loses nothing a verifier relies on:
// a record really missing shows as a gap in the chain. torn nil: such a line is an error.
func ReadSinkLines(r io.Reader, event func(*Event) error, checkpoint func(Checkpoint) error, torn func(line int)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(br)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if torn != nil && t[0] == '{' && !json.Valid(t) {
				torn(n)
				continue
			}
			if perr := parseLine(t, event, checkpoint); perr != nil {
				return fmt.Errorf("line %d: %w", n, perr)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("longer than %d bytes", maxLine)
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}

func parseLine(t []byte, event func(*Event) error, checkpoint func(Checkpoint) error) error {
	if t[0] != '{' {
		c, err := DecodeCheckpoint(strings.TrimSpace(string(t)))
		if err != nil {
			return fmt.Errorf("neither a JSON object nor a compact JWS: %w", err)
		}
		return checkpoint(c)
	}
	var probe struct {
		Type       *string `json:"type"`
		Checkpoint *string `json:"checkpoint"`
		JWS        *string `json:"jws"`
	}
	if err := json.Unmarshal(t, &probe); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	jws := probe.Checkpoint
	if probe.Type != nil {
		switch *probe.Type {
		case "checkpoint": // a sink's checkpoint record
			if jws = probe.JWS; jws == nil {
				return errors.New(`a checkpoint record without its "jws"`)
			}
		case "event": // a sink's event record: the event's own members beside "type"
		default:
			return fmt.Errorf("a record of type %q: want event or checkpoint", *probe.Type)
		}
	}
	if jws != nil {
		c, err := DecodeCheckpoint(*jws)
		if err != nil {
			return err
		}
		return checkpoint(c)
	}
	if err := onlyEventMembers(t); err != nil {
		return err
	}
	var ev Event
	if err := json.Unmarshal(t, &ev); err != nil {
		return fmt.Errorf("not an audit event: %w", err)
	}
	if ev.Seq < 1 || ev.Hash == "" {
		return errors.New("not an audit event of the chain: it has no seq or hash")
	}
	return event(&ev)
}

// eventMembers are the JSON member names of Event, spelled exactly, and a sink's "type".
var eventMembers = func() map[string]bool {
	m := map[string]bool{"type": true}
	t := reflect.TypeFor[Event]()
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			m[name] = true
		}
	}
	return m
}()

// onlyEventMembers refuses an event line with a member Event does not have, a member spelled
// in another case (encoding/json would take "PRINCIPAL_ID" for principal_id), or a member given
// twice (it would keep the last): the hash covers only what decodes, so anything else on the
// line would be shown by a reader of the file without being vouched for by the chain.
func onlyEventMembers(t []byte) error {
	dec := json.NewDecoder(bytes.NewReader(t))
	if _, err := dec.Token(); err != nil { // {
		return fmt.Errorf("not JSON: %w", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
		name, _ := tok.(string)
		switch {
		case !eventMembers[name]:
			return fmt.Errorf("member %q is not a field of an audit event", name)
		case seen[name]:
			return fmt.Errorf("member %q is given twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
	}
	return nil
}

// redeliveryWindow is how far back Redeliveries remembers: a sink resends at most a batch.
const redeliveryWindow = 1 << 14

// Redeliveries recognises an event a sink delivered again (delivery is at least once): one of a
// seq already seen, with the hash seen there, which it matches. Anything else comes through,
// for the verifier to judge. The zero value is ready.
type Redeliveries struct {
	seen    [redeliveryWindow]struct{ hash string }
	last    int64
	Dropped int64 // how many Again recognised
}

// Again reports whether ev is a redelivery to drop; else it remembers ev.
func (d *Redeliveries) Again(ev *Event) bool {
	slot := &d.seen[uint64(ev.Seq)%redeliveryWindow]
	if ev.Seq <= d.last && ev.Seq > d.last-redeliveryWindow && slot.hash != "" && slot.hash == ev.Hash && ev.ComputeHash() == ev.Hash {
		d.Dropped++
		return true
	}
	if ev.Seq > d.last {
		d.last = ev.Seq
	}
	slot.hash = ev.Hash
	return false
}

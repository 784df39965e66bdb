package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// JSON lines: the export form of the trail. Each line is one Event as JSON, or one Checkpoint
// (a line with a "checkpoint" member holding the compact JWS), or a bare compact JWS (a
// checkpoints file of one JWS a line). One file may hold both, in any mix.

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
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(br)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
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
		Checkpoint *string `json:"checkpoint"`
	}
	if err := json.Unmarshal(t, &probe); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if probe.Checkpoint != nil {
		c, err := DecodeCheckpoint(*probe.Checkpoint)
		if err != nil {
			return err
		}
		return checkpoint(c)
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

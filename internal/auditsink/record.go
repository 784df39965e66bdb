// Package auditsink ships the audit trail out of the database: one exporter per configured sink
// reads the chain by cursor (its sequence numbers), delivers a batch, and only then moves the
// sink's cursor, kept in the database. A sink that is down loses nothing: the exporter backs off
// and re-sends from its cursor, and after a restart it goes on from the saved cursor. Delivery is
// at least once, in sequence order: a crash between a delivery and the cursor's save sends that
// batch again, so receivers de-duplicate by seq (every record carries seq, id and hash).
//
// Sinks: JSON lines appended to a file, RFC 5424 syslog over TCP or TLS (RFC 6587 octet
// counting, RFC 5425), and an HMAC-signed HTTP webhook. Signed checkpoints of the chain head,
// when the server makes them, go into the same stream right after the event they cover, so a
// copy of the trail and of its checkpoints lives outside the database (docs/audit-sinks.md).
package auditsink

import (
	"context"
	"encoding/json"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Record types, the "type" of every record a sink writes.
const (
	TypeEvent      = "event"
	TypeCheckpoint = "checkpoint"
)

// Checkpoint is a signed statement of the chain head: the event with sequence number Seq has hash
// Hash. JWS is the compact JWS the server signed it with; Time is when it was signed.
type Checkpoint struct {
	Seq  int64     `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	JWS  string    `json:"jws"`
}

// Checkpoints reads the checkpoints of the chain head made so far. It is optional: without one,
// sinks carry events only. The exporter keeps, per sink, the Seq of the last checkpoint it
// delivered, so checkpoints must be made in Seq order (none covers an earlier event than one
// made before it); of several made for one Seq, the sinks carry those returned together.
type Checkpoints interface {
	// CheckpointsAfter returns the checkpoints whose Seq is greater than seq, in Seq order.
	CheckpointsAfter(ctx context.Context, seq int64) ([]Checkpoint, error)
}

// Record is one item of the exported stream: an event or a checkpoint, never both.
type Record struct {
	Event      *audit.Event
	Checkpoint *Checkpoint
}

// Seq is the sequence number the record is about: the event's, or the one the checkpoint covers.
func (r Record) Seq() int64 {
	if r.Checkpoint != nil {
		return r.Checkpoint.Seq
	}
	return r.Event.Seq
}

// Type is TypeEvent or TypeCheckpoint.
func (r Record) Type() string {
	if r.Checkpoint != nil {
		return TypeCheckpoint
	}
	return TypeEvent
}

// MarshalJSON writes the record as one JSON object: the event's own schema (docs/audit.md) or the
// checkpoint's fields, with "type" first.
func (r Record) MarshalJSON() ([]byte, error) {
	if r.Checkpoint != nil {
		return json.Marshal(struct {
			Type string `json:"type"`
			*Checkpoint
		}{TypeCheckpoint, r.Checkpoint})
	}
	return json.Marshal(struct {
		Type string `json:"type"`
		*audit.Event
	}{TypeEvent, r.Event})
}

// UnmarshalJSON reads what MarshalJSON writes (for receivers written in Go, and the tests).
func (r *Record) UnmarshalJSON(b []byte) error {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return err
	}
	*r = Record{}
	if head.Type == TypeCheckpoint {
		r.Checkpoint = new(Checkpoint)
		return json.Unmarshal(b, r.Checkpoint)
	}
	r.Event = new(audit.Event)
	return json.Unmarshal(b, r.Event)
}

// Sink delivers batches of records somewhere outside the database.
type Sink interface {
	// Name names the sink in metrics, logs and its saved cursor; it holds no secret.
	Name() string
	// Deliver delivers every record of batch, in order, or returns an error: then the whole
	// batch is delivered again later (some of it may have arrived).
	Deliver(ctx context.Context, batch []Record) error
	// Close releases the sink's connections and files.
	Close() error
}

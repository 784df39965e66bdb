package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// The hash chain: every event's Hash is ChainHash(PrevHash, Canonical(ev)), and its PrevHash is
// the Hash of the event before it (Seq - 1), "" for the first. The canonical form is defined here,
// not by a store, so a chain can be checked wherever its events are: in the database, in an
// export, in a sink's copy.

// ChainHash is hex(SHA-256(prevHash || "\n" || canonical)).
func ChainHash(prevHash string, canonical []byte) string {
	h := sha256.New()
	h.Write([]byte(prevHash))
	h.Write([]byte{'\n'})
	h.Write(canonical)
	return hex.EncodeToString(h.Sum(nil))
}

// ComputeHash is the hash ev must have, linked to ev.PrevHash.
func (ev *Event) ComputeHash() string { return ChainHash(ev.PrevHash, Canonical(ev)) }

// Upstream is the upstream of a proxied call, "" for any other event.
func (ev *Event) Upstream() string {
	if ev.Call == nil {
		return ""
	}
	return ev.Call.Upstream
}

// hashedEvent is the canonical form of an event that its hash covers: every field except Seq,
// PrevHash and Hash, keys in lexical order, encoded by encoding/json without HTML escaping and
// without a trailing newline. Time is RFC 3339 UTC with nanoseconds ("0001-01-01T00:00:00Z" for
// the zero time). Changing this changes every hash: don't, without a migration that marks where
// the new form starts. The fields added later (source, count, first, last: migration 0006;
// client_request_id, ext, grant_id, task_id, upstream: 0008) are left out when empty, so every
// event written before them keeps its form and hash, and every event that has them is covered.
type hashedEvent struct {
	Action          string          `json:"action"`
	ActorID         string          `json:"actor_id"`
	ActorType       string          `json:"actor_type"`
	AgentID         string          `json:"agent_id"`
	ClientRequestID string          `json:"client_request_id,omitempty"`
	Count           int64           `json:"count,omitempty"`
	Detail          string          `json:"detail"`
	Ext             json.RawMessage `json:"ext,omitempty"`
	First           string          `json:"first,omitempty"`
	GrantID         string          `json:"grant_id,omitempty"`
	ID              string          `json:"id"`
	Last            string          `json:"last,omitempty"`
	Outcome         string          `json:"outcome"`
	PrincipalID     string          `json:"principal_id"`
	Reason          string          `json:"reason"`
	RequestID       string          `json:"request_id"`
	Source          string          `json:"source,omitempty"`
	Target          string          `json:"target"`
	TaskID          string          `json:"task_id,omitempty"`
	Time            string          `json:"time"`
	TokenID         string          `json:"token_id"`
	Upstream        string          `json:"upstream,omitempty"`
}

// eventExt is what an event carries beyond the fields of hashedEvent: one JSON object, which a
// store may keep in one column (Ext). Keys are in lexical order.
type eventExt struct {
	ActorHandle  string          `json:"actor_handle,omitempty"`
	Addr         string          `json:"addr,omitempty"`
	AgentDID     string          `json:"agent_did,omitempty"`
	Call         *Call           `json:"call,omitempty"`
	Cause        string          `json:"cause,omitempty"`
	Chain        []Link          `json:"chain,omitempty"`
	InstanceKey  string          `json:"instance_key,omitempty"`
	KeyJKT       string          `json:"key_jkt,omitempty"`
	ParentTaskID string          `json:"parent_task_id,omitempty"`
	Purpose      string          `json:"purpose,omitempty"`
	Resources    []string        `json:"resources,omitempty"`
	Scopes       []string        `json:"scopes,omitempty"`
	Terms        json.RawMessage `json:"terms,omitempty"`
	UserAgent    string          `json:"user_agent,omitempty"`
}

// Ext is the canonical JSON of what ev carries beyond hashedEvent's other fields, or nil when
// it carries nothing more. Terms that are not valid JSON are kept as a JSON string, so Ext never
// fails and the event still verifies as written.
func Ext(ev *Event) []byte {
	x := eventExt{ActorHandle: ev.ActorHandle, Addr: ev.Addr, AgentDID: ev.AgentDID, Call: ev.Call, Cause: ev.Cause,
		Chain: ev.Chain, InstanceKey: ev.InstanceKey, KeyJKT: ev.KeyJKT, ParentTaskID: ev.ParentTaskID,
		Purpose: ev.Purpose, Resources: ev.Resources, Scopes: ev.Scopes, Terms: ev.Terms, UserAgent: ev.UserAgent}
	if len(x.Terms) > 0 {
		// Terms are hashed in their canonical form, so they verify however they were re-encoded
		// on the way (an encoder that escapes HTML, another key order), and bytes that are not
		// JSON are a JSON string of them: Ext never fails.
		x.Terms = canonicalJSON(x.Terms)
	}
	b := marshalCanonical(x)
	if string(b) == "{}" {
		return nil
	}
	return b
}

// DecodeExt fills ev from ext, the output of Ext.
func DecodeExt(ev *Event, ext []byte) error {
	if len(ext) == 0 {
		return nil
	}
	var x eventExt
	if err := json.Unmarshal(ext, &x); err != nil {
		return fmt.Errorf("audit event %s: stored ext is not JSON: %w", ev.ID, err)
	}
	ev.ActorHandle, ev.Addr, ev.AgentDID, ev.Call, ev.Cause = x.ActorHandle, x.Addr, x.AgentDID, x.Call, x.Cause
	ev.Chain, ev.InstanceKey, ev.KeyJKT, ev.ParentTaskID = x.Chain, x.InstanceKey, x.KeyJKT, x.ParentTaskID
	ev.Purpose, ev.Resources, ev.Scopes, ev.Terms, ev.UserAgent = x.Purpose, x.Resources, x.Scopes, x.Terms, x.UserAgent
	return nil
}

// Canonical is the canonical form of ev that its hash covers (see hashedEvent).
func Canonical(ev *Event) []byte { return CanonicalWithExt(ev, Ext(ev)) }

// CanonicalWithExt is Canonical with ext = Ext(ev) already made: a store that keeps ext in a
// column encodes it once per event, not once for the hash and again for the column.
func CanonicalWithExt(ev *Event, ext []byte) []byte {
	return marshalCanonical(hashedEvent{
		Action:          ev.Action,
		ActorID:         ev.ActorID,
		ActorType:       ev.ActorType,
		AgentID:         ev.AgentID,
		ClientRequestID: ev.ClientRequestID,
		Count:           ev.Count,
		Detail:          ev.Detail,
		Ext:             ext,
		First:           optionalTime(ev.First),
		GrantID:         ev.GrantID,
		ID:              ev.ID,
		Last:            optionalTime(ev.Last),
		Outcome:         string(ev.Outcome),
		PrincipalID:     ev.PrincipalID,
		Reason:          ev.Reason,
		RequestID:       ev.RequestID,
		Source:          ev.Source,
		Target:          ev.Target,
		TaskID:          ev.TaskID,
		Time:            ev.Time.UTC().Format(time.RFC3339Nano),
		TokenID:         ev.TokenID,
		Upstream:        ev.Upstream(),
	})
}

// optionalTime is the canonical form of a time that may be absent: "" for the zero time.
func optionalTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// marshalCanonical is encoding/json without HTML escaping and without the trailing newline, of
// values that always encode (strings, integers, valid raw JSON).
func marshalCanonical(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic("audit: canonical encoding failed: " + err.Error()) // cannot happen: see Ext
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'})
}

// Normalize puts ev in the form its hash is taken of, so that the event verifies however it is
// carried later: every string valid UTF-8 (encoding/json would write an invalid byte as \ufffd
// and read it back as a different string), and Terms as compact JSON with sorted keys and no
// HTML escaping (an export written by an encoder that escapes <, > and & must not break the
// hash). Stores call it before they hash.
func (ev *Event) Normalize() {
	validUTF8(reflect.ValueOf(ev).Elem())
	if len(ev.Terms) > 0 {
		ev.Terms = canonicalJSON(ev.Terms)
	}
}

// validUTF8 replaces invalid UTF-8 in every string v holds.
func validUTF8(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		if v.CanSet() && !utf8.ValidString(v.String()) {
			v.SetString(strings.ToValidUTF8(v.String(), "\uFFFD"))
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				validUTF8(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.Uint8 { // Terms is handled as JSON
			for i := 0; i < v.Len(); i++ {
				validUTF8(v.Index(i))
			}
		}
	case reflect.Pointer:
		if !v.IsNil() {
			validUTF8(v.Elem())
		}
	}
}

// canonicalJSON re-encodes raw with sorted object keys, numbers as written, and no HTML
// escaping; raw that is not JSON becomes a JSON string of its bytes (valid UTF-8).
func canonicalJSON(raw []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return marshalCanonical(strings.ToValidUTF8(string(raw), "\uFFFD"))
	}
	return marshalCanonical(v)
}

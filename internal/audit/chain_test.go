package audit_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// TestCanonicalEvent pins the canonical form and hash of an event: changing either breaks every
// existing chain, so it must be a deliberate change (see hashedEvent). Every field must reach it.
func TestCanonicalEvent(t *testing.T) {
	ev := audit.Event{
		ID:          "evt_1",
		Time:        time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 3600)),
		RequestID:   "req_1",
		Action:      audit.ActionTokenIssue,
		Outcome:     audit.OutcomeSuccess,
		Reason:      "",
		Detail:      `<b> & "q"`,
		ActorType:   audit.ActorAgent,
		ActorID:     "agt_1",
		PrincipalID: "usr_1",
		AgentID:     "agt_1",
		Target:      "gr_1",
		TokenID:     "jti_1",
		Seq:         7,         // not covered
		PrevHash:    "ignored", // not covered (it is hashed in front of the JSON)
		Hash:        "ignored",
	}
	for _, tc := range []struct {
		name string
		ev   audit.Event
		want string
	}{
		{"full", ev, `{"action":"token.issue","actor_id":"agt_1","actor_type":"agent","agent_id":"agt_1",` +
			`"detail":"<b> & \"q\"","id":"evt_1","outcome":"success","principal_id":"usr_1","reason":"",` +
			`"request_id":"req_1","target":"gr_1","time":"2031-05-06T06:08:09.123456789Z","token_id":"jti_1"}`},
		{"aggregated", func() audit.Event {
			e := ev
			e.Source, e.Count = "2001:db8::/64", 999
			e.First, e.Last = ev.Time.Add(-time.Minute), ev.Time.Add(-time.Second)
			return e
		}(), `{"action":"token.issue","actor_id":"agt_1","actor_type":"agent","agent_id":"agt_1","count":999,` +
			`"detail":"<b> & \"q\"","first":"2031-05-06T06:07:09.123456789Z","id":"evt_1",` +
			`"last":"2031-05-06T06:08:08.123456789Z","outcome":"success","principal_id":"usr_1","reason":"",` +
			`"request_id":"req_1","source":"2001:db8::/64","target":"gr_1","time":"2031-05-06T06:08:09.123456789Z","token_id":"jti_1"}`},
		{"carried", func() audit.Event {
			e := ev
			e.ClientRequestID, e.TaskID, e.GrantID = "client-1", "tsk_2", "gr_1"
			e.ParentTaskID, e.ActorHandle, e.KeyJKT, e.InstanceKey = "tsk_1", "bot", "jkt1", "ik1"
			e.Chain = []audit.Link{{AgentID: "agt_0", Handle: "lead", TaskID: "tsk_1"}, {AgentID: "agt_1", Handle: "bot", InstanceKey: "ik1", TaskID: "tsk_2"}}
			e.Scopes, e.Resources = []string{"mail:send"}, []string{"https://api.example"}
			e.Call = &audit.Call{Upstream: "mail", Method: "POST", Path: "/v3/send", Query: []audit.QueryParam{{Name: "q", ValueHash: "h"}}, Status: 200, BytesIn: 1, BytesOut: 2, DurationUS: 3}
			e.Addr, e.UserAgent, e.Purpose, e.Cause = "127.0.0.1", "ua/1", "weekly report", "evt_0"
			e.Terms = []byte(`{"b":1,"a":[2]}`)
			return e
		}(), `{"action":"token.issue","actor_id":"agt_1","actor_type":"agent","agent_id":"agt_1","client_request_id":"client-1",` +
			`"detail":"<b> & \"q\"","ext":{"actor_handle":"bot","addr":"127.0.0.1","call":{"upstream":"mail","method":"POST",` +
			`"path":"/v3/send","query":[{"name":"q","value_hash":"h"}],"status":200,"bytes_in":1,"bytes_out":2,"duration_us":3},` +
			`"cause":"evt_0","chain":[{"agent_id":"agt_0","handle":"lead","task_id":"tsk_1"},{"agent_id":"agt_1","handle":"bot",` +
			`"instance_key":"ik1","task_id":"tsk_2"}],"instance_key":"ik1","key_jkt":"jkt1","parent_task_id":"tsk_1",` +
			`"purpose":"weekly report","resources":["https://api.example"],"scopes":["mail:send"],"terms":{"a":[2],"b":1},` +
			`"user_agent":"ua/1"},"grant_id":"gr_1","id":"evt_1","outcome":"success","principal_id":"usr_1","reason":"",` +
			`"request_id":"req_1","target":"gr_1","task_id":"tsk_2","time":"2031-05-06T06:08:09.123456789Z","token_id":"jti_1",` +
			`"upstream":"mail"}`},
		{"empty", audit.Event{}, `{"action":"","actor_id":"","actor_type":"","agent_id":"","detail":"","id":"",` +
			`"outcome":"","principal_id":"","reason":"","request_id":"","target":"","time":"0001-01-01T00:00:00Z","token_id":""}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(audit.Canonical(&tc.ev)); got != tc.want {
				t.Errorf("canonicalEvent =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}

	// Computed independently: printf '%s\n%s' "$prev" "$json" | sha256sum
	for _, tc := range []struct{ prev, want string }{
		{"", "8961e6a3df8cc90f6f3d6af4a66a427fd7d28a1bd0cae8ef3b8fa43cc9a08e28"},
		{"prev", "1ab20e88ba164f2da0db23f63a1180074c9236367255383901f6b42d69d5b26a"},
	} {
		if got := audit.ChainHash(tc.prev, audit.Canonical(&ev)); got != tc.want {
			t.Errorf("chainHash(%q, full) = %s, want %s", tc.prev, got, tc.want)
		}
	}
}

// TestEveryFieldHashed: a change to any field of an event but Seq, PrevHash and Hash changes its
// canonical form, so no field can be edited in the store unnoticed; and what Ext stores decodes
// back to the same event, so an event read back from a store or an export verifies.
func TestEveryFieldHashed(t *testing.T) {
	base := audit.Event{ID: "evt_1", Time: time.Unix(1, 2).UTC(), Action: "a"}
	v := reflect.ValueOf(&base).Elem()
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		if name == "Seq" || name == "PrevHash" || name == "Hash" {
			continue
		}
		ev := base
		f := reflect.ValueOf(&ev).Elem().Field(i)
		switch f.Interface().(type) {
		case string, audit.Outcome:
			f.SetString(f.String() + "x")
		case int64:
			f.SetInt(7)
		case time.Time:
			f.Set(reflect.ValueOf(time.Unix(99, 1).UTC()))
		case []string:
			f.Set(reflect.ValueOf([]string{"s"}))
		case []audit.Link:
			f.Set(reflect.ValueOf([]audit.Link{{AgentID: "agt_1"}}))
		case *audit.Call:
			f.Set(reflect.ValueOf(&audit.Call{Upstream: "u"}))
		case json.RawMessage:
			f.Set(reflect.ValueOf(json.RawMessage(`{"k":1}`)))
		default:
			t.Fatalf("field %s: add its type to this test", name)
		}
		if bytes.Equal(audit.Canonical(&ev), audit.Canonical(&base)) {
			t.Errorf("field %s is not covered by the hash", name)
		}
		var back audit.Event
		back.ID = ev.ID
		if err := audit.DecodeExt(&back, audit.Ext(&ev)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(audit.Ext(&back), audit.Ext(&ev)) {
			t.Errorf("field %s does not survive Ext and DecodeExt", name)
		}
	}
}

// TestNormalizedEventVerifiesAnyWayCarried: a normalized event keeps its hash when written by
// encoding/json's default encoder (which escapes <, > and &, and writes invalid UTF-8 as
// \ufffd) and read back, as an export through an HTML-escaping API answer would carry it.
func TestNormalizedEventVerifiesAnyWayCarried(t *testing.T) {
	ev := audit.Event{ID: "evt_1", Time: time.Unix(5, 6).UTC(), Action: "task.start", Detail: "bad \xff byte <b>",
		Purpose: "a & b \xfe", Terms: json.RawMessage(`{"z": "<script>", "a": [1.50, 2e3], "m": {"y": 1, "x": "&"}}`),
		Chain: []audit.Link{{AgentID: "agt_1", Handle: "h\xc3"}}, Call: &audit.Call{Upstream: "u", Path: "/p\xff"}}
	ev.Normalize()
	ev.Hash = ev.ComputeHash()
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`\u003c`)) {
		t.Fatalf("the test needs an HTML-escaped export: %s", raw)
	}
	var back audit.Event
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.ComputeHash(); got != ev.Hash {
		t.Errorf("read back from %s: hash %s, want %s", raw, got, ev.Hash)
	}
	again := back
	again.Normalize()
	if again.ComputeHash() != ev.Hash {
		t.Error("Normalize is not idempotent")
	}
}

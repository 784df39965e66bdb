package auditsink_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want auditsink.Spec
		err  string
	}{
		{in: "file:/var/log/mandate/audit.jsonl", want: auditsink.Spec{Kind: "file", Name: "file:/var/log/mandate/audit.jsonl", Path: "/var/log/mandate/audit.jsonl"}},
		{in: "file:audit.jsonl", want: auditsink.Spec{Kind: "file", Name: "file:audit.jsonl", Path: "audit.jsonl"}},
		{in: "syslog+tcp://logs.example:1514", want: auditsink.Spec{Kind: "syslog+tcp", Name: "syslog+tcp://logs.example:1514", Addr: "logs.example:1514"}},
		{in: "syslog+tcp://logs.example", want: auditsink.Spec{Kind: "syslog+tcp", Name: "syslog+tcp://logs.example:514", Addr: "logs.example:514"}},
		{in: "syslog+tls://[::1]", want: auditsink.Spec{Kind: "syslog+tls", Name: "syslog+tls://[::1]:6514", Addr: "[::1]:6514"}},
		{in: "https://siem.example/hook?key=abc", want: auditsink.Spec{Kind: "webhook", Name: "https://siem.example/hook", URL: "https://siem.example/hook?key=abc"}},
		{in: "http://127.0.0.1:9000/hook", want: auditsink.Spec{Kind: "webhook", Name: "http://127.0.0.1:9000/hook", URL: "http://127.0.0.1:9000/hook"}},
		{in: "http://siem.example/hook", err: "only on loopback"},
		{in: "https://user:pw@siem.example/hook", err: "no user info"},
		{in: "syslog+tcp://logs.example:514/x", err: "nothing more"},
		{in: "syslog+udp://logs.example", err: "unknown kind"},
		{in: "file:", err: "want file:PATH"},
		{in: "/var/log/x", err: "want file:PATH"},
		{in: "", err: "want file:PATH"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := auditsink.ParseSpec(tc.in)
			switch {
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error %v, want one saying %q", err, tc.err)
			case tc.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.err == "" && got != tc.want:
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestFormatSyslog(t *testing.T) {
	ev := &audit.Event{Seq: 7, ID: "evt_1", Action: "token.issue", Outcome: audit.OutcomeSuccess,
		Time: time.Date(2003, 10, 11, 22, 14, 15, 3000, time.UTC)}
	denied := *ev
	denied.Outcome = audit.OutcomeDenied
	for _, tc := range []struct {
		name           string
		r              auditsink.Record
		host, procID   string
		wantHeaderText string
	}{
		// As RFC 5424 §6.5's examples: PRI, VERSION, TIMESTAMP with up to 6 fraction digits.
		{"event", auditsink.Record{Event: ev}, "mymachine.example.com", "8710",
			"<110>1 2003-10-11T22:14:15.000003Z mymachine.example.com mandate 8710 event - \ufeff"},
		{"refusal", auditsink.Record{Event: &denied}, "host", "1",
			"<109>1 2003-10-11T22:14:15.000003Z host mandate 1 event - \ufeff"},
		{"checkpoint", auditsink.Record{Checkpoint: &auditsink.Checkpoint{Seq: 7, Time: time.Unix(0, 0)}}, "h", "2",
			"<110>1 1970-01-01T00:00:00.000000Z h mandate 2 checkpoint - \ufeff"},
		{"no time, odd host", auditsink.Record{Event: &audit.Event{Seq: 1}}, "a host\x01é", "",
			"<110>1 - ahost mandate - event - \ufeff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := auditsink.FormatSyslog(tc.r, tc.host, tc.procID)
			if err != nil {
				t.Fatal(err)
			}
			head, body, ok := strings.Cut(string(got), "\ufeff")
			if !ok || head+"\ufeff" != tc.wantHeaderText {
				t.Errorf("header %q, want %q", head+"\ufeff", tc.wantHeaderText)
			}
			if !strings.HasPrefix(body, `{"type":"`+tc.r.Type()+`"`) {
				t.Errorf("MSG %s: want the record's JSON, type first", body)
			}
		})
	}
}

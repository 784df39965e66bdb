package cli

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
)

// The audit command group: search (mandate audit), explain, mine.

const formatFlag = "format"

// outputFormat reads --format (and --json, its alias for "json") against the formats a command
// knows.
func outputFormat(cmd *cobra.Command, known ...string) (string, error) {
	f, _ := cmd.Flags().GetString(formatFlag)
	if wantJSON(cmd) {
		if cmd.Flags().Changed(formatFlag) && f != "json" {
			return "", fmt.Errorf("--json and --format %s disagree: give one of them", f)
		}
		return "json", nil
	}
	if !slices.Contains(known, f) {
		return "", fmt.Errorf("--format %q: want one of %s", f, strings.Join(known, ", "))
	}
	return f, nil
}

func newAuditCmd() *cobra.Command {
	var f struct {
		task, grant, agent, principal, upstream, action, outcome, requestID, clientRequestID, since, until, cursor string
		limit                                                                                                      int
		all                                                                                                        bool
	}
	cmd := &cobra.Command{
		Use:   "audit [--task T] [--grant G] [--agent @handle] [--upstream U] [--action A] [--outcome O] [--since 2h] [--all] [--format table|json|jsonl|csv]",
		Short: "Search, explain and summarize the audit trail (an admin: all of it; others: events on their behalf)",
		Long: `Search the audit trail, newest first. Filters combine with AND. --since and --until take an
RFC 3339 time, a date (2026-12-01) or a duration ago (15m, 2h, 7d). At most --limit events are
shown (default 100); more are paged in with cursors (--all reads every page). A refused request
names its request id: --request-id shows every event of that request with the exact reason.
Refusals of anonymous callers show their address as the actor; past --denial-audit-rate,
identical ones from one address are one event per window that counts them (OUTCOME "denied xN").

  mandate audit explain REQUEST_ID   who ran the agent and on whose behalf, for one call
  mandate audit mine                 what agents did for you in the last 7 days

The formats: table (for people), json (one object, {"events": […]}), jsonl (one event per line)
and csv. Every event is the schema of docs/audit.md.`,
		Example: "  mandate audit --task tsk_... --since 2h\n  mandate audit --agent @release-bot --outcome denied\n" +
			"  mandate audit --upstream ahrefs --since 2026-12-01 --all --format csv > calls.csv\n  mandate audit --request-id req_...",
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd, "table", "json", "jsonl", "csv")
			if err != nil {
				return err
			}
			if f.limit < 0 {
				return fmt.Errorf("--limit %d: want a positive number (or --all)", f.limit)
			}
			if f.agent != "" {
				if err := checkAgentRef(f.agent); err != nil {
					return fmt.Errorf("--agent: %w", err)
				}
			}
			if f.action != "" {
				if err := audit.CheckAction(f.action); err != nil {
					return fmt.Errorf("--action: %w", err)
				}
			}
			if f.outcome != "" {
				if err := audit.CheckOutcome(f.outcome); err != nil {
					return fmt.Errorf("--outcome: %w", err)
				}
			}
			q := url.Values{}
			for k, v := range map[string]string{"task": f.task, "grant": f.grant, "agent": f.agent, "principal": f.principal,
				"upstream": f.upstream, "action": f.action, "outcome": f.outcome, "request_id": f.requestID,
				"client_request_id": f.clientRequestID, "since": f.since, "until": f.until} {
				if v != "" {
					q.Set(k, v)
				}
			}
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			want := f.limit
			if want == 0 {
				want = 100
			}
			out := newEventWriter(cmd.OutOrStdout(), format)
			cursor := f.cursor
			n := 0
			for {
				page := min(want-n, audit.MaxPage)
				if f.all {
					page = audit.MaxPage
				}
				q.Set("limit", strconv.Itoa(page))
				if cursor != "" {
					q.Set("cursor", cursor)
				} else {
					q.Del("cursor")
				}
				var res api.AuditPage
				if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/audit?"+q.Encode(), nil, &res); err != nil {
					return err
				}
				for _, e := range res.Events {
					if err := out.write(e); err != nil {
						return err
					}
				}
				n += len(res.Events)
				cursor = res.NextCursor
				if cursor == "" || (!f.all && n >= want) {
					break
				}
			}
			if err := out.close(cursor); err != nil {
				return err
			}
			if cursor != "" && format == "table" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more events: add --all, or --cursor %s for the next page\n", termSafe(cursor))
			}
			return nil
		},
	}
	addJSONFlag(cmd)
	cmd.PersistentFlags().String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	fl := cmd.Flags()
	fl.StringVar(&f.task, "task", "", "one task's events (tsk_…)")
	fl.StringVar(&f.grant, "grant", "", "one grant's events (gr_…)")
	fl.StringVar(&f.agent, "agent", "", "one agent's events: @handle or agt_… id")
	fl.StringVar(&f.principal, "principal", "", "one principal's events, usr_… or svc_… (admin)")
	fl.StringVar(&f.upstream, "upstream", "", "proxied calls to one upstream")
	fl.StringVar(&f.action, "action", "", "one action, e.g. proxy.call, token.exchange, task.revoke")
	fl.StringVar(&f.outcome, "outcome", "", "success, denied, failure or pending")
	fl.StringVar(&f.requestID, "request-id", "", "every event of one request (req_…)")
	fl.StringVar(&f.clientRequestID, "client-request-id", "", "every event of requests that sent this X-Request-Id")
	fl.StringVar(&f.since, "since", "", "events at or after: RFC 3339, a date, or a duration ago (15m, 2h, 7d)")
	fl.StringVar(&f.until, "until", "", "events before: RFC 3339, a date, or a duration ago")
	fl.IntVar(&f.limit, "limit", 0, "at most this many events (default 100; paged past 1000)")
	fl.BoolVar(&f.all, "all", false, "every matching event: follow the cursors to the end")
	fl.StringVar(&f.cursor, "cursor", "", "start after this page: the next_cursor of an earlier answer")
	fl.String(formatFlag, "table", "table, json, jsonl or csv")
	cmd.AddCommand(newAuditExplainCmd(), newAuditMineCmd(), newAuditVerifyCmd(), newAuditCheckpointsCmd())
	return cmd
}

// eventWriter writes events in one format as they come.
type eventWriter struct {
	w      io.Writer
	format string
	t      *table
	csv    *csv.Writer
	all    []audit.Event // json: written at the end as one object
	now    time.Time
}

var csvHeader = []string{"seq", "id", "time", "request_id", "action", "outcome", "reason", "actor_type", "actor_id", "actor_handle",
	"principal_id", "agent_id", "task_id", "grant_id", "upstream", "method", "path", "status", "target", "cause", "detail"}

func newEventWriter(w io.Writer, format string) *eventWriter {
	ew := &eventWriter{w: w, format: format, now: time.Now()}
	switch format {
	case "table":
		ew.t = newTable(w, "TIME", "ACTION", "OUTCOME", "ACTOR", "TASK", "CALL", "DETAIL")
	case "csv":
		ew.csv = csv.NewWriter(w)
		_ = ew.csv.Write(csvHeader)
	}
	return ew
}

func (ew *eventWriter) write(e audit.Event) error {
	switch ew.format {
	case "table":
		ew.t.row(e.Time.Local().Format(timeLayout), e.Action, outcomeText(e), actorText(e), e.TaskID, callText(e.Call), short(e.Detail, 60))
	case "jsonl":
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(ew.w, "%s\n", b)
		return err
	case "csv":
		var method, path, status string
		if e.Call != nil {
			method, path = e.Call.Method, e.Call.Path
			if e.Call.Status != 0 {
				status = strconv.Itoa(e.Call.Status)
			}
		}
		return ew.csv.Write([]string{strconv.FormatInt(e.Seq, 10), e.ID, e.Time.UTC().Format(time.RFC3339Nano), e.RequestID, e.Action,
			string(e.Outcome), e.Reason, e.ActorType, e.ActorID, e.ActorHandle, e.PrincipalID, e.AgentID, e.TaskID, e.GrantID,
			e.Upstream(), method, path, status, e.Target, e.Cause, e.Detail})
	default:
		ew.all = append(ew.all, e)
	}
	return nil
}

// close ends the output; cursor is the next page's when the caller stopped before the end.
func (ew *eventWriter) close(cursor string) error {
	switch ew.format {
	case "table":
		return ew.t.flush()
	case "csv":
		ew.csv.Flush()
		return ew.csv.Error()
	case "json":
		page := api.AuditPage{Events: ew.all, NextCursor: cursor}
		if page.Events == nil {
			page.Events = []audit.Event{}
		}
		return printJSON(ew.w, page)
	}
	return nil
}

// outcomeText is the outcome with its reason, and the count of an aggregated refusal.
func outcomeText(e audit.Event) string {
	s := string(e.Outcome)
	if e.Count > 0 {
		s = fmt.Sprintf("%s x%d", e.Outcome, e.Count)
	}
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	return s
}

// actorText names who acted: the handle where the trail has one, else the id, else an anonymous
// caller's address.
func actorText(e audit.Event) string {
	switch {
	case e.ActorHandle != "":
		if e.ActorType == audit.ActorAgent {
			return "@" + strings.TrimPrefix(e.ActorHandle, "@")
		}
		return e.ActorHandle
	case e.ActorID != "":
		return e.ActorID
	case e.Source != "":
		return e.Source
	}
	return e.ActorType
}

// callText is a proxied call as "upstream METHOD /path -> status".
func callText(c *audit.Call) string {
	if c == nil {
		return ""
	}
	s := strings.TrimSpace(c.Upstream + " " + c.Method + " " + c.Path)
	if c.Status != 0 {
		s += fmt.Sprintf(" -> %d", c.Status)
	}
	return s
}

func short(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func newAuditExplainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "explain REQUEST_ID|EVENT_ID [--format table|json]",
		Short: "Who ran the agent and on whose behalf, for one call: one page from the trail",
		Long: `Explain one request (req_…, as a refusal or an upstream's Mandate-Request-Id header names it)
or one event (evt_…) from the hash-chained trail alone, not from today's tables: the call, the
principal, the grant (who granted what, when), the delegation chain with each hop's agent, task,
purpose and instance key, and whether every link of that authority was valid at that moment
(none revoked or ended before it, none expired). A proxied call shows the outcome its completion
recorded, or "outcome unknown" when none was. An admin may explain any event; anyone else the
events on their behalf. A client's own X-Request-Id is no server id (clients choose it, so two
may send the same): given one, explain lists the server request ids that sent it, among those
you may see, to explain one by; when there is exactly one, it explains that one and says so.`,
		Example: "  mandate audit explain req_...\n  mandate audit explain evt_... --format json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var x audit.Explanation
			return getPage(cmd, "/v1/audit/explain/"+url.PathEscape(args[0]), &x, func(w io.Writer) error { return printExplanation(w, &x) })
		},
	}
	cmd.Flags().String(formatFlag, "table", "table or json")
	return cmd
}

// getPage reads path into out and prints it: the server's JSON with --format json, else render.
func getPage(cmd *cobra.Command, path string, out any, render func(io.Writer) error) error {
	format, err := outputFormat(cmd, "table", "json")
	if err != nil {
		return err
	}
	c, err := managementClient(cmd)
	if err != nil {
		return err
	}
	raw, err := c.do(cmd.Context(), http.MethodGet, path, nil, out)
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	return render(cmd.OutOrStdout())
}

// printExplanation writes x as one page for a person.
func printExplanation(w io.Writer, x *audit.Explanation) error {
	p := &pageWriter{w: w}
	e := x.Event
	p.line("%s %s", e.Action, requestName(e))
	if x.FoundByClientRequestID != "" {
		p.line("  (found by the client's X-Request-Id %s, the one request you may see that sent it: the server's id is %s)",
			x.FoundByClientRequestID, orDash(e.RequestID))
	}
	outcome := x.Outcome
	if outcome == "unknown" {
		outcome = "outcome unknown (no completion recorded)"
	}
	if x.Reason != "" {
		outcome += " (" + x.Reason + ")"
	}
	p.field("outcome", outcome)
	p.field("time", e.Time.UTC().Format(time.RFC3339Nano))
	if x.Call != nil {
		c := x.Call
		s := strings.TrimSpace(c.Method + " " + c.Upstream + " " + c.Path)
		if len(c.Query) > 0 {
			names := make([]string, len(c.Query))
			for i, q := range c.Query {
				names[i] = q.Name
			}
			s += "?" + strings.Join(names, "&") + " (values hashed)"
		}
		p.field("call", s)
		if c.Route != "" {
			p.field("route", c.Route)
		}
		if x.Completion != nil {
			p.field("result", fmt.Sprintf("status %d, %d bytes in, %d bytes out, %s", c.Status, c.BytesIn, c.BytesOut,
				(time.Duration(c.DurationUS)*time.Microsecond).String()))
		}
	}
	if e.Addr != "" || e.UserAgent != "" {
		p.field("from", strings.TrimSpace(e.Addr+"  "+e.UserAgent))
	}
	if e.Detail != "" {
		p.field("detail", e.Detail)
	}
	if x.Completion != nil && x.Completion.Detail != "" && x.Completion.Detail != e.Detail {
		p.field("completion", x.Completion.Detail)
	}

	p.section("On whose behalf")
	p.field("principal", orDash(x.PrincipalID))
	if g := x.Grant; g != nil {
		s := g.ID
		if g.EventID != "" {
			by := g.GrantedBy
			if g.GrantedName != "" {
				by = g.GrantedName + " (" + g.GrantedBy + ")"
			}
			s += fmt.Sprintf(", granted by %s at %s", orDash(by), g.Time.UTC().Format(time.RFC3339))
			if g.AgentID != "" {
				s += " to " + g.AgentID
			}
		}
		p.field("grant", s)
		p.field("terms", termsText(g.Terms))
	} else {
		p.field("grant", "-")
	}

	p.section("Who ran the agent (first agent first)")
	if len(x.Chain) == 0 {
		p.line("  no agent: %s acted", actorText(e))
	}
	for i, h := range x.Chain {
		name := h.AgentID
		if h.Handle != "" {
			name = "@" + strings.TrimPrefix(h.Handle, "@") + " (" + h.AgentID + ")"
		}
		p.line("  %d. %s", i+1, name)
		if h.DID != "" {
			p.sub("did", h.DID)
		}
		if h.InstanceKey != "" {
			p.sub("instance key", h.InstanceKey)
		}
		if h.TaskID != "" {
			s := h.TaskID
			if !h.Started.IsZero() {
				s += ", started " + h.Started.UTC().Format(time.RFC3339)
			}
			p.sub("task", s)
			p.sub("purpose", orDash(h.Purpose))
			p.sub("limits", termsText(h.Terms))
		}
	}
	if e.KeyJKT != "" {
		p.field("proof key", e.KeyJKT)
	}
	if e.TokenID != "" {
		p.field("token", e.TokenID)
	}

	p.section("Authority at that moment")
	if x.Valid {
		p.line("  valid: no link (principal, grant, task, agent, key) was revoked, ended or expired before this event")
	} else {
		p.line("  INVALID:")
		for _, pr := range x.Problems {
			p.line("  - %s", pr.Detail)
		}
	}
	for _, m := range append(slices.Clone(x.Notes), x.Missing...) {
		p.line("  note: %s", m)
	}
	if len(x.Others) > 0 {
		p.section("Other events of this request")
		t := newTable(w, "  SEQ", "TIME", "ACTION", "OUTCOME", "ID", "DETAIL")
		for _, o := range x.Others {
			t.row("  "+strconv.FormatInt(o.Seq, 10), o.Time.UTC().Format(time.RFC3339), o.Action, outcomeText(o), o.ID, short(o.Detail, 60))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return p.err
}

// shownElsewhere are the members of grant and task terms that the page already shows beside
// them (who, which task, when): left out of the one-line terms, kept in --format json.
var shownElsewhere = map[string]bool{"agent_id": true, "grant_id": true, "task_id": true, "principal_id": true,
	"granted_by": true, "created_at": true, "root_task_id": true, "parent_task_id": true, "key_jkt": true,
	"instance_key": true, "lifetime_seconds": true, "request_id": true}

// termsText is terms on one line, with the expiry they imply when no member states it.
func termsText(v audit.TermsView) string {
	v.Fields = slices.DeleteFunc(slices.Clone(v.Fields), func(f audit.TermsField) bool { return shownElsewhere[f.Key] })
	s := v.String()
	if s == "" {
		return "- (none recorded)"
	}
	stated := slices.ContainsFunc(v.Fields, func(f audit.TermsField) bool { return f.Key == "exp" || f.Key == "expires_at" })
	if !v.Expires.IsZero() && !stated {
		s += "; expires " + v.Expires.Format(time.RFC3339)
	}
	return s
}

func requestName(e audit.Event) string {
	s := "request " + orDash(e.RequestID)
	if e.ClientRequestID != "" {
		s += " (client's X-Request-Id " + e.ClientRequestID + ")"
	}
	return s + ", event " + e.ID + fmt.Sprintf(" (seq %d)", e.Seq)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pageWriter writes a page of labelled lines, keeping the first error.
type pageWriter struct {
	w   io.Writer
	err error
}

// line writes one line; every string argument goes through termSafe, so no value can add a
// line or reach the terminal as a control sequence. The format is the printer's own.
func (p *pageWriter) line(format string, args ...any) {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = termSafe(s)
		}
	}
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func (p *pageWriter) section(title string) { p.line("\n" + title) }

func (p *pageWriter) field(k, v string) { p.line("  %-10s %s", k, cleanCell(v)) }

func (p *pageWriter) sub(k, v string) { p.line("       %-14s %s", k, cleanCell(v)) }

func newAuditMineCmd() *cobra.Command {
	var since, until, principal string
	cmd := &cobra.Command{
		Use:   "mine [--since 7d] [--until T] [--format table|json]",
		Short: "What agents did on your behalf: calls, refusals and revocations by agent and task",
		Long: `Your own account: every agent that acted for you in the window (default: the last 7 days),
each task it ran with its purpose, its proxied calls counted by upstream and outcome, what was
refused and why, and what was revoked or ended. An admin may pass --principal to read another's.`,
		Example: "  mandate audit mine\n  mandate audit mine --since 30d --format json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"since": since, "until": until, "principal": principal} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var rep audit.Account
			return getPage(cmd, "/v1/audit/mine?"+q.Encode(), &rep, func(w io.Writer) error { return printAccount(w, &rep) })
		},
	}
	cmd.Flags().StringVar(&since, "since", "7d", "from: RFC 3339, a date, or a duration ago (15m, 2h, 7d)")
	cmd.Flags().StringVar(&until, "until", "", "to (default now): RFC 3339, a date, or a duration ago")
	cmd.Flags().StringVar(&principal, "principal", "", "another principal's account (admin)")
	cmd.Flags().String(formatFlag, "table", "table or json")
	return cmd
}

// printAccount writes rep for a person.
func printAccount(w io.Writer, rep *audit.Account) error {
	p := &pageWriter{w: w}
	p.line("What agents did for %s from %s to %s (%d events)", rep.PrincipalID,
		rep.Since.Local().Format(timeLayout), rep.Until.Local().Format(timeLayout), rep.Events)
	if rep.Truncated {
		p.line("(only the newest %d events were read: narrow --since)", audit.MaxReportEvents)
	}
	if len(rep.Agents) == 0 {
		p.line("\nNo agent acted for you in this window.")
	}
	for _, a := range rep.Agents {
		name := a.AgentID
		if a.Handle != "" {
			name = "@" + strings.TrimPrefix(a.Handle, "@") + " (" + a.AgentID + ")"
		}
		p.line("\n%s: %s, %s", name, plural(a.Calls, "call"), plural(a.Refusals, "refusal"))
		for _, r := range a.Revocations {
			p.line("  %s %s %s by %s%s", r.Time.Local().Format(timeLayout), r.Action, orDash(r.Target), orDash(r.ActorID), causeText(r.Cause))
		}
		for _, t := range a.Tasks {
			if t.TaskID == "" {
				p.line("  outside any task: %s (%s)", plural(t.Events, "event"), strings.Join(t.Actions, ", "))
			} else {
				title := "task " + t.TaskID
				if t.Purpose != "" {
					title += fmt.Sprintf(" %q", t.Purpose)
				}
				p.line("  %s (%s to %s, %s)", title, t.First.Local().Format(timeLayout), t.Last.Local().Format(timeLayout), plural(t.Events, "event"))
			}
			for _, c := range t.Calls {
				parts := []string{fmt.Sprintf("%d ok", c.Success)}
				if c.Failure > 0 {
					parts = append(parts, fmt.Sprintf("%d failed", c.Failure))
				}
				if c.Denied > 0 {
					parts = append(parts, fmt.Sprintf("%d refused", c.Denied))
				}
				if c.Unknown > 0 {
					parts = append(parts, fmt.Sprintf("%d outcome unknown", c.Unknown))
				}
				p.line("    calls    %s: %d (%s)", orDash(c.Upstream), c.Calls, strings.Join(parts, ", "))
			}
			for _, r := range t.Refusals {
				p.line("    refused  %s %s x%d: %s", r.Action, orDash(r.Reason), r.Count, short(r.Detail, 80))
			}
			for _, r := range t.Revocations {
				p.line("    %-8s %s by %s%s", strings.TrimPrefix(r.Action, "task."), r.Time.Local().Format(timeLayout), orDash(r.ActorID), causeText(r.Cause))
			}
		}
	}
	return p.err
}

func causeText(cause string) string {
	if cause == "" {
		return ""
	}
	return ", because of " + cause
}

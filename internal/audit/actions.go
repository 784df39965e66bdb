package audit

import (
	"fmt"
	"slices"
	"strings"
)

// Actions is every action name the server records, sorted. The constants live beside the code
// that records them (here, and in internal/delegation, federation, vault, proxy, and the CLI's
// offline master key commands);
// TestActionsListsEveryActionConstant reads the source so this list cannot drift from them.
// Queries refuse an action not in it, so a typo is an error rather than an empty answer.
var Actions = []string{
	"agent.claim",
	"agent.claim_code",
	"agent.purge",
	"agent.register",
	"agent.revoke",
	"agent.revoke_key",
	"agent.rotate_key",
	"api_token.create",
	"api_token.revoke",
	"audit.prune",
	"federation.issuer.add",
	"federation.issuer.remove",
	"federation.rule.add",
	"federation.rule.disable",
	"federation.rule.enable",
	"grant.create",
	"grant.deny",
	"grant.request",
	"grant.revoke",
	"master_key.add",
	"master_key.promote",
	"master_key.prune",
	"master_key.rewrap",
	"master_key.rotate",
	"proxy.call",
	"resource.deny",
	"service_account.create",
	"service_account.disable",
	"service_account.enable",
	"signing_key.rotate",
	"task.end",
	"task.revoke",
	"task.start",
	"token.deny",
	"token.exchange",
	"token.issue",
	"token.revoke",
	"upstream.create",
	"upstream.delete",
	"upstream.secret_set",
	"upstream.token_refresh",
	"upstream.update",
	"user.create",
}

// Outcomes is every outcome, in the order a reader meets them.
var Outcomes = []Outcome{OutcomeSuccess, OutcomeDenied, OutcomeFailure, OutcomePending}

// CheckAction returns an error naming the known actions when a is not one of them.
func CheckAction(a string) error {
	if _, found := slices.BinarySearch(Actions, a); found {
		return nil
	}
	return fmt.Errorf("unknown action %q: want one of %s", clip(a), strings.Join(Actions, ", "))
}

// CheckOutcome returns an error naming the outcomes when o is not one of them.
func CheckOutcome(o string) error {
	if slices.Contains(Outcomes, Outcome(o)) {
		return nil
	}
	names := make([]string, len(Outcomes))
	for i, x := range Outcomes {
		names[i] = string(x)
	}
	return fmt.Errorf("unknown outcome %q: want one of %s", clip(o), strings.Join(names, ", "))
}

// clip shortens what a caller sent before it is echoed in an error.
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}

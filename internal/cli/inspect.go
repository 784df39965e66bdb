package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/jwsverify"
	"github.com/mandate-dev/mandate/verify"
)

// inspectAlgs are the only signature algorithms token inspect accepts (never none, HMAC, RSA).
var inspectAlgs = []string{verify.AlgEdDSA, verify.AlgEd25519, verify.AlgES256}

// inspectLeeway is the clock difference tolerated on iat and nbf (not on exp: an expired token is
// reported as expired).
const inspectLeeway = 30 * time.Second

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Work with access tokens",
		Args:  cobra.NoArgs,
	}
	addJSONFlag(cmd)
	var server string
	inspect := &cobra.Command{
		Use:   "inspect TOKEN|-",
		Short: "Decode an access token and check its signature against the server's keys",
		Long: `Print an access token's header and claims and check it: the signature with the keys the
server publishes (EdDSA, Ed25519 or ES256 only), the issuer, and the expiry. The keys are fetched
from --server, else the server in agent.json, else the one you logged in to; never from the
token's own iss. Exits non-zero, saying why, when the token is not valid. "-" reads the token
from standard input. Revocation is not checked.`,
		Example: "  mandate agent token | mandate token inspect -",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw := args[0]
			if raw == "-" {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
				if err != nil {
					return fmt.Errorf("reading the token from stdin: %w", err)
				}
				raw = string(b)
			}
			raw = strings.TrimSpace(raw)
			if raw == "" {
				return errors.New("no token: pass it as the argument, or pipe it in with -")
			}
			srv, err := inspectServer(cmd, server)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			hc := newHTTPClient()
			md, err := fetchMetadata(ctx, hc, srv)
			if err != nil {
				return err
			}
			if md.JWKSURI == "" {
				return fmt.Errorf("the metadata of %s has no jwks_uri", srv)
			}
			now := time.Now()
			ins, err := inspectToken(ctx, raw, srv, verify.RemoteKeys(md.JWKSURI, hc), now)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				if err := printJSON(out, ins); err != nil {
					return err
				}
			} else if err := ins.print(out, now); err != nil {
				return err
			}
			if !ins.Valid {
				return fmt.Errorf("the token is not valid: %s", strings.Join(ins.Problems, "; "))
			}
			return nil
		},
	}
	inspect.Flags().StringVar(&server, serverFlag, "", "the server whose keys to check against (default: agent.json's, else the login's)")
	cmd.AddCommand(inspect)
	return cmd
}

// inspectServer picks the server to fetch keys from: --server, agent.json, the saved login.
func inspectServer(cmd *cobra.Command, flag string) (string, error) {
	if flag != "" {
		return normalizeServer(flag)
	}
	if path, err := agentKeyPath(cmd); err == nil {
		if st, err := loadAgentState(path); err == nil && st != nil {
			return st.Server, nil
		}
	}
	login, err := loadLogin()
	if err != nil {
		return "", err
	}
	if login != nil {
		return login.Server, nil
	}
	return "", errors.New("no server to check the token against: pass --server URL (the token's own iss is not trusted to say where its keys are)")
}

// inspection is what token inspect found.
type inspection struct {
	Server    string         `json:"server"`
	Header    map[string]any `json:"header"`
	Claims    map[string]any `json:"claims"`
	Signature sigResult      `json:"signature"`
	// Chain is the delegation chain, first agent first, the current holder last; Delegation
	// draws it as one line from the principal.
	Chain      []chainActor `json:"chain,omitempty"`
	Delegation string       `json:"delegation,omitempty"`
	Valid      bool         `json:"valid"`
	Problems   []string     `json:"problems,omitempty"`
}

type sigResult struct {
	Valid bool   `json:"valid"`
	KID   string `json:"kid,omitempty"`
	Alg   string `json:"alg,omitempty"`
	Error string `json:"error,omitempty"`
}

// inspectToken decodes raw and checks it against issuer's keys at now. It returns an error only
// when raw is not a JWT at all or the keys cannot be read; anything wrong with the token itself
// is a problem in the result.
func inspectToken(ctx context.Context, raw, issuer string, keys verify.KeySource, now time.Time) (*inspection, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, errors.New("this is not a signed JWT (want three dot-separated parts)")
	}
	ins := &inspection{Server: issuer}
	if err := decodeSegment(parts[0], &ins.Header); err != nil {
		return nil, fmt.Errorf("the token's header: %w", err)
	}
	if err := decodeSegment(parts[1], &ins.Claims); err != nil {
		return nil, fmt.Errorf("the token's claims: %w", err)
	}
	if _, err := base64.RawURLEncoding.DecodeString(parts[2]); err != nil {
		return nil, errors.New("the token's signature is not base64url")
	}
	if ins.Chain = delegationChain(ins.Claims); len(ins.Chain) > 0 {
		sub, _ := ins.Claims["sub"].(string)
		ins.Delegation = chainLine(sub, ins.Chain)
	}
	problem := func(format string, args ...any) { ins.Problems = append(ins.Problems, fmt.Sprintf(format, args...)) }

	alg, _ := ins.Header["alg"].(string)
	kid, _ := ins.Header["kid"].(string)
	typ, _ := ins.Header["typ"].(string)
	ins.Signature.Alg, ins.Signature.KID = alg, kid
	sigProblem := ""
	switch {
	case !contains(inspectAlgs, alg):
		sigProblem = fmt.Sprintf("algorithm %q is not accepted (only %s)", alg, strings.Join(inspectAlgs, ", "))
	case ins.Header["crit"] != nil:
		sigProblem = "the header has critical parameters (crit) this tool does not understand"
	case kid == "":
		sigProblem = "the header names no signing key (kid)"
	default:
		pub, err := keys.PublicKey(ctx, kid)
		switch {
		case errors.Is(err, verify.ErrUnknownKey):
			sigProblem = fmt.Sprintf("%s does not publish the signing key %q", issuer, kid)
		case err != nil:
			return nil, explain(fmt.Errorf("reading the server's signing keys: %w", err), issuer)
		case !signatureVerifies(raw, pub):
			sigProblem = "the signature does not verify"
		default:
			ins.Signature.Valid = true
		}
	}
	if sigProblem != "" {
		ins.Signature.Error = sigProblem
		problem("signature: %s", sigProblem)
	}
	if !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
		problem("typ %q: not an access token (at+jwt)", typ)
	}
	if iss, _ := ins.Claims["iss"].(string); iss != issuer {
		problem("issued by %q, not by %s", iss, issuer)
	}
	if exp, ok := numericDate(ins.Claims["exp"]); !ok {
		problem("no valid exp claim")
	} else if !now.Before(exp) {
		problem("expired %s", relTime(exp, now))
	}
	if nbf, ok := numericDate(ins.Claims["nbf"]); ok && nbf.After(now.Add(inspectLeeway)) {
		problem("not valid until %s", relTime(nbf, now))
	}
	if iat, ok := numericDate(ins.Claims["iat"]); ok && iat.After(now.Add(inspectLeeway)) {
		problem("issued in the future (%s): check the clocks", relTime(iat, now))
	}
	ins.Valid = len(ins.Problems) == 0
	return ins, nil
}

func decodeSegment(seg string, v *map[string]any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return errors.New("not base64url")
	}
	if err := json.Unmarshal(b, v); err != nil || *v == nil {
		return errors.New("not a JSON object")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// signatureVerifies checks the token's signature with pub, through the same JWS verification the
// server uses for what agents sign (EdDSA, Ed25519, ES256 only).
func signatureVerifies(raw string, pub any) bool {
	j, err := jwsverify.Parse(raw)
	if err != nil {
		return false
	}
	_, err = j.Verify(pub)
	return err == nil
}

// numericDate reads a JWT NumericDate decoded from JSON.
func numericDate(v any) (time.Time, bool) {
	f, ok := v.(float64)
	if !ok || f < 0 || f > 1<<53 || math.IsNaN(f) {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// claimOrder puts the claims people look for first; the rest follow alphabetically.
var claimOrder = []string{"iss", "sub", "aud", "scope", "client_id", "handle", "did", "cnf", "act", "txn", "grant", "jti", "iat", "nbf", "exp"}

var timeClaims = map[string]bool{"iat": true, "nbf": true, "exp": true, "auth_time": true}

func orderedKeys(m map[string]any, first []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, k := range first {
		if _, ok := m[k]; ok {
			out = append(out, k)
			seen[k] = true
		}
	}
	var rest []string
	for k := range m {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// claimValue prints one claim: strings as they are, times with their relative form, the rest as
// compact JSON.
func claimValue(name string, v any, now time.Time) string {
	if timeClaims[name] {
		if t, ok := numericDate(v); ok {
			return fmt.Sprintf("%d  %s", t.Unix(), when(t, now))
		}
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func (ins *inspection) print(w io.Writer, now time.Time) error {
	fmt.Fprintln(w, "header:")
	t := newTable(w)
	for _, k := range orderedKeys(ins.Header, []string{"alg", "typ", "kid"}) {
		t.row("  "+k, claimValue(k, ins.Header[k], now))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "claims:")
	t = newTable(w)
	for _, k := range orderedKeys(ins.Claims, claimOrder) {
		t.row("  "+k, claimValue(k, ins.Claims[k], now))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if ins.Delegation != "" {
		fmt.Fprintf(w, "delegation: %s\n", cleanCell(ins.Delegation))
	}
	if g, _ := ins.Claims["grant"].(string); g != "" {
		fmt.Fprintf(w, "grant: %s\n", cleanCell(g))
	}
	if details, _ := ins.Claims["authorization_details"].([]any); len(details) > 0 {
		fmt.Fprintln(w, "authorization details:")
		for _, d := range details {
			b, _ := json.Marshal(d)
			fmt.Fprintf(w, "  %s\n", cleanCell(string(b)))
		}
	}
	if ins.Signature.Valid {
		fmt.Fprintf(w, "signature: valid (kid %s, %s, keys of %s)\n", ins.Signature.KID, ins.Signature.Alg, ins.Server)
	} else {
		fmt.Fprintf(w, "signature: INVALID (%s)\n", ins.Signature.Error)
	}
	if exp, ok := numericDate(ins.Claims["exp"]); ok {
		if now.Before(exp) {
			fmt.Fprintf(w, "expires: %s\n", relTime(exp, now))
		} else {
			fmt.Fprintf(w, "expired: %s\n", relTime(exp, now))
		}
	}
	if ins.Valid {
		fmt.Fprintln(w, "valid: yes (revocation not checked)")
	} else {
		fmt.Fprintf(w, "valid: no (%s)\n", strings.Join(ins.Problems, "; "))
	}
	return nil
}

// chainActor is one agent of a token's delegation chain (an RFC 8693 act claim).
type chainActor struct {
	AgentID     string `json:"agent_id"`
	Handle      string `json:"handle,omitempty"`
	DID         string `json:"did,omitempty"`
	Task        string `json:"task,omitempty"`
	InstanceJKT string `json:"instance_jkt,omitempty"` // the instance key the agent's tokens were bound to
}

// maxChain bounds how deep an act claim is followed.
const maxChain = 32

// delegationChain reads the nested act claim: the outermost act is the current holder, each
// inner one the agent before it. It returns the chain first agent first; nil without act.
func delegationChain(claims map[string]any) []chainActor {
	var chain []chainActor
	act, _ := claims["act"].(map[string]any)
	for ; act != nil && len(chain) < maxChain; act, _ = act["act"].(map[string]any) {
		str := func(k string) string { s, _ := act[k].(string); return s }
		chain = append(chain, chainActor{AgentID: str("sub"), Handle: str("handle"), DID: str("did"), Task: str("txn"), InstanceJKT: str("jkt")})
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain
}

// chainLine draws a chain from the principal: usr_1 → @orchestrator (tsk_a, instance AbCdEfGh…)
// → @researcher (tsk_b).
func chainLine(principal string, chain []chainActor) string {
	if principal == "" {
		principal = "?"
	}
	parts := []string{principal}
	for _, a := range chain {
		name := a.AgentID
		if a.Handle != "" {
			name = "@" + a.Handle
		}
		if name == "" {
			name = "?"
		}
		var meta []string
		if a.Task != "" {
			meta = append(meta, a.Task)
		}
		if a.InstanceJKT != "" {
			jkt := a.InstanceJKT
			if len(jkt) > 8 {
				jkt = jkt[:8] + "…"
			}
			meta = append(meta, "instance "+jkt)
		}
		if len(meta) > 0 {
			name += " (" + strings.Join(meta, ", ") + ")"
		}
		parts = append(parts, name)
	}
	return strings.Join(parts, " → ")
}

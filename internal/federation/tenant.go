package federation

import (
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
)

// tenancy is how the assertions of a multi-tenant issuer name their tenant (the GitHub owner,
// the GitLab group…). A rule on such an issuer must pin one, or it trusts every customer of the
// platform.
type tenancy struct {
	claims []string // claims whose exact value names the tenant
	// subPrefix starts the sub of every assertion, followed by the tenant and subSep; "" when
	// no sub prefix pins the tenant.
	subPrefix string
	subSep    byte
	hint      string // how to pin, for refusals
}

// sharedIssuers are the known multi-tenant issuers. They are marked Shared whatever the
// operator says. (CircleCI and Terraform Enterprise have an issuer per organisation.)
var sharedIssuers = map[string]tenancy{
	"https://token.actions.githubusercontent.com": {
		claims:    []string{"repository", "repository_owner", "repository_id", "repository_owner_id"},
		subPrefix: "repo:", subSep: '/', // repo:OWNER/REPO:…
		hint: `a subject prefix repo:OWNER/, an exact claim on repository_owner, repository, repository_owner_id or repository_id, or a condition such as claims.repository_owner == "OWNER"`,
	},
	"https://gitlab.com": {
		claims:    []string{"namespace_path", "namespace_id", "project_path", "project_id"},
		subPrefix: "project_path:", subSep: '/', // project_path:GROUP/PROJECT:…
		hint: `a subject prefix project_path:GROUP/, an exact claim on namespace_path, namespace_id, project_path or project_id, or a condition such as claims.namespace_path == "GROUP"`,
	},
	"https://agent.buildkite.com": {
		claims:    []string{"organization_slug"},
		subPrefix: "organization:", subSep: ':', // organization:SLUG:pipeline:…
		hint: `a subject prefix organization:SLUG:, an exact claim on organization_slug, or a condition such as claims.organization_slug == "SLUG"`,
	},
	"https://app.terraform.io": {
		claims:    []string{"terraform_organization_id", "terraform_organization_name"},
		subPrefix: "organization:", subSep: ':', // organization:NAME:project:…
		hint: `a subject prefix organization:NAME:, an exact claim on terraform_organization_name or terraform_organization_id, or a condition such as claims.terraform_organization_name == "NAME"`,
	},
	// Google's sub is an opaque account number: only exact values pin.
	"https://accounts.google.com": {
		claims: []string{"sub", "email", "hd", "azp"},
		hint:   `an exact claim on sub, email, hd or azp (a sub prefix does not pin), or a condition such as claims.email == "ci@PROJECT.iam.gserviceaccount.com"`,
	},
}

// registeredClaims never name a tenant.
var registeredClaims = []string{"iss", "aud", "exp", "nbf", "iat", "jti"}

// tenancyOf returns how is names tenants, and false for a single-tenant issuer. An issuer the
// operator marked Shared but that is not in the table has unknown tenant claims: any exact value
// of a non-registered claim counts as a pin.
func tenancyOf(is Issuer) (tenancy, bool) {
	if t, ok := sharedIssuers[is.URL]; ok {
		return t, true
	}
	return tenancy{}, is.Shared
}

// pinHint says how to pin a tenant of the issuer, for refusals.
func (t tenancy) pinHint() string {
	if t.hint == "" {
		return `an exact claim that names the tenant, or a condition such as claims.NAME == "TENANT"`
	}
	return t.hint
}

// subPins reports whether every sub with this prefix belongs to one tenant: the prefix holds
// the whole tenant segment, up to and including its separator.
func (t tenancy) subPins(prefix string) bool {
	if t.subPrefix == "" {
		return false
	}
	rest, ok := strings.CutPrefix(prefix, t.subPrefix)
	return ok && strings.IndexByte(rest, t.subSep) > 0
}

// valuePins reports whether requiring claim == value pins the tenant.
func (t tenancy) valuePins(claim, value string) bool {
	switch {
	case value == "":
		return false
	case claim == "sub" && t.subPins(value):
		return true
	case t.claims == nil:
		return !slices.Contains(registeredClaims, claim)
	}
	return slices.Contains(t.claims, claim)
}

// pins reports whether the rule can only match assertions of the tenants it names.
func (t tenancy) pins(r Rule, cond *cel.Ast) bool {
	if t.subPins(r.SubjectPrefix) {
		return true
	}
	for claim, value := range r.Claims {
		if t.valuePins(claim, value) {
			return true
		}
	}
	if cond == nil {
		return false
	}
	for _, e := range conjuncts(cond.NativeRep().Expr()) {
		if t.exprPins(e) {
			return true
		}
	}
	return false
}

// conjuncts flattens the top-level && of a condition: each of them must hold.
func conjuncts(e celast.Expr) []celast.Expr {
	if e.Kind() == celast.CallKind && e.AsCall().FunctionName() == operators.LogicalAnd {
		var out []celast.Expr
		for _, arg := range e.AsCall().Args() {
			out = append(out, conjuncts(arg)...)
		}
		return out
	}
	return []celast.Expr{e}
}

// exprPins recognises the pinning forms: claims.C == "v" (either side), claims["C"] == "v",
// claims.C in ["v", "w"], and claims.sub.startsWith("repo:acme/").
func (t tenancy) exprPins(e celast.Expr) bool {
	if e.Kind() != celast.CallKind {
		return false
	}
	call := e.AsCall()
	args := call.Args()
	switch call.FunctionName() {
	case operators.Equals:
		if len(args) != 2 {
			return false
		}
		for _, pair := range [][2]celast.Expr{{args[0], args[1]}, {args[1], args[0]}} {
			claim, ok1 := claimRef(pair[0])
			value, ok2 := stringLiteral(pair[1])
			if ok1 && ok2 && t.valuePins(claim, value) {
				return true
			}
		}
	case operators.In:
		if len(args) != 2 || args[1].Kind() != celast.ListKind {
			return false
		}
		claim, ok := claimRef(args[0])
		values := args[1].AsList().Elements()
		if !ok || len(values) == 0 {
			return false
		}
		for _, v := range values {
			value, ok := stringLiteral(v)
			if !ok || !t.valuePins(claim, value) {
				return false
			}
		}
		return true
	case overloads.StartsWith:
		if !call.IsMemberFunction() || len(args) != 1 {
			return false
		}
		claim, ok1 := claimRef(call.Target())
		prefix, ok2 := stringLiteral(args[0])
		return ok1 && ok2 && claim == "sub" && t.subPins(prefix)
	}
	return false
}

// claimRef recognises claims.NAME and claims["NAME"] (or assertion…), returning NAME.
func claimRef(e celast.Expr) (string, bool) {
	switch e.Kind() {
	case celast.SelectKind:
		sel := e.AsSelect()
		if !sel.IsTestOnly() && isClaimsVar(sel.Operand()) {
			return sel.FieldName(), true
		}
	case celast.CallKind:
		call := e.AsCall()
		if call.FunctionName() == operators.Index && len(call.Args()) == 2 && isClaimsVar(call.Args()[0]) {
			return stringLiteral(call.Args()[1])
		}
	}
	return "", false
}

func isClaimsVar(e celast.Expr) bool {
	return e.Kind() == celast.IdentKind && (e.AsIdent() == varClaims || e.AsIdent() == varAssertion)
}

func stringLiteral(e celast.Expr) (string, bool) {
	if e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

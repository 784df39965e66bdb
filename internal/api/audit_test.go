package api

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
)

// jsonNames returns the JSON member names of struct type t (embedded structs flattened).
func jsonNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			names = append(names, jsonNames(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

type schemaDoc struct {
	Properties map[string]struct {
		Enum  []string `json:"enum"`
		Items struct {
			Ref string `json:"$ref"`
		} `json:"items"`
	} `json:"properties"`
}

func schemaProps(t *testing.T, doc openAPIDocument, name string) schemaDoc {
	t.Helper()
	var s schemaDoc
	if err := json.Unmarshal(doc.Components.Schemas[name], &s); err != nil {
		t.Fatalf("components.schemas.%s: %v", name, err)
	}
	return s
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIAuditMatchesTheCode: the audit schemas document exactly the members the API
// writes (audit.Event is the one event schema), the query parameters GET /v1/audit reads, every
// action and every outcome.
func TestOpenAPIAuditMatchesTheCode(t *testing.T) {
	doc := loadOpenAPI(t)
	for schema, typ := range map[string]reflect.Type{
		"AuditEvent":       reflect.TypeFor[audit.Event](),
		"AuditLink":        reflect.TypeFor[audit.Link](),
		"AuditCall":        reflect.TypeFor[audit.Call](),
		"AuditEventList":   reflect.TypeFor[AuditPage](),
		"AuditExplanation": reflect.TypeFor[audit.Explanation](),
		"AuditReport":      reflect.TypeFor[audit.Account](),
		"AuditRevocation":  reflect.TypeFor[audit.Revocation](),
		"AuditTermsView":   reflect.TypeFor[audit.TermsView](),
	} {
		if diff := cmp.Diff(jsonNames(typ), keys(schemaProps(t, doc, schema).Properties)); diff != "" {
			t.Errorf("components.schemas.%s properties differ from %s's JSON (-code +openapi.json):\n%s", schema, typ, diff)
		}
	}
	ev := schemaProps(t, doc, "AuditEvent")
	if diff := cmp.Diff(audit.Actions, ev.Properties["action"].Enum); diff != "" {
		t.Errorf("AuditEvent.action enum differs from audit.Actions (-code +openapi.json):\n%s", diff)
	}
	var outcomes []string
	for _, o := range audit.Outcomes {
		outcomes = append(outcomes, string(o))
	}
	if diff := cmp.Diff(outcomes, ev.Properties["outcome"].Enum); diff != "" {
		t.Errorf("AuditEvent.outcome enum (-code +openapi.json):\n%s", diff)
	}

	op, _, ok := doc.operation(t, route{"GET", "/v1/audit"})
	if !ok {
		t.Fatal("GET /v1/audit is not documented")
	}
	var params []string
	for _, p := range op.Parameters {
		params = append(params, doc.resolve(p).Name)
	}
	slices.Sort(params)
	if diff := cmp.Diff(auditParams, params); diff != "" {
		t.Errorf("GET /v1/audit parameters differ from auditParams (-code +openapi.json):\n%s", diff)
	}
	if !slices.IsSorted(auditParams) {
		t.Error("auditParams is not sorted")
	}
}

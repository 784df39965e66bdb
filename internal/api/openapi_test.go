package api

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// openAPIDocument is the part of an OpenAPI 3.1 document these tests read.
type openAPIDocument struct {
	OpenAPI string `json:"openapi"`
	Info    struct {
		Title   string `json:"title"`
		Version string `json:"version"`
	} `json:"info"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas         map[string]json.RawMessage `json:"schemas"`
		Parameters      map[string]openAPIParam    `json:"parameters"`
		SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
	} `json:"components"`
}

type openAPIParam struct {
	Ref      string `json:"$ref"`
	Name     string `json:"name"`
	In       string `json:"in"`
	Required bool   `json:"required"`
}

type openAPIOperation struct {
	Parameters []openAPIParam             `json:"parameters"`
	Responses  map[string]json.RawMessage `json:"responses"`
}

// route is one "METHOD /path" pattern registered on the mux.
type route struct{ method, path string }

func (r route) String() string { return r.method + " " + r.path }

var httpMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

func loadOpenAPI(t *testing.T) openAPIDocument {
	t.Helper()
	var doc openAPIDocument
	dec := json.NewDecoder(bytes.NewReader(openAPIDoc))
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	if dec.More() {
		t.Fatal("openapi.json has trailing data after the document")
	}
	return doc
}

// registeredRoutes reads the patterns that API.Register passes to mux.Handle and mux.HandleFunc
// in api.go. A ServeMux cannot list its patterns, so the source is the record.
func registeredRoutes(t *testing.T) []route {
	t.Helper()
	return routesIn(t, "api.go", "Register", nil)
}

// serverRoutes reads the routes internal/server registers itself (OAuth, health, metrics). Their
// patterns are string literals or "METHOD " + oauth.PathX, resolved from internal/oauth's constants.
// The catch-all "/" (no method) is not a route of the API.
func serverRoutes(t *testing.T) []route {
	t.Helper()
	consts := map[string]string{}
	fset := token.NewFileSet()
	var files []string
	for _, pkg := range []string{"oauth", "proxy"} {
		fs, err := filepath.Glob("../" + pkg + "/*.go")
		if err != nil || len(fs) == 0 {
			t.Fatalf("list internal/%s: %v", pkg, err)
		}
		files = append(files, fs...)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		pkg := filepath.Base(filepath.Dir(name))
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							consts[pkg+"."+name.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		}
	}
	return routesIn(t, "../server/server.go", "build", consts)
}

// routesIn returns the "METHOD /path" patterns registered with Handle or HandleFunc on a
// *http.ServeMux in function fn of file (a method or, for server.go, a local mux variable).
func routesIn(t *testing.T, file, fn string, consts map[string]string) []route {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	var decl *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == fn {
			decl = fd
		}
	}
	if decl == nil {
		t.Fatalf("%s has no function %s", file, fn)
	}
	// The mux is a *http.ServeMux parameter, or a variable set to http.NewServeMux().
	muxes := map[string]bool{}
	for _, field := range decl.Type.Params.List {
		if star, ok := field.Type.(*ast.StarExpr); ok {
			if sel, ok := star.X.(*ast.SelectorExpr); ok && sel.Sel.Name == "ServeMux" {
				for _, n := range field.Names {
					muxes[n.Name] = true
				}
			}
		}
	}
	ast.Inspect(decl.Body, func(n ast.Node) bool {
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != 1 || len(as.Rhs) != 1 {
			return true
		}
		if call, ok := as.Rhs[0].(*ast.CallExpr); ok {
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewServeMux" {
				if id, ok := as.Lhs[0].(*ast.Ident); ok {
					muxes[id.Name] = true
				}
			}
		}
		return true
	})
	if len(muxes) == 0 {
		t.Fatalf("%s: %s has no *http.ServeMux", file, fn)
	}
	var eval func(e ast.Expr) (string, bool)
	eval = func(e ast.Expr) (string, bool) {
		switch x := e.(type) {
		case *ast.BasicLit:
			if x.Kind == token.STRING {
				s, err := strconv.Unquote(x.Value)
				return s, err == nil
			}
		case *ast.SelectorExpr:
			if id, ok := x.X.(*ast.Ident); ok {
				s, ok := consts[id.Name+"."+x.Sel.Name]
				return s, ok
			}
		case *ast.BinaryExpr:
			if x.Op == token.ADD {
				l, ok1 := eval(x.X)
				r, ok2 := eval(x.Y)
				return l + r, ok1 && ok2
			}
		}
		return "", false
	}
	var routes []route
	ast.Inspect(decl.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") || len(call.Args) == 0 {
			return true
		}
		if recv, ok := sel.X.(*ast.Ident); !ok || !muxes[recv.Name] {
			return true
		}
		pattern, ok := eval(call.Args[0])
		if !ok {
			t.Errorf("%s: cannot read the route pattern (use a string literal or \"METHOD \" + oauth.PathX)", fset.Position(call.Pos()))
			return true
		}
		if pattern == "/" {
			return true // the JSON 404 for everything unmatched
		}
		if strings.HasPrefix(pattern, "/proxy/") {
			// The egress proxy takes every method an upstream may allow; OpenAPI has no
			// multi-segment parameter, so {path...} is documented as {path}.
			path := strings.ReplaceAll(pattern, "{path...}", "{path}")
			for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
				routes = append(routes, route{m, path})
			}
			return true
		}
		method, path, ok := strings.Cut(pattern, " ")
		if !ok || !httpMethods[method] || !strings.HasPrefix(path, "/") {
			t.Errorf("%s: pattern %q has no method; every API route must name one", fset.Position(call.Pos()), pattern)
			return true
		}
		routes = append(routes, route{method, path})
		return true
	})
	if len(routes) == 0 {
		t.Fatalf("found no routes in %s %s", file, fn)
	}
	return routes
}

var pathParamRE = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_]*)\.{0,3}\}`)

func (doc openAPIDocument) operation(t *testing.T, r route) (openAPIOperation, []openAPIParam, bool) {
	t.Helper()
	item, ok := doc.Paths[r.path]
	if !ok {
		return openAPIOperation{}, nil, false
	}
	raw, ok := item[strings.ToLower(r.method)]
	if !ok {
		return openAPIOperation{}, nil, false
	}
	var op openAPIOperation
	if err := json.Unmarshal(raw, &op); err != nil {
		t.Fatalf("%s: operation is malformed: %v", r, err)
	}
	var shared []openAPIParam
	if p, ok := item["parameters"]; ok {
		if err := json.Unmarshal(p, &shared); err != nil {
			t.Fatalf("%s: path parameters are malformed: %v", r.path, err)
		}
	}
	return op, shared, true
}

func (doc openAPIDocument) resolve(p openAPIParam) openAPIParam {
	if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
		return doc.Components.Parameters[name]
	}
	return p
}

func TestOpenAPIDocumentIsOpenAPI31(t *testing.T) {
	doc := loadOpenAPI(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi = %q, want 3.1.x", doc.OpenAPI)
	}
	if doc.Info.Title == "" || doc.Info.Version == "" {
		t.Error("info.title and info.version are required")
	}
	if len(doc.Paths) == 0 {
		t.Error("no paths")
	}
	for _, name := range []string{"Error", "Agent", "Key", "Registered", "User", "APIToken", "SigningKey", "RevocationFeed", "TokenResponse", "Introspection", "ServerMetadata"} {
		if _, ok := doc.Components.Schemas[name]; !ok {
			t.Errorf("components.schemas.%s is missing", name)
		}
	}
	for _, name := range []string{"apiToken", "dpop", "privateKeyJwt"} {
		if _, ok := doc.Components.SecuritySchemes[name]; !ok {
			t.Errorf("components.securitySchemes.%s is missing", name)
		}
	}
}

// TestOpenAPIDocumentsEveryRoute fails when a route is added to API.Register (or to the server's
// mux in internal/server) without its operation in openapi.json, and when openapi.json describes a /v1 route
// that API.Register does not serve.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t)
	apiRoutes := registeredRoutes(t)
	served := map[route]bool{}
	for _, r := range append(apiRoutes, serverRoutes(t)...) {
		served[r] = true
		op, shared, ok := doc.operation(t, r)
		if !ok {
			t.Errorf("%s is served but not documented in openapi.json (paths[%q].%s)", r, r.path, strings.ToLower(r.method))
			continue
		}
		if len(op.Responses) == 0 {
			t.Errorf("%s: no responses documented", r)
		}
		declared := map[string]bool{}
		for _, p := range append(shared, op.Parameters...) {
			p = doc.resolve(p)
			if p.In == "path" {
				if !p.Required {
					t.Errorf("%s: path parameter %q must be required", r, p.Name)
				}
				declared[p.Name] = true
			}
		}
		want := map[string]bool{}
		for _, m := range pathParamRE.FindAllStringSubmatch(r.path, -1) {
			want[m[1]] = true
			if !declared[m[1]] {
				t.Errorf("%s: path parameter {%s} is not declared (in: path, required: true)", r, m[1])
			}
		}
		for name := range declared {
			if !want[name] {
				t.Errorf("%s: declares path parameter %q that the path does not have", r, name)
			}
		}
	}

	var extra []string
	for path, item := range doc.Paths {
		for method := range item {
			m := strings.ToUpper(method)
			if !httpMethods[m] {
				continue // parameters, summary, description
			}
			if r := (route{m, path}); !served[r] {
				extra = append(extra, r.String())
			}
		}
	}
	sort.Strings(extra)
	for _, r := range extra {
		t.Errorf("openapi.json documents %s, which no handler serves", r)
	}
}

// TestOpenAPIRefsResolve checks that every local $ref points at something in the document.
func TestOpenAPIRefsResolve(t *testing.T) {
	var root any
	if err := json.Unmarshal(openAPIDoc, &root); err != nil {
		t.Fatal(err)
	}
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				if !strings.HasPrefix(ref, "#/") {
					t.Errorf("%s: $ref %q is not local", at, ref)
				} else if !pointerExists(root, strings.Split(strings.TrimPrefix(ref, "#/"), "/")) {
					t.Errorf("%s: $ref %q does not resolve", at, ref)
				}
			}
			for k, e := range x {
				walk(e, at+"/"+k)
			}
		case []any:
			for i, e := range x {
				walk(e, at+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(root, "#")
}

func pointerExists(v any, parts []string) bool {
	for _, p := range parts {
		p = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		if v, ok = m[p]; !ok {
			return false
		}
	}
	return true
}

// TestOpenAPIServed checks that GET /v1/openapi.json answers the embedded document.
func TestOpenAPIServed(t *testing.T) {
	mux := http.NewServeMux()
	New(Config{AgentAuth: func(h http.Handler) http.Handler { return h }}).Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /v1/openapi.json: %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !bytes.Equal(rec.Body.Bytes(), openAPIDoc) {
		t.Error("the served document differs from openapi.json")
	}
}

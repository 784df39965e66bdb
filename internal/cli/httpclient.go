package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/client"
)

// requestTimeout bounds every call the CLI makes.
const requestTimeout = 30 * time.Second

func newHTTPClient() *http.Client { return &http.Client{Timeout: requestTimeout} }

// serverError is an error answered by the server: {"error","error_description","request_id"}.
type serverError struct {
	Status      int
	Code        string
	Description string
	RequestID   string
}

// Error reads "<description> (<code>, request <id>)"; Main prefixes "error: ".
func (e *serverError) Error() string {
	desc := e.Description
	if desc == "" {
		desc = http.StatusText(e.Status)
	}
	var meta []string
	if e.Code != "" {
		meta = append(meta, e.Code)
	} else if e.Status != 0 {
		meta = append(meta, fmt.Sprintf("HTTP %d", e.Status))
	}
	if e.RequestID != "" {
		meta = append(meta, "request "+e.RequestID)
	}
	if len(meta) == 0 {
		return desc
	}
	return desc + " (" + strings.Join(meta, ", ") + ")"
}

func readServerError(resp *http.Response) *serverError {
	e := client.ReadError(resp)
	return &serverError{Status: e.Status, Code: e.Code, Description: e.Description, RequestID: e.RequestID}
}

// unreachableError says the server could not be reached and what to do about it.
type unreachableError struct {
	Server string
	Err    error
}

func (e *unreachableError) Error() string {
	if errors.Is(e.Err, http.ErrSchemeMismatch) {
		plain := "http://" + strings.TrimPrefix(e.Server, "https://")
		return fmt.Sprintf("%s answers plain http, not https: use --server %s (or put a TLS proxy in front of it)", e.Server, plain)
	}
	return fmt.Sprintf("cannot reach %s: %v\nis mandate serve running at %s? start it with: mandate serve", e.Server, rootCause(e.Err), e.Server)
}

func (e *unreachableError) Unwrap() error { return e.Err }

// rootCause drops the wrappers ("client: POST ...", "Get \"...\": ...") down to the network
// error.
func rootCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// explain turns an error from the client SDK into what the CLI prints: the server's answer as
// "<description> (<code>, request <id>)", a network failure with what to do. Other errors pass.
func explain(err error, server string) error {
	if err == nil {
		return nil
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		return &serverError{Status: ce.Status, Code: ce.Code, Description: ce.Description, RequestID: ce.RequestID}
	}
	var se *serverError
	var ue *unreachableError
	if errors.As(err, &se) || errors.As(err, &ue) {
		return err
	}
	if isNetworkError(err) {
		return &unreachableError{Server: server, Err: err}
	}
	return err
}

func isNetworkError(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	return errors.As(err, &oe) || errors.As(err, &de) || errors.As(err, &ne)
}

// apiClient calls the management API with an API token.
type apiClient struct {
	server string // no trailing slash
	token  string // the API token; "" for unauthenticated calls
	hc     *http.Client
}

// do sends a JSON request and decodes a 2xx answer into out (when not nil). It returns the raw
// answer for --json. Any other status is a *serverError; a transport failure an
// *unreachableError.
// callAPI is call with the command's management client: done is true when the command has
// nothing left to do (an error, or --json has printed the answer).
func callAPI(cmd *cobra.Command, method, path string, in, out any) (done bool, err error) {
	c, err := managementClient(cmd)
	if err != nil {
		return true, err
	}
	printed, err := c.call(cmd, method, path, in, out)
	return printed || err != nil, err
}

// call is do for a command: with --json it prints the server's answer as it came and reports
// printed, so the command renders its table only otherwise.
func (c *apiClient) call(cmd *cobra.Command, method, path string, in, out any) (printed bool, err error) {
	raw, err := c.do(cmd.Context(), method, path, in, out)
	if err != nil {
		return false, err
	}
	if wantJSON(cmd) {
		return true, printJSON(cmd.OutOrStdout(), raw)
	}
	return false, nil
}

func (c *apiClient) do(ctx context.Context, method, path string, in, out any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, body)
	if err != nil {
		return nil, fmt.Errorf("bad server URL %q: %w", c.server, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &unreachableError{Server: c.server, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, readServerError(resp)
	}
	raw, err := readJSON(resp, out)
	if err != nil {
		var ue *unreachableError
		if errors.As(err, &ue) {
			ue.Server = c.server
		}
		return nil, err
	}
	return raw, nil
}

// readJSON reads a successful answer (at most 4 MiB) and decodes it into out when out is not
// nil and the body is not empty. It returns the raw body.
func readJSON(resp *http.Response, out any) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, &unreachableError{Server: resp.Request.URL.Scheme + "://" + resp.Request.URL.Host, Err: err}
	}
	if out != nil && len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("the answer of %s %s is not the expected JSON: %w", resp.Request.Method, resp.Request.URL.Path, err)
		}
	}
	return raw, nil
}

// loginRefused explains a token that the server refused at login, where "log in again" (the
// server's advice for a saved token) points the wrong way.
func loginRefused(err error) error {
	var se *serverError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized || strings.Contains(se.Description, "bootstrap token") {
		return err // about the bootstrap token: the server's answer already says what to do
	}
	return fmt.Errorf("the server refused this token: it is unknown, revoked or expired (%s, request %s)\n"+
		"check the token you gave; the first admin's is in <data-dir>/bootstrap-token, and an admin makes others with mandate tokens create", se.Code, se.RequestID)
}

// normalizeServer checks a server URL and drops a trailing slash, as the server does with its
// issuer.
func normalizeServer(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", fmt.Errorf("no server: pass --server URL, e.g. http://127.0.0.1:8420, or set %s", envServer)
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--server %q: want the server's URL, e.g. http://127.0.0.1:8420", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--server %q: must not have a query or fragment", raw)
	}
	return strings.TrimSuffix(s, "/"), nil
}

// fetchMetadata reads the server's RFC 8414 metadata and checks that it names server as its
// issuer, so nothing is sent to or trusted from a server that calls itself something else.
func fetchMetadata(ctx context.Context, hc *http.Client, server string) (*serverMetadata, error) {
	c := &apiClient{server: server, hc: hc}
	var md serverMetadata
	if _, err := c.do(ctx, http.MethodGet, "/.well-known/oauth-authorization-server", nil, &md); err != nil {
		return nil, err
	}
	if md.Issuer != server {
		return nil, fmt.Errorf("the server at %s calls itself %q: use exactly that URL as --server", server, md.Issuer)
	}
	return &md, nil
}

type serverMetadata struct {
	Issuer        string `json:"issuer"`
	TokenEndpoint string `json:"token_endpoint"`
	JWKSURI       string `json:"jwks_uri"`
}

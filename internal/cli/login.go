package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

func newLoginCmd() *cobra.Command {
	var server, token, tokenFile string
	cmd := &cobra.Command{
		Use:   "login --server URL [--token T | --token-file F]",
		Short: "Save an API token for the management commands",
		Long: `Check an API token against the server and save it, with the server URL, in
<config dir>/config.json (mode 0600). The config dir is $MANDATE_CONFIG_DIR, else your user
config directory + /mandate.

The token comes from --token-file, --token, or else standard input. On first start the server
writes an admin token to <data-dir>/bootstrap-token.`,
		Example: "  mandate login --server http://127.0.0.1:8420 --token-file mandate-data/bootstrap-token",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := normalizeServer(server)
			if err != nil {
				return err
			}
			secret, err := readLoginToken(cmd, token, tokenFile)
			if err != nil {
				return err
			}
			c := &apiClient{server: srv, token: secret, hc: newHTTPClient()}
			var u api.UserJSON
			raw, err := c.do(cmd.Context(), http.MethodGet, "/v1/whoami", nil, &u)
			if err != nil {
				return loginRefused(err)
			}
			path, err := saveLogin(loginConfig{Server: srv, Token: secret})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, map[string]any{"server": srv, "config": path, "user": jsonRaw(raw)})
			}
			role := ""
			if u.Admin {
				role = " (admin)"
			}
			fmt.Fprintf(out, "Logged in to %s as %s%s\n", srv, u.Name, role)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, serverFlag, "", "the server's URL, e.g. http://127.0.0.1:8420 (required)")
	cmd.Flags().StringVar(&token, "token", "", "the API token (visible to other users in the process list; prefer --token-file or stdin)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "read the API token from this file")
	cmd.MarkFlagsMutuallyExclusive("token", "token-file")
	addJSONFlag(cmd)
	return cmd
}

// readLoginToken returns the token from --token, --token-file or stdin.
func readLoginToken(cmd *cobra.Command, token, tokenFile string) (string, error) {
	switch {
	case token != "":
		return strings.TrimSpace(token), nil
	case tokenFile != "":
		if err := waitForTokenFile(cmd, tokenFile); err != nil {
			return "", err
		}
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("reading the token: %w", err)
		}
		if t := strings.TrimSpace(string(data)); t != "" {
			return t, nil
		}
		return "", fmt.Errorf("%s is empty", tokenFile)
	}
	in := cmd.InOrStdin()
	var line string
	if isTerminal(in) {
		b, err := readHidden(cmd, "API token (not shown): ", 4096)
		if err != nil {
			return "", fmt.Errorf("reading the token: %w", err)
		}
		line = string(b)
	} else {
		b, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading the token from stdin: %w", err)
		}
		line = b
	}
	if t := strings.TrimSpace(line); t != "" {
		return t, nil
	}
	return "", errors.New("no API token: pass --token-file FILE (the first admin token is in <data-dir>/bootstrap-token), --token T, or pipe it on stdin")
}

func newLogoutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logout",
		Short: "Forget the saved login",
		Long: `Remove <config dir>/config.json. The API token itself stays valid on the server until it
expires or is revoked with mandate tokens revoke.`,
		Example: "  mandate logout",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := loginPath()
			if err != nil {
				return err
			}
			login, lerr := loadLogin()
			err = os.Remove(path)
			if errors.Is(err, fs.ErrNotExist) {
				if wantJSON(cmd) {
					return printJSON(cmd.OutOrStdout(), map[string]any{"logged_out": false})
				}
				fmt.Fprintln(cmd.OutOrStdout(), "Not logged in.")
				return nil
			}
			if err != nil {
				return fmt.Errorf("removing %s: %w", path, err)
			}
			server := ""
			if lerr == nil && login != nil {
				server = login.Server
			}
			if wantJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), map[string]any{"logged_out": true, "server": server, "config": path})
			}
			if server != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "Logged out of %s.\n", server)
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "Logged out.")
			}
			return nil
		},
	}
	addJSONFlag(cmd)
	return cmd
}

// isTerminal reports whether r is an interactive terminal. A variable so tests can pretend.
var isTerminal = stdinIsTerminal

func stdinIsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	// Not a mode check: /dev/null is a character device too.
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

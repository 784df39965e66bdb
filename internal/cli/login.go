package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/server"
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
writes a one-time bootstrap token to <data-dir>/bootstrap-token: login exchanges it for a new
API token of the admin ("login <host> <date>", see mandate tokens list), saves that, and the
server removes the file. Unused, it expires 24 h after the first start.`,
		Example: "  mandate login --server http://127.0.0.1:8420 --token-file mandate-data/bootstrap-token",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := normalizeServer(server)
			if err != nil {
				return err
			}
			secret, err := readLoginToken(cmd, srv, token, tokenFile)
			if err != nil {
				return err
			}
			c := &apiClient{server: srv, token: secret, hc: newHTTPClient()}
			// The server answers an API token with its user, and exchanges the bootstrap token
			// (which works nowhere else) for a new named API token: that one is saved.
			var res api.LoginJSON
			if _, err := c.do(cmd.Context(), http.MethodPost, "/v1/login", map[string]string{"name": loginTokenName()}, &res); err != nil {
				return loginRefused(err)
			}
			if res.Token != nil {
				secret = res.Token.Token
			}
			path, err := saveLogin(loginConfig{Server: srv, Token: secret})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				j := map[string]any{"server": srv, "config": path, "user": res.User}
				if res.Token != nil {
					j["token_id"] = res.Token.ID
				}
				return printJSON(out, j)
			}
			role := ""
			if res.User.Admin {
				role = " (admin)"
			}
			fmt.Fprintf(out, "Logged in to %s as %s%s\n", srv, res.User.Name, role)
			if res.Token != nil {
				fmt.Fprintf(out, "The bootstrap token is used up; saved the new API token %s (%q), listed by mandate tokens list.\n", res.Token.ID, res.Token.Name)
			}
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

// loginTokenName names the API token a login with the bootstrap token makes.
func loginTokenName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return "login " + host + " " + time.Now().UTC().Format(time.DateOnly)
}

// readLoginToken returns the token from --token, --token-file or stdin.
func readLoginToken(cmd *cobra.Command, srv, token, tokenFile string) (string, error) {
	switch {
	case token != "":
		return strings.TrimSpace(token), nil
	case tokenFile != "":
		if err := waitForTokenFile(cmd, tokenFile, func() bool { return answers(cmd.Context(), srv) }); err != nil {
			return "", err
		}
		data, err := os.ReadFile(tokenFile)
		if errors.Is(err, fs.ErrNotExist) && filepath.Base(tokenFile) == server.BootstrapFile {
			return "", fmt.Errorf("%s does not exist: the server writes it on its first start and removes it once the bootstrap token is used (or expired); ask an admin for a token: mandate tokens create", tokenFile)
		}
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

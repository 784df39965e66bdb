package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

// Environment variables the CLI reads.
const (
	envConfigDir = "MANDATE_CONFIG_DIR" // where config.json (and by default the agent key) live
	envToken     = "MANDATE_TOKEN"      // an API token to use instead of the saved login (CI)
	envAgentKey  = "MANDATE_AGENT_KEY"  // the agent key file: --key-file (see clientEnv)
	envServer    = "MANDATE_SERVER"     // the server's URL: --server (see clientEnv)
)

const (
	loginFile      = "config.json"
	agentStateFile = "agent.json"
)

// configDir is $MANDATE_CONFIG_DIR, else the user's config directory + /mandate.
func configDir() (string, error) {
	if d := os.Getenv(envConfigDir); d != "" {
		return d, nil
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no config directory: %w (set %s)", err, envConfigDir)
	}
	return filepath.Join(base, "mandate"), nil
}

// loginConfig is what mandate login saves.
type loginConfig struct {
	Server string `json:"server"`
	Token  string `json:"token"`
}

func loginPath() (string, error) {
	dir, err := configDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, loginFile), nil
}

// loadLogin returns the saved login, or nil when there is none.
func loadLogin() (*loginConfig, error) {
	path, err := loginPath()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var c loginConfig
	if err := json.Unmarshal(data, &c); err != nil || c.Server == "" || c.Token == "" {
		return nil, fmt.Errorf("%s is not a mandate login (run mandate logout, then mandate login again)", path)
	}
	return &c, nil
}

func saveLogin(c loginConfig) (string, error) {
	path, err := loginPath()
	if err != nil {
		return "", err
	}
	return path, writeJSONFile(path, c)
}

// writeJSONFile writes v to path atomically (temporary file, then rename) with mode 0600,
// creating the directory with mode 0700.
func writeJSONFile(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// errNotLoggedIn is the error of every management command run before mandate login.
var errNotLoggedIn = errors.New("not logged in: run mandate login --server URL --token-file <data-dir>/bootstrap-token")

// serverFlag is --server on the commands that talk to a server.
const serverFlag = "server"

// managementClient builds the API client of a management command: the server is --server (or
// $MANDATE_SERVER), else the saved login's; the token is $MANDATE_TOKEN, else the saved login's.
// The saved token is never sent to another server than the one it was saved for.
func managementClient(cmd *cobra.Command) (*apiClient, error) {
	flagServer, _ := cmd.Flags().GetString(serverFlag)
	from := "--server"
	if f := cmd.Flags().Lookup(serverFlag); f != nil && !f.Changed {
		from = envServer
	}
	if flagServer != "" {
		s, err := normalizeServer(flagServer)
		if err != nil {
			return nil, err
		}
		flagServer = s
	}
	if tok := os.Getenv(envToken); tok != "" {
		server := flagServer
		if server == "" {
			login, err := loadLogin()
			if err != nil {
				return nil, err
			}
			if login == nil {
				return nil, fmt.Errorf("%s is set but no server is known: pass --server URL", envToken)
			}
			server = login.Server
		}
		return &apiClient{server: server, token: tok, hc: newHTTPClient()}, nil
	}
	login, err := loadLogin()
	if err != nil {
		return nil, err
	}
	if login == nil {
		return nil, errNotLoggedIn
	}
	if flagServer != "" && flagServer != login.Server {
		return nil, fmt.Errorf("you are logged in to %s, not %s (%s): run mandate login --server %s first (or set %s)", login.Server, flagServer, from, flagServer, envToken)
	}
	return &apiClient{server: login.Server, token: login.Token, hc: newHTTPClient()}, nil
}

// agentState is what mandate agent register saves beside the key file.
type agentState struct {
	Server  string `json:"server"`
	AgentID string `json:"agent_id"`
	Handle  string `json:"handle"`
	DID     string `json:"did"`
}

// keyFileFlag is --key-file on the agent commands.
const keyFileFlag = "key-file"

// agentKeyPath is --key-file (or $MANDATE_AGENT_KEY), else <config dir>/agent/key.jwk.
func agentKeyPath(cmd *cobra.Command) (string, error) {
	if p, _ := cmd.Flags().GetString(keyFileFlag); p != "" {
		return p, nil
	}
	dir, err := configDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "agent", "key.jwk"), nil
}

func agentStatePath(keyPath string) string {
	return filepath.Join(filepath.Dir(keyPath), agentStateFile)
}

// loadAgentState reads agent.json beside the key file; nil when the agent is not registered.
func loadAgentState(keyPath string) (*agentState, error) {
	path := agentStatePath(keyPath)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var st agentState
	if err := json.Unmarshal(data, &st); err != nil || st.Server == "" || st.AgentID == "" {
		return nil, fmt.Errorf("%s is not a mandate agent registration", path)
	}
	return &st, nil
}

// requireAgentState is loadAgentState for commands that need a registered agent.
func requireAgentState(keyPath string) (*agentState, error) {
	st, err := loadAgentState(keyPath)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("no registered agent beside %s (no %s): run mandate agent init, then mandate agent register --server URL --handle NAME", keyPath, agentStateFile)
	}
	return st, nil
}

// tokenFileWait is how long mandate login waits for a --token-file that is not there yet.
const tokenFileWait = 15 * time.Second

// waitForTokenFile waits, saying so, for a token file that does not exist yet or is still empty:
// "mandate serve &" followed at once by "mandate login --token-file mandate-data/bootstrap-token"
// races the server writing it. It stops waiting as soon as serverUp reports the server answering:
// a server writes the file before it serves, so a file still missing then will not appear (it
// was used, or expired, and removed).
func waitForTokenFile(cmd *cobra.Command, path string, serverUp func() bool) error {
	ready := func() bool {
		fi, err := os.Stat(path)
		return (err == nil && fi.Size() > 0) || (err != nil && !errors.Is(err, fs.ErrNotExist))
	}
	if ready() || serverUp() {
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Waiting for %s to appear (is mandate serve starting?)...\n", path)
	giveUp := time.After(tokenFileWait)
	for !ready() {
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-giveUp:
			return fmt.Errorf("no token in %s after %v: start the server first (mandate serve), or give the --token-file of a running one", path, tokenFileWait)
		case <-time.After(200 * time.Millisecond):
		}
		if !ready() && serverUp() {
			return nil
		}
	}
	return nil
}

// answers reports whether the server at srv answers its health check at once.
func answers(ctx context.Context, srv string) bool {
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv+"/healthz", nil)
	if err != nil {
		return false
	}
	res, err := newHTTPClient().Do(req)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

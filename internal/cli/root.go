// Package cli is the mandate command line: one file per command group.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/internal/buildinfo"
	"github.com/mandate-dev/mandate/internal/config"
)

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := NewRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			return int(ee) // a child's exit status (mandate exec): it has spoken for itself
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// NewRoot builds the command tree writing to out and errOut (tests pass buffers).
func NewRoot(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "mandate",
		Short:         "Identity, delegation and task-scoped credentials for AI agents",
		Version:       buildinfo.Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		// The one precedence of every command's settings: flags > MANDATE_* > --config file >
		// defaults. No command defines its own PersistentPreRunE, so this one always runs.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return config.Resolve(cmd.Flags(), os.Getenv)
		},
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(newServeCmd())
	root.AddCommand(newLoginCmd(), newLogoutCmd())
	root.AddCommand(newUsersCmd(), newTokensCmd(), newAgentsCmd(), newKeysCmd())
	root.AddCommand(newAgentCmd(), newTokenCmd())
	root.AddCommand(newGrantCmd(), newTaskCmd())
	root.AddCommand(newUpstreamCmd())
	root.AddCommand(newExecCmd())
	root.AddCommand(newVaultCmd())
	root.AddCommand(newMasterKeyCmd())
	root.AddCommand(newServiceAccountsCmd(), newFederationCmd(), newAuditCmd())
	root.AddCommand(newBenchCmd())
	walk(root, func(c *cobra.Command) {
		bindClientEnv(c)
		switch {
		case c.HasSubCommands() && c.RunE != nil:
			// A group that does something alone (audit searches): a word after it is a
			// misspelt command.
			run := c.RunE
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return runGroup(cmd, args)
				}
				return run(cmd, args)
			}
			c.Annotations = map[string]string{runsAlone: "true"}
		case c.HasSubCommands():
			c.Args, c.RunE = cobra.ArbitraryArgs, runGroup
		}
	})
	return root
}

// clientEnv are the client settings that have an environment variable, on whichever command
// has the flag: the server's URL and the agent's key file.
var clientEnv = map[string]string{
	serverFlag:  envServer,
	keyFileFlag: envAgentKey,
}

func bindClientEnv(c *cobra.Command) {
	for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
		for name, env := range clientEnv {
			if fs.Lookup(name) != nil {
				config.WithEnv(fs, name, env)
			}
		}
	}
}

func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		walk(sub, f)
	}
}

// runsAlone annotates a group that runs alone rather than showing its help.
const runsAlone = "runs-alone"

// runGroup runs a command group: alone it shows the group's help; with a word that names none
// of its commands it fails, with the commands that word was probably meant to be.
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	return unknownCommand(cmd, args)
}

// unknownCommand refuses args[0], which names none of cmd's commands.
func unknownCommand(cmd *cobra.Command, args []string) error {
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	cmd.SuggestionsMinimumDistance = 2 // cobra's own default, which it sets only on the root's path
	if near := cmd.SuggestionsFor(args[0]); len(near) > 0 {
		return fmt.Errorf("%s; did you mean %s?", msg, strings.Join(near, " or "))
	}
	return fmt.Errorf("%s; its commands are listed by %s --help", msg, cmd.CommandPath())
}

// Package cli is the mandate command line: one file per command group.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
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
		SilenceUsage:  true,
		SilenceErrors: true,
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
	root.AddCommand(newServiceAccountsCmd(), newFederationCmd(), newAuditCmd())
	return root
}

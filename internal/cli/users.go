package cli

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

// managementGroup is a command group of the management API: --json and --server for all of it.
func managementGroup(use, short string) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs}
	addJSONFlag(cmd)
	cmd.PersistentFlags().String(serverFlag, "", "the server's URL (default: the one you logged in to)")
	return cmd
}

func newUsersCmd() *cobra.Command {
	cmd := managementGroup("users", "Create and list users (admin)")

	var admin bool
	create := &cobra.Command{
		Use:     "create NAME [--admin]",
		Short:   "Create a user",
		Example: "  mandate users create alice\n  mandate users create bob --admin",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			var u api.UserJSON
			raw, err := c.do(cmd.Context(), http.MethodPost, "/v1/users", map[string]any{"name": args[0], "admin": admin}, &u)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, raw)
			}
			role := "user"
			if u.Admin {
				role = "admin"
			}
			fmt.Fprintf(out, "Created %s %s (%s).\nGive them an API token with: mandate tokens create --user %s\n", role, u.Name, u.ID, u.Name)
			return nil
		},
	}
	create.Flags().BoolVar(&admin, "admin", false, "make the user an admin")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List users",
		Example: "  mandate users list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			var res struct {
				Users []api.UserJSON `json:"users"`
			}
			if printed, err := c.call(cmd, http.MethodGet, "/v1/users", nil, &res); printed || err != nil {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "NAME", "ADMIN", "CREATED")
			for _, u := range res.Users {
				t.row(u.ID, u.Name, yesNo(u.Admin), ago(u.CreatedAt, now))
			}
			return t.flush()
		},
	}
	cmd.AddCommand(create, list)
	return cmd
}

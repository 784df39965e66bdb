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
	var mayScopes, mayResources []string
	create := &cobra.Command{
		Use:   "create NAME [--admin] [--may-grant-scope S --may-grant-resource URI]",
		Short: "Create a user",
		Long: `Create a user. With --may-grant-scope and --may-grant-resource the user may delegate to
agents only those scopes on those resources; without them the user may grant anything.`,
		Example: "  mandate users create alice\n  mandate users create bob --admin\n" +
			"  mandate users create carol --may-grant-scope repo:read --may-grant-resource https://api.github.com/",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			var u api.UserJSON
			body := map[string]any{"name": args[0], "admin": admin}
			if len(mayScopes) > 0 || len(mayResources) > 0 {
				body["grantable"] = map[string]any{"scopes": splitScopes(mayScopes), "resources": mayResources}
			}
			raw, err := c.do(cmd.Context(), http.MethodPost, "/v1/users", body, &u)
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
	create.Flags().StringArrayVar(&mayScopes, "may-grant-scope", nil, "the only scopes the user may delegate (repeatable, or space-separated)")
	create.Flags().StringArrayVar(&mayResources, "may-grant-resource", nil, "the only resources the user may delegate (repeatable)")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List users",
		Example: "  mandate users list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Users []api.UserJSON `json:"users"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/users", nil, &res); done {
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

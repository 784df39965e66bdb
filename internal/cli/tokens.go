package cli

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

// tokenStatus is active, revoked or expired at now.
func tokenStatus(t api.TokenJSON, now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "active"
}

func newTokensCmd() *cobra.Command {
	cmd := managementGroup("tokens", "Create, list and revoke API tokens")

	var user, name string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create [--user U] [--name N] [--ttl 720h]",
		Short: "Create an API token (the secret is shown once)",
		Long: `Create an API token for yourself, or (admin) for --user, given by id or name. The secret
is printed this once; the server keeps only its hash. --ttl 0 makes a token that never expires.`,
		Example: "  mandate tokens create --user alice --name laptop --ttl 168h",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return fmt.Errorf("--ttl %v: want a positive duration such as 720h, or 0 for no expiry", ttl)
			}
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			req := map[string]any{"user": user, "name": name}
			if ttl > 0 {
				req["ttl"] = ttl.String()
			}
			var t api.TokenJSON
			raw, err := c.do(cmd.Context(), http.MethodPost, "/v1/tokens", req, &t)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wantJSON(cmd) {
				return printJSON(out, raw)
			}
			now := time.Now()
			tb := newTable(out)
			tb.row("id", t.ID)
			tb.row("user", t.UserID)
			tb.row("name", t.Name)
			tb.row("expires", whenPtr(t.ExpiresAt, now))
			tb.row("token", t.Token)
			if err := tb.flush(); err != nil {
				return err
			}
			fmt.Fprintln(out, "\nThis token is shown only once: store it now. The server keeps only its hash.")
			return nil
		},
	}
	create.Flags().StringVar(&user, "user", "", "the user (id or name) the token is for; default yourself")
	create.Flags().StringVar(&name, "name", "", `a label for the token (default "cli")`)
	create.Flags().DurationVar(&ttl, "ttl", 720*time.Hour, "lifetime of the token; 0 for no expiry")

	var listUser string
	list := &cobra.Command{
		Use:     "list [--user U]",
		Short:   "List API tokens (never their secrets)",
		Example: "  mandate tokens list --user alice",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/tokens"
			if listUser != "" {
				path += "?" + url.Values{"user": {listUser}}.Encode()
			}
			var res struct {
				Tokens []api.TokenJSON `json:"tokens"`
			}
			if done, err := callAPI(cmd, http.MethodGet, path, nil, &res); done {
				return err
			}
			now := time.Now()
			t := newTable(cmd.OutOrStdout(), "ID", "NAME", "USER", "STATUS", "CREATED", "EXPIRES")
			for _, x := range res.Tokens {
				t.row(x.ID, x.Name, x.UserID, tokenStatus(x, now), ago(x.CreatedAt, now), agoPtr(x.ExpiresAt, now))
			}
			return t.flush()
		},
	}
	list.Flags().StringVar(&listUser, "user", "", "list another user's tokens (admin; id or name)")

	revoke := &cobra.Command{
		Use:     "revoke ID",
		Short:   "Revoke an API token",
		Example: "  mandate tokens revoke tok_01J9Z3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managementClient(cmd)
			if err != nil {
				return err
			}
			if _, err := c.do(cmd.Context(), http.MethodDelete, "/v1/tokens/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			if wantJSON(cmd) {
				return printJSON(cmd.OutOrStdout(), map[string]any{"id": args[0], "revoked": true})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked API token %s.\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

package cli

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/api"
)

// keyStates names each published key's role at now: the newest key already active is
// "signing"; newer ones are "published" (they sign later); older ones "retiring".
func keyStates(keys []api.SigningKeyJSON, now time.Time) []string {
	signing := -1
	for i, k := range keys {
		if !k.ActiveAt.After(now) && (signing < 0 || k.ActiveAt.After(keys[signing].ActiveAt)) {
			signing = i
		}
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		switch {
		case i == signing:
			out[i] = "signing"
		case k.ActiveAt.After(now):
			out[i] = "published"
		default:
			out[i] = "retiring"
		}
	}
	return out
}

func newKeysCmd() *cobra.Command {
	cmd := managementGroup("keys", "List and rotate the server's token signing keys (admin)")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List the published signing keys",
		Example: "  mandate keys list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res struct {
				Keys []api.SigningKeyJSON `json:"keys"`
			}
			if done, err := callAPI(cmd, http.MethodGet, "/v1/keys", nil, &res); done {
				return err
			}
			now := time.Now()
			states := keyStates(res.Keys, now)
			t := newTable(cmd.OutOrStdout(), "KID", "ALG", "STATE", "CREATED", "SIGNS FROM", "PUBLISHED UNTIL")
			for i, k := range res.Keys {
				t.row(k.KID, k.Alg, states[i], ago(k.CreatedAt, now), ago(k.ActiveAt, now), agoPtr(k.PublishUntil, now))
			}
			return t.flush()
		},
	}

	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new signing key: published now, signing after the publish delay",
		Long: `Add a new signing key. It is published in the JWKS at once and starts signing after the
server's --key-publish-delay, so verifiers have fetched it first; the old key stays published
until the last token it signed has expired.`,
		Example: "  mandate keys rotate",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var k api.SigningKeyJSON
			if done, err := callAPI(cmd, http.MethodPost, "/v1/keys/rotate", nil, &k); done {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "New signing key %s (%s) is published now and starts signing at %s.\n",
				k.KID, k.Alg, when(k.ActiveAt, time.Now()))
			return nil
		},
	}
	cmd.AddCommand(list, rotate)
	return cmd
}

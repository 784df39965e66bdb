// Command mandate is the authorization server, the CLI people use to grant and revoke, and the
// CLI agents use to get their identity and tokens.
package main

import (
	"os"

	"github.com/mandate-dev/mandate/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }

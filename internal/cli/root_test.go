package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/mandate-dev/mandate/internal/buildinfo"
)

// runsAlone are the commands with commands under them that do something of their own.
var runsAlone = map[string]bool{"mandate audit": true}

// Every command group, the root included, refuses a word that names none of its commands (it
// used to print its help and exit 0), and suggests the command meant.
func TestUnknownSubcommand(t *testing.T) {
	groups := 0
	walk(NewRoot(io.Discard, io.Discard), func(c *cobra.Command) {
		if !c.HasSubCommands() {
			return
		}
		groups++
		path := strings.Fields(c.CommandPath())[1:]
		var first string
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() && len(sub.Name()) >= 4 {
				first = sub.Name()
				break
			}
		}
		if first == "" {
			t.Fatalf("%s has no command to misspell", c.CommandPath())
		}
		typo := first[:1] + first[2:] // "list" -> "lst"
		t.Run(c.CommandPath()+" "+typo, func(t *testing.T) {
			fails(t, "", append(path, typo), `unknown command "`+typo+`" for "`+c.CommandPath()+`"`, "did you mean", first)
			fails(t, "", append(path, "zzzzzzzz"), `unknown command "zzzzzzzz"`, c.CommandPath()+" --help")
			// Alone, a group still shows its help (a command that runs alone, as mandate audit, runs).
			if !runsAlone[c.CommandPath()] {
				hasAll(t, ok(t, path...), "Available Commands:")
			}
		})
	})
	if groups < 12 {
		t.Errorf("only %d command groups found", groups)
	}
}

func TestVersion(t *testing.T) {
	out := ok(t, "--version")
	if want := "mandate version " + buildinfo.Version() + "\n"; out != want {
		t.Errorf("mandate --version = %q, want %q", out, want)
	}
}

package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// readHidden asks for a secret on the terminal: the prompt goes to standard error and what is
// typed is not echoed (term.ReadPassword), so that it is not left on the screen or in a
// terminal recording. It is called only when isTerminal(stdin); a reader that is no real
// terminal (tests pretending) gives a line as typed.
func readHidden(cmd *cobra.Command, prompt string, limit int64) ([]byte, error) {
	errOut := cmd.ErrOrStderr()
	fmt.Fprint(errOut, prompt)
	defer fmt.Fprintln(errOut) // the Enter that was not echoed
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b, err := term.ReadPassword(int(f.Fd()))
		if err != nil {
			return nil, fmt.Errorf("reading from the terminal: %w", err)
		}
		if int64(len(b)) > limit {
			return nil, fmt.Errorf("more than %d bytes typed", limit)
		}
		return b, nil
	}
	line, err := bufio.NewReader(io.LimitReader(in, limit)).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading from stdin: %w", err)
	}
	return line, nil
}

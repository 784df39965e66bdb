package cli

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every mandate command shown in the docs names commands and flags that exist: each ```sh line
// of README.md, docs/*.md and examples/README.md that runs mandate is parsed by the real command
// tree. The walkthrough tests run some of them; this catches the rest drifting (a renamed flag,
// a removed command) in any doc.
func TestDocCommandsParse(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../examples/README.md")
	checked := 0
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
			for _, line := range strings.Split(strings.ReplaceAll(m[1], "\\\n", " "), "\n") {
				for _, args := range mandateCalls(line) {
					checked++
					if err := parsesAs(args); err != nil {
						t.Errorf("%s: %q: %v", filepath.Base(file), strings.Join(args, " "), err)
					}
				}
			}
		}
	}
	// The check itself refuses what it must.
	for _, bad := range [][]string{{"agents", "lst"}, {"grant", "create", "--budgets", "calls=1"}, {"nosuch"}} {
		if parsesAs(bad) == nil {
			t.Errorf("mandate %s parsed", strings.Join(bad, " "))
		}
	}
	if got := mandateCalls(`mandate a --b c > out.csv`); len(got) != 1 || strings.Join(got[0], ",") != "a,--b,c" {
		t.Errorf("mandateCalls with a redirection = %q", got)
	}
	if got := mandateCalls(`MANDATE_X=1 mandate a --b "c d" | ./mandate e $(mandate f) # mandate g`); len(got) != 2 ||
		strings.Join(got[0], ",") != "a,--b,c d" || strings.Join(got[1], ",") != "e,SUBST" {
		t.Errorf("mandateCalls = %q", got)
	}
	if checked < 50 {
		t.Fatalf("only %d mandate commands found in the docs", checked)
	}
}

// parsesAs finds args (without the program name) in the command tree and parses its flags.
func parsesAs(args []string) error {
	root := NewRoot(io.Discard, io.Discard)
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if cmd.HasSubCommands() && len(cmd.Flags().Args()) > 0 {
		return &unknownWord{cmd.CommandPath(), cmd.Flags().Args()[0]}
	}
	return nil
}

type unknownWord struct{ group, word string }

func (e *unknownWord) Error() string { return e.group + " has no command " + e.word }

// mandateCalls returns the argument lists of the mandate commands on one shell line: pipelines
// and lists are split, comments and leading VAR=value assignments dropped, quotes and $(…) kept
// as single words.
func mandateCalls(line string) [][]string {
	var calls [][]string
	for _, words := range shellSegments(line) {
		for len(words) > 0 && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(words[0]) {
			words = words[1:]
		}
		if len(words) > 0 && (words[0] == "mandate" || words[0] == "./mandate") {
			calls = append(calls, withoutRedirections(words[1:]))
		}
	}
	return calls
}

// redirection is a shell redirection word: "> file" (two words) or ">file" (one).
var redirection = regexp.MustCompile(`^[0-9]*(>>?|<)(.*)$`)

// withoutRedirections drops the redirections (> calls.csv, >>log, <in) from a command's words.
func withoutRedirections(words []string) []string {
	var out []string
	for i := 0; i < len(words); i++ {
		if m := redirection.FindStringSubmatch(words[i]); m != nil {
			if m[2] == "" {
				i++ // the file is the next word
			}
			continue
		}
		out = append(out, words[i])
	}
	return out
}

// shellSegments splits a line into the words of each simple command, the way bash would for the
// docs' commands (quotes, $(…), #-comments, |, ||, &&, ; and &).
func shellSegments(line string) [][]string {
	var (
		segs  [][]string
		words []string
		word  strings.Builder
		in    bool // a word is being read
	)
	endWord := func() {
		if in {
			words = append(words, word.String())
			word.Reset()
			in = false
		}
	}
	endSeg := func() {
		endWord()
		if len(words) > 0 {
			segs = append(segs, words)
		}
		words = nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\'' || c == '"':
			j := strings.IndexByte(line[i+1:], c)
			if j < 0 {
				j = len(line) - i - 1
			}
			word.WriteString(line[i+1 : i+1+j])
			in = true
			i += j + 1
		case c == '$' && i+1 < len(line) && line[i+1] == '(':
			depth, j := 0, i+1
			for ; j < len(line); j++ {
				if line[j] == '(' {
					depth++
				} else if line[j] == ')' {
					if depth--; depth == 0 {
						break
					}
				}
			}
			word.WriteString("SUBST")
			in = true
			i = j
		case c == '#' && !in:
			endSeg()
			return segs
		case c == ' ' || c == '\t':
			endWord()
		case c == '|' || c == '&' || c == ';':
			endSeg()
		default:
			word.WriteByte(c)
			in = true
		}
	}
	endSeg()
	return segs
}

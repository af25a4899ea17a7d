package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/grmwrap/grmwrap/generations"
)

// cliRun runs grmwrap's CLI in process with args (after "grmwrap") and
// returns what it wrote and its exit status.
func cliRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	app, own := newApp(append([]string{"grmwrap"}, args...))
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.RunContext(context.Background(), own)
	var ex exitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ex):
		return out.String(), ex.code
	}
	return out.String() + err.Error(), 2
}

// TestHiddenDocCommands: __man and __completion bash write the man page and
// the completion; they stay out of the help, and wrong arguments are usage
// errors.
func TestHiddenDocCommands(t *testing.T) {
	help, code := cliRun(t, "--help")
	if code != 0 || !strings.Contains(help, "upgrade") {
		t.Fatalf("--help: exit %d:\n%s", code, help)
	}
	if strings.Contains(help, "__") {
		t.Fatalf("--help shows a hidden command:\n%s", help)
	}
	man, code := cliRun(t, "__man")
	if code != 0 || !strings.Contains(man, "\n.TH GRMWRAP 1 ") {
		t.Fatalf("__man: exit %d:\n%s", code, man)
	}
	comp, code := cliRun(t, "__completion", "bash")
	if code != 0 || !strings.Contains(comp, "complete -F _grmwrap grmwrap") {
		t.Fatalf("__completion bash: exit %d:\n%s", code, comp)
	}
	for _, args := range [][]string{{"__man", "x"}, {"__completion"}, {"__completion", "zsh"}, {"__completion", "bash", "x"}} {
		if out, code := cliRun(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage):\n%s", args, code, out)
		}
	}
	// The hidden commands take no server command line and do not change
	// the contract: words after -- are the server's, never a command.
	if out, code := cliRun(t, "__man", "--", "srv"); code != 0 || out != man {
		t.Errorf("__man -- srv: exit %d", code)
	}
	if _, code := cliRun(t, "__man", "upgrade"); code != 2 {
		t.Errorf("__man upgrade: exit %d, want 2", code)
	}
}

// TestManPage: the page names every visible command and flag and no
// hidden one, escapes options for copy and paste, and groff reads it
// without a warning.
func TestManPage(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	app, _ := newApp([]string{"grmwrap"})
	var b bytes.Buffer
	if err := writeMan(&b, app, manDate()); err != nil {
		t.Fatal(err)
	}
	man := b.String()
	if !strings.Contains(man, `.TH GRMWRAP 1 "2023-11-14" "grmwrap `+version+`" "User Commands"`) {
		t.Errorf("title line:\n%s", man[:200])
	}
	for _, sec := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "SIGNALS", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"} {
		if !strings.Contains(man, "\n.SH "+sec+"\n") {
			t.Errorf("no section %s", sec)
		}
	}
	want := func(s string) {
		t.Helper()
		if !strings.Contains(man, s) {
			t.Errorf("the man page lacks %q", s)
		}
	}
	want("grmwrap \\- " + roff(app.Usage))
	for _, f := range docFlags(app.Flags) {
		want(`\fB` + roff(f.names[0]) + `\fR`)
	}
	for _, c := range visibleCommands(app) {
		want(".SS " + bold(c.Name))
		for _, f := range docFlags(c.Flags) {
			want(`\fB` + roff(f.names[0]) + `\fR`)
		}
	}
	var text []string // the page without its comment and title lines
	for _, l := range strings.Split(man, "\n") {
		if !strings.HasPrefix(l, `.\"`) && !strings.HasPrefix(l, ".TH ") {
			text = append(text, l)
		}
	}
	for _, c := range app.Commands {
		if c.Hidden && strings.Contains(strings.Join(text, "\n"), c.Name) {
			t.Errorf("the man page names the hidden command %s", c.Name)
		}
	}
	for _, l := range text {
		if strings.Contains(strings.ReplaceAll(l, `\-`, ""), "-") {
			t.Errorf("unescaped hyphen (would print as a hyphen, not a minus): %q", l)
		}
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Log("groff not installed: the page is not rendered")
		return
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(man)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff: %v:\n%s", err, out)
	}
}

// TestFlagHints: every hint names a flag, and every value it offers is one
// the CLI accepts.
func TestFlagHints(t *testing.T) {
	app, _ := newApp([]string{"grmwrap"})
	names := map[string]bool{}
	for _, fs := range append([][]cli.Flag{app.Flags}, func() (out [][]cli.Flag) {
		for _, c := range app.Commands {
			out = append(out, c.Flags)
		}
		return out
	}()...) {
		for _, f := range fs {
			names[f.Names()[0]] = true
		}
	}
	for name := range flagHints {
		if !names[name] {
			t.Errorf("flagHints has %q, which is no flag", name)
		}
	}
	accept := map[string]func(string) error{
		"dissector": func(v string) error { _, err := generations.ParseDissector(v); return err },
		"ready": func(v string) error {
			switch v {
			case "delay:":
				v += "1s"
			case "exec:":
				v += "true"
			}
			_, err := parseReady(v)
			return err
		},
		"stop-signal": func(v string) error { _, err := parseSignal(v); return err },
		"log-format":  func(v string) error { _, err := newLogger(v, "info"); return err },
		"log-level":   func(v string) error { _, err := newLogger("text", v); return err },
	}
	for name, h := range flagHints {
		if len(h.values) == 0 {
			continue
		}
		check, ok := accept[name]
		if !ok {
			t.Errorf("flag %s offers values that no check covers", name)
			continue
		}
		for _, v := range h.values {
			if err := check(v); err != nil {
				t.Errorf("--%s %s is offered but refused: %v", name, v, err)
			}
		}
	}
}

// TestBashCompletion drives the generated script in a plain bash (no
// bash-completion package) as bash does on TAB.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	app, _ := newApp([]string{"grmwrap"})
	var b bytes.Buffer
	if err := writeBashCompletion(&b, app); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "grmwrap")
	if err := os.WriteFile(script, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	rt := filepath.Join(dir, "run")
	if err := os.Mkdir(rt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"123.sock", "456.sock", "notes"} {
		if err := os.WriteFile(filepath.Join(rt, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// complete returns the candidates for words, the last being the one
	// under the cursor.
	complete := func(words ...string) []string {
		t.Helper()
		const driver = `source "$0" || exit 9
complete -p grmwrap >/dev/null || exit 8
COMP_WORDS=("$@")
COMP_CWORD=$(($# - 1))
_grmwrap
printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", driver, script}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("completing %q: %v\n%s", words, err, out)
		}
		var got []string
		for _, l := range strings.Split(string(out), "\n") {
			if l != "" {
				got = append(got, l)
			}
		}
		slices.Sort(got)
		return got
	}
	for _, c := range []struct {
		words []string
		want  []string // exactly, sorted; nil: nothing
		has   string   // or: at least this one
	}{
		{words: []string{"grmwrap", ""}, want: []string{"--", "run", "status", "upgrade", "version"}},
		{words: []string{"grmwrap", "__"}, want: nil},
		{words: []string{"grmwrap", "--dis"}, want: []string{"--dissector"}},
		{words: []string{"grmwrap", "-"}, has: "--listen"},
		{words: []string{"grmwrap", "--dissector", ""}, want: []string{"flow", "noop"}},
		{words: []string{"grmwrap", "--dissector", "="}, want: []string{"flow", "noop"}},
		{words: []string{"grmwrap", "--dissector", "=", "n"}, want: []string{"noop"}},
		{words: []string{"grmwrap", "--log-level", "w"}, want: []string{"warn"}},
		{words: []string{"grmwrap", "--stop-signal", "SIGT"}, want: []string{"SIGTERM"}},
		{words: []string{"grmwrap", "--ready", ""}, want: []string{"bound", "delay:", "exec:", "notify"}},
		{words: []string{"grmwrap", "--listen", ""}, want: nil},
		{words: []string{"grmwrap", "--user", "roo"}, has: "root"},
		{words: []string{"grmwrap", "--listen", ":53", "--tcp"}, want: []string{"--tcp-reuseport"}},
		{words: []string{"grmwrap", "--listen", ":53", ""}, want: []string{"--", "run", "status", "upgrade", "version"}},
		{words: []string{"grmwrap", "run", ""}, want: []string{"--"}},
		{words: []string{"grmwrap", "run", "--max"}, want: []string{"--max-flows"}},
		{words: []string{"grmwrap", "status", "--"}, want: []string{"--help", "--json", "--runtime-dir"}},
		{words: []string{"grmwrap", "status", "--runtime-dir", rt, ""}, want: []string{"123", "456"}},
		{words: []string{"grmwrap", "upgrade", "--runtime-dir", rt, "4"}, want: []string{"456"}},
		{words: []string{"grmwrap", "upgrade", "--runtime-dir", rt, "123", ""}, want: []string{"--"}},
		{words: []string{"grmwrap", "upgrade", "--runtime-dir", rt, "123", "--t"}, want: []string{"--timeout"}},
		{words: []string{"grmwrap", "version", "-"}, want: []string{"--help"}},
		// After --: the server's command line.
		{words: []string{"grmwrap", "--listen", ":53", "--", "ech"}, has: "echo"},
		{words: []string{"grmwrap", "run", "--", "--dis"}, want: nil},
	} {
		got := complete(c.words...)
		if c.has != "" {
			if !slices.Contains(got, c.has) {
				t.Errorf("%q: %q, want %q among them", c.words, got, c.has)
			}
			continue
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%q: %q, want %q", c.words, got, c.want)
		}
	}
}

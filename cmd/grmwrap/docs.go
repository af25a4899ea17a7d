package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// The man page and the bash completion are generated from the CLI's own
// definition by two hidden commands, so that packaging never ships a page
// or a completion that disagrees with the binary:
//
//	grmwrap __man                 roff, section 1
//	grmwrap __completion bash     a bash completion script
//
// They stay out of --help, the man page and the completion. Both take no
// server command line: a "--" after them is ignored like any other word
// they do not read.

// docCommands are the hidden generator commands.
func docCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:            "__man",
			Hidden:          true,
			Usage:           "write the man page (roff) to stdout",
			SkipFlagParsing: true,
			Action: func(c *cli.Context) error {
				if c.Args().Len() != 0 {
					return usageErr("usage: grmwrap __man")
				}
				app, _ := newApp([]string{"grmwrap"})
				return writeMan(c.App.Writer, app, manDate())
			},
		},
		{
			Name:            "__completion",
			Hidden:          true,
			Usage:           "write a shell completion script to stdout",
			SkipFlagParsing: true,
			Action: func(c *cli.Context) error {
				if c.Args().Len() != 1 || c.Args().First() != "bash" {
					return usageErr("usage: grmwrap __completion bash")
				}
				app, _ := newApp([]string{"grmwrap"})
				return writeBashCompletion(c.App.Writer, app)
			},
		},
	}
}

// manDate is the date in the man page's header: SOURCE_DATE_EPOCH's (the
// reproducible-builds convention; the packaging sets it to the commit's
// time), else none, so that two builds of one commit give one page.
func manDate() string {
	n, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
	if err != nil {
		return ""
	}
	return time.Unix(n, 0).UTC().Format("2006-01-02")
}

// flagHint is what the docs and the completion know about a flag's value
// beyond what the CLI library holds.
type flagHint struct {
	arg    string   // placeholder in the man page
	values []string // the complete set of values to offer, if fixed
	shell  string   // compgen action for the value: "user", "directory"
}

// flagHints are keyed by flag name. Flags without an entry get a
// placeholder from their type (DUR, N) or their usage's `BACKTICKS`, else
// VALUE, and no completion.
var flagHints = map[string]flagHint{
	"listen":      {arg: "ADDR"},
	"user":        {shell: "user"},
	"dissector":   {arg: "flow|noop", values: []string{"flow", "noop"}},
	"ready":       {arg: "MODE", values: []string{"bound", "notify", "delay:", "exec:"}},
	"stop-signal": {arg: "SIG", values: stopSignalNames()},
	"name":        {arg: "NAME"},
	"runtime-dir": {arg: "DIR", shell: "directory"},
	"log-format":  {arg: "text|json", values: []string{"text", "json"}},
	"log-level":   {arg: "LEVEL", values: []string{"debug", "info", "warn", "error"}},
}

// stopSignalNames are the names --stop-signal accepts, as SIGTERM.
func stopSignalNames() []string {
	var out []string
	for n := range signalNames {
		out = append(out, "SIG"+n)
	}
	slices.Sort(out)
	return out
}

// docFlag is one visible flag, as the docs show it.
type docFlag struct {
	names []string // "--listen", "-h"
	arg   string   // placeholder; "" for a flag without a value
	usage string
	def   string // default shown, "" for none
	multi bool
	hint  flagHint
}

// docFlags lists the visible flags among fs, --help excluded.
func docFlags(fs []cli.Flag) []docFlag {
	var out []docFlag
	for _, f := range fs {
		if v, ok := f.(cli.VisibleFlag); ok && !v.IsVisible() {
			continue
		}
		df, ok := f.(cli.DocGenerationFlag)
		if !ok || slices.Contains(f.Names(), "help") {
			continue
		}
		name := f.Names()[0]
		d := docFlag{hint: flagHints[name]}
		for _, n := range f.Names() {
			if len(n) == 1 {
				d.names = append(d.names, "-"+n)
			} else {
				d.names = append(d.names, "--"+n)
			}
		}
		placeholder, usage := splitPlaceholder(df.GetUsage())
		d.usage = usage
		if df.TakesValue() {
			d.arg = d.hint.arg
			if d.arg == "" {
				d.arg = placeholder
			}
			if d.arg == "" {
				switch f.(type) {
				case *cli.DurationFlag:
					d.arg = "DUR"
				case *cli.UintFlag, *cli.IntFlag, *cli.Uint64Flag, *cli.Int64Flag:
					d.arg = "N"
				default:
					d.arg = "VALUE"
				}
			}
			d.def = df.GetDefaultText()
			if u, err := strconv.Unquote(d.def); err == nil {
				d.def = u
			}
			if d.def == "0s" || d.def == "0" || d.def == "[]" {
				d.def = "" // unset: the usage says what happens
			}
		}
		if sf, ok := f.(cli.DocGenerationSliceFlag); ok && sf.IsSliceFlag() {
			d.multi = true
		}
		out = append(out, d)
	}
	return out
}

// splitPlaceholder takes the `PLACEHOLDER` out of a usage text, as the CLI
// library's help does.
func splitPlaceholder(usage string) (placeholder, text string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "", usage
	}
	placeholder = usage[i+1 : i+1+j]
	return placeholder, usage[:i] + placeholder + usage[i+1+j+1:]
}

// visibleCommands are the commands that --help lists.
func visibleCommands(app *cli.App) []*cli.Command {
	var out []*cli.Command
	for _, c := range app.Commands {
		if !c.Hidden {
			out = append(out, c)
		}
	}
	return out
}

// roff escapes text for a man page: backslashes, hyphens as minus signs
// (options must survive copy and paste), and a control character at the
// start of a line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

func bold(s string) string   { return `\fB` + roff(s) + `\fR` }
func italic(s string) string { return `\fI` + roff(s) + `\fR` }

// synopsis formats a usage line: words to type in bold, placeholders (upper
// case) in italics, brackets and ellipses as they are.
func synopsis(line string) string {
	var b strings.Builder
	word := func(w string) {
		if w == "" {
			return
		}
		dots := ""
		if t, ok := strings.CutSuffix(w, "..."); ok {
			w, dots = t, "..."
		}
		switch {
		case w == "":
		case strings.ToUpper(w) == w && !strings.HasPrefix(w, "-"):
			b.WriteString(italic(w))
		default:
			b.WriteString(bold(w))
		}
		b.WriteString(dots)
	}
	start := 0
	for i, r := range line {
		if r == ' ' || r == '[' || r == ']' || r == '|' {
			word(line[start:i])
			b.WriteString(roff(string(r)))
			start = i + 1
		}
	}
	word(line[start:])
	return b.String()
}

// usageLines are the command lines of app: its own usage text, with those
// of its visible commands that it does not repeat after its first line.
func usageLines(app *cli.App) []string {
	lines := strings.Split(app.UsageText, "\n")
	var extra []string
	for _, c := range visibleCommands(app) {
		for _, l := range strings.Split(c.UsageText, "\n") {
			if l != "" && !slices.Contains(lines, l) && !slices.Contains(extra, l) {
				extra = append(extra, l)
			}
		}
	}
	return slices.Insert(lines, 1, extra...)
}

// writeFlags writes fs as a tagged paragraph each.
func writeFlags(w *strings.Builder, fs []docFlag) {
	for _, f := range fs {
		w.WriteString(".TP\n")
		for i, n := range f.names {
			if i > 0 {
				w.WriteString(", ")
			}
			w.WriteString(bold(n))
		}
		if f.arg != "" {
			w.WriteString("=" + italic(f.arg))
		}
		w.WriteString("\n" + roff(sentence(f.usage)))
		if f.multi && !strings.Contains(f.usage, "repeatable") {
			w.WriteString(" May be given more than once.")
		}
		if f.def != "" {
			w.WriteString(" Default: " + bold(f.def) + ".")
		}
		w.WriteString("\n")
	}
}

// sentence capitalises s and ends it with a full stop.
func sentence(s string) string {
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// signalList names sigs as "SIGHUP, SIGINT and SIGQUIT".
func signalList(sigs []os.Signal) string {
	var names []string
	for _, s := range sigs {
		names = append(names, unix.SignalName(s.(syscall.Signal)))
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// writeMan writes the man page of app (section 1) in roff.
func writeMan(out io.Writer, app *cli.App, date string) error {
	var w strings.Builder
	name := app.Name
	fmt.Fprintf(&w, ".\\\" Generated by `%s __man` from the command line definition of %s %s.\n", name, name, version)
	fmt.Fprintf(&w, ".TH %s 1 %q %q \"User Commands\"\n", strings.ToUpper(name), date, name+" "+version)

	fmt.Fprintf(&w, ".SH NAME\n%s \\- %s\n", name, roff(app.Usage))

	w.WriteString(".SH SYNOPSIS\n.nf\n")
	for _, l := range usageLines(app) {
		w.WriteString(synopsis(l) + "\n")
	}
	w.WriteString(".fi\n")

	w.WriteString(".SH DESCRIPTION\n")
	w.WriteString(roff(name+" runs an unmodified UDP server (DNS, SIP, QUIC, game servers) under a seccomp "+
		"user-notification filter that traps its bind() calls. For every UDP bind it manages, "+name+
		" takes a copy of the server's socket, binds it on the server's behalf with SO_REUSEPORT set and "+
		"answers the server with the result. The data path is never trapped; no LD_PRELOAD, no code change.") + "\n.PP\n")
	w.WriteString(roff("An SK_REUSEPORT eBPF program steers datagrams: new flows go to the working generation of "+
		"the server, existing flows stay with the socket that serves them. "+name+" upgrade starts the next "+
		"generation beside the old one, waits until it is ready, moves new flows to it and lets the old one "+
		"drain before stopping it; a generation that fails is rolled back.") + "\n.PP\n")
	w.WriteString(roff("Everything after the first -- is the server's command line: "+name+
		" never reads it as its own options.") + "\n")

	w.WriteString(".SH OPTIONS\n")
	w.WriteString(roff("Options of running a server ("+name+" and "+name+" run):") + "\n")
	writeFlags(&w, docFlags(app.Flags))
	w.WriteString(".TP\n" + bold("-h") + ", " + bold("--help") + "\nShow the usage of " + roff(name) + " or of one command.\n")

	w.WriteString(".SH COMMANDS\n")
	top := docFlags(app.Flags)
	for _, c := range visibleCommands(app) {
		fmt.Fprintf(&w, ".SS %s\n", bold(c.Name))
		if c.UsageText != "" {
			w.WriteString(synopsis(c.UsageText) + "\n.PP\n")
		}
		w.WriteString(roff(sentence(c.Usage)) + "\n")
		fs := docFlags(c.Flags)
		if len(fs) > 0 && slices.EqualFunc(fs, top, func(a, b docFlag) bool { return slices.Equal(a.names, b.names) }) {
			w.WriteString(roff("It takes the options above.") + "\n")
			continue
		}
		writeFlags(&w, fs)
	}

	w.WriteString(".SH SIGNALS\n")
	var stops, others []os.Signal
	for _, s := range forwarded {
		if stopping(s) {
			stops = append(stops, s)
		} else {
			others = append(others, s)
		}
	}
	w.WriteString(roff(signalList(stops)+" stop the service: "+name+" forwards them to every instance, waits for "+
		"them to exit (SIGKILL after --kill-timeout) and exits with the working instance's status. "+
		signalList(others)+" are forwarded to the working instance. Other signals are not forwarded; "+
		"SIGURG never is (the Go runtime uses it).") + "\n.PP\n")
	w.WriteString(roff(name+" is a child subreaper: processes the server leaves behind become its children "+
		"and are reaped when they exit. It can run as PID 1 of a container, where it reaps every orphan of "+
		"the container and handles the signals forwarded above.") + "\n")

	w.WriteString(".SH EXIT STATUS\n")
	w.WriteString(".TP\n" + bold(name) + ", " + bold(name+" run") + "\n" +
		roff("The working instance's exit status, 128+N when signal N killed it; 2 for usage errors, a command "+
			"that is not found, or a machine that cannot run "+name+".") + "\n")
	w.WriteString(".TP\n" + bold(name+" upgrade") + "\n" +
		roff("0: the new generation works; 1: it failed and was rolled back; 2: usage or connection errors.") + "\n")
	w.WriteString(".TP\n" + bold(name+" status") + "\n" +
		roff("0, or 2 when a supervisor cannot be reached.") + "\n")

	w.WriteString(".SH ENVIRONMENT\n")
	w.WriteString(".TP\n" + bold("GRMWRAP_GENERATION") + "\n" +
		roff("Set for every instance (and --ready exec: probes) to its generation number, 1 for the first.") + "\n")
	w.WriteString(".TP\n" + bold("GRMWRAP_PID") + "\n" +
		roff("Set for --ready exec: probes to the pid of the generation being probed.") + "\n")
	w.WriteString(".TP\n" + bold("NOTIFY_SOCKET") + "\n" +
		roff("The service manager's, used by "+name+" itself (READY=1 once generation 1 is ready, RELOADING=1 "+
			"during upgrades, STOPPING=1); instances never see it. With --ready notify every instance gets a "+
			"private one.") + "\n")

	w.WriteString(".SH FILES\n")
	w.WriteString(".TP\n" + italic("/run/grmwrap/PID.sock") + "\n" +
		roff("Control socket of the supervisor PID (mode 0600), used by upgrade and status.") + "\n")
	w.WriteString(".TP\n" + italic("/sys/fs/bpf/grmwrap/NAME") + "\n" +
		roff("Pinned steering state of a service (a bpffs is mounted on /sys/fs/bpf if none is).") + "\n")

	w.WriteString(".SH REQUIREMENTS\n")
	w.WriteString(roff("Linux 5.17 or later on x86-64; root, or CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN and CAP_BPF "+
		"(plus CAP_SETUID and CAP_SETGID for --user). "+name+" checks at start and names what is missing. It "+
		"cannot run under another seccomp user-notification supervisor.") + "\n")

	w.WriteString(".SH EXAMPLES\n")
	w.WriteString(roff("Run a DNS server, then upgrade it in place (PID is "+name+"'s or the server's):") + "\n")
	w.WriteString(".PP\n.EX\n" + roff(name+" --listen :53 -- /usr/sbin/unbound -d\n"+name+" upgrade PID\n"+name+" status --json") + "\n.EE\n")
	w.WriteString(".PP\n" + roff("As a container's entry point (PID 1), upgraded from inside the container:") + "\n")
	w.WriteString(".PP\n.EX\n" + roff(`ENTRYPOINT ["`+name+`", "--", "/usr/local/bin/server"]`+"\n"+
		"docker exec CONTAINER "+name+" upgrade 1") + "\n.EE\n")

	w.WriteString(".SH SEE ALSO\n")
	w.WriteString(bold("seccomp_unotify") + "(2), " + bold("pidfd_getfd") + "(2), " + bold("socket") + "(7), " +
		bold("systemd.service") + "(5), " + italic("/usr/share/doc/grmwrap/") + "\n")
	_, err := io.WriteString(out, w.String())
	return err
}

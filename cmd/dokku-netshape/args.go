package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// runCLI runs the CLI with flags accepted after APP too (`set myapp --egress
// 20mbit`, Dokku's own order): urfave/cli v2 stops parsing flags at the first
// positional argument, so flags are moved ahead of positionals first.
func runCLI(argv []string) error {
	app := newApp()
	if len(argv) < 2 {
		return app.Run(argv)
	}
	cmd := app.Command(argv[1])
	if cmd == nil && !strings.HasPrefix(argv[1], "-") && argv[1] != "help" && argv[1] != "h" {
		// urfave/cli would answer "No help topic for ..." with exit code 3.
		return fmt.Errorf("unknown command %q: run `%s help` for the list", argv[1], app.Name)
	}
	// urfave/cli recognises a completion request only as the very last
	// argument; reordering would move it.
	completing := argv[len(argv)-1] == "--generate-bash-completion"
	if cmd == nil || cmd.SkipFlagParsing || completing {
		return app.Run(argv)
	}
	args, err := reorderArgs(cmd, argv[2:])
	if err != nil {
		return fmt.Errorf("%s: %w", cmd.Name, err)
	}
	return app.Run(append(argv[:2:2], args...))
}

// reorderArgs also refuses a flag given twice: urfave/cli would silently
// keep the last value (`--egress NaN --egress 2mbit`). Only slice flags may
// repeat (one --device-read-bps per device).
func reorderArgs(cmd *cli.Command, args []string) ([]string, error) {
	takesValue := map[string]bool{}
	primary := map[string]string{}
	repeatable := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		_, isSlice := f.(*cli.StringSliceFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
			primary[n] = f.Names()[0]
		}
		repeatable[f.Names()[0]] = isSlice
	}
	given := map[string]bool{}
	var flags, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if p, ok := primary[strings.SplitN(name, "=", 2)[0]]; ok {
			if given[p] && !repeatable[p] {
				return nil, fmt.Errorf("--%s given more than once", p)
			}
			given[p] = true
		}
		if !strings.Contains(name, "=") && takesValue[name] {
			if i+1 == len(args) {
				// Without this the "--" appended below would become its value.
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
			i++
			flags = append(flags, args[i])
		}
	}
	out := append(flags, "--")
	return append(out, positional...), nil
}

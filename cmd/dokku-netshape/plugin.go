package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// pluginName is what `dokku plugin:install` names us (dokku-netshape → netshape).
const pluginName = "netshape"

// pluginCommands are the Dokku subcommands, in help order. Dokku splits help
// lines into columns at commas, so descriptions must not contain any.
var pluginCommands = []struct{ name, args, desc string }{
	// set's full flag list would make every help line 200 columns wide.
	{"set", "<app> [--process-type P] [LIMIT-FLAGS] [--no-apply] [--force]", "Set limits of an app and apply them to its running containers (flags: netshape:set --help)"},
	{"set", "--global [--monitor on|off] [--metrics-addr HOST:PORT|off]", "Count every app's traffic (monitor) or serve Prometheus metrics from the watcher"},
	{"clear", "<app> [--process-type P] (--egress|--ingress|--all) [--no-apply]", "Clear limits of an app"},
	{"apply", "(<app>|--all) [--force]", "Make running containers enforce the configured limits"},
	{"report", "[<app>] [--format stdout|json] [--netshape-FIELD] [--sample-window 500ms]", "Show limits with shaped interfaces and counters and current rates"},
	{"top", "[--interval 1s] [--count N]", "Live view of who uses the network: rates against limits with drops and bypassed"},
	{"help", "", "Show this help"},
}

// pluginSummary is the `dokku help` line's description (no commas either).
const pluginSummary = "Enforce network bandwidth and memory/CPU/blkio limits on app containers"

func helpCommandColumn(name, args string) string {
	if args == "" {
		return pluginName + ":" + name
	}
	return pluginName + ":" + name + " " + args
}

// pluginHelp is `dokku netshape:help`: Dokku's Go plugins print their
// "command, description" lines through columnize (delimiter ",", prefix of
// four spaces, two spaces between columns), so they come out aligned.
func pluginHelp() string {
	var b strings.Builder
	b.WriteString("Usage: dokku netshape[:COMMAND]\n\n")
	b.WriteString("Enforce network bandwidth limits (eBPF EDT + fq on container veths) and memory, CPU and blkio limits on app containers.\n\n")
	b.WriteString("Additional commands:")
	width := 0
	for _, c := range pluginCommands {
		width = max(width, len(helpCommandColumn(c.name, c.args)))
	}
	for _, c := range pluginCommands {
		fmt.Fprintf(&b, "\n    %-*s  %s", width, helpCommandColumn(c.name, c.args), c.desc)
	}
	b.WriteString("\n")
	return b.String()
}

// parentCmdline is the command line of the process that ran us: Dokku's Go
// plugins answer `commands help` with every command when it is `dokku help
// --all`, which they can only see there. A variable for tests.
var parentCmdline = func() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", os.Getppid()))
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// runCommands is Dokku's fallback dispatcher: `commands CMD ARGS...`.
func runCommands(args []string) int {
	if len(args) == 0 {
		return exitNotImplemented
	}
	switch cmd := args[0]; {
	case cmd == "help":
		// `dokku help`: one summary line; `dokku help --all`: every command.
		// Both raw: Dokku columnizes the lines of all plugins together.
		if strings.Contains(parentCmdline(), "--all") {
			for _, c := range pluginCommands {
				fmt.Printf("    %s, %s\n", helpCommandColumn(c.name, c.args), c.desc)
			}
			return 0
		}
		fmt.Printf("    %s, %s\n", pluginName, pluginSummary)
		return 0
	case cmd == pluginName || cmd == pluginName+":help":
		fmt.Print(pluginHelp())
		return 0
	case strings.HasPrefix(cmd, pluginName+":"):
		name := strings.TrimPrefix(cmd, pluginName+":")
		for _, c := range pluginCommands {
			if c.name == name {
				return run(append([]string{"subcommands/" + name}, args...))
			}
		}
	}
	return exitNotImplemented
}

// runSubcommand runs `subcommands/NAME netshape:NAME ARGS...`.
func runSubcommand(name string, args []string) error {
	if len(args) > 0 && args[0] == pluginName+":"+name {
		args = args[1:]
	}
	if name == "help" {
		fmt.Print(pluginHelp())
		return nil
	}
	for _, c := range pluginCommands {
		if c.name == name {
			return runCLI(append([]string{"dokku " + pluginName, name}, args...))
		}
	}
	return exitError{code: exitNotImplemented}
}

// triggers are the Dokku triggers this binary answers to, with the number of
// arguments Dokku passes (at least).
var triggers = map[string]int{
	"post-deploy":           1, // APP PORT IP TAG
	"post-delete":           1, // APP TAG
	"post-app-rename-setup": 2, // OLD NEW
	"post-app-clone-setup":  2, // OLD NEW
	"report":                1, // APP
	"install":               0,
	"uninstall":             1, // PLUGIN
}

func isTrigger(name string) bool {
	_, ok := triggers[name]
	return ok
}

func runTrigger(name string, args []string) error {
	if len(args) < triggers[name] {
		return fmt.Errorf("trigger %s: expected %d arguments, got %d", name, triggers[name], len(args))
	}
	ctx := context.Background()
	env := dokku.EnvFromOS()
	switch name {
	case "post-deploy":
		if err := dokku.ValidateAppName(args[0]); err != nil {
			return err
		}
		// Fail open: the new containers already run. A non-zero exit would
		// fail the deploy, and stop ps:restore at boot from starting the
		// remaining apps, over a limit that could not be enforced. The
		// reconcile has warned loudly; repeat the cause and exit 0.
		if err := runCLI([]string{"dokku-netshape", "apply", args[0]}); err != nil {
			var ex exitError
			if errors.As(err, &ex) && ex.msg == "" {
				err = fmt.Errorf("apply %s exited with status %d", args[0], ex.code)
			}
			fmt.Fprintln(os.Stderr, " !     netshape: limits of "+args[0]+" not (fully) enforced: "+err.Error())
		}
		return nil
	case "post-delete":
		// Our docker-options ownership records go with the app; Dokku's
		// resource and docker-options plugins delete their own properties.
		// Under the config lock (a set of the same app may be writing
		// them), released before the root remove.
		if err := dokku.ValidateAppName(args[0]); err != nil {
			return err
		}
		err := env.Change(configLockTimeout, func(env dokku.Env) error {
			return env.Properties(dokku.OwnerPlugin).Destroy(args[0])
		})
		if err != nil {
			return err
		}
		return runCLI([]string{"dokku-netshape", "remove", args[0]})
	case "post-app-rename-setup", "post-app-clone-setup":
		// Dokku copies resource and docker-options properties itself; our
		// records of which docker-options lines we own must follow them, or
		// the new app's lines would look operator-written.
		for _, app := range args[:2] {
			if err := dokku.ValidateAppName(app); err != nil {
				return err
			}
		}
		return env.Change(configLockTimeout, func(env dokku.Env) error {
			return env.Properties(dokku.OwnerPlugin).Clone(args[0], args[1])
		})
	case "report":
		return runReport(ctx, []string{args[0]}, os.Stdout)
	case "install":
		return install(ctx)
	case "uninstall":
		if args[0] != pluginName {
			return nil
		}
		return uninstall(ctx)
	}
	return nil
}

// Command dokku-netshape enforces Dokku's network limits (and applies its
// memory, CPU and blkio limits live) on an app's running containers.
//
// One binary serves every role, chosen by the name it is called by, as Dokku's
// own Go plugins do:
//
//	dokku-netshape ...            the CLI
//	subcommands/<name> netshape:<name> ...   a Dokku subcommand
//	commands <cmd> ...            Dokku's fallback dispatcher (exit 10 if not ours)
//	<trigger> ...                 a Dokku trigger (post-deploy, post-delete, ...)
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// grantSide is set when this process is the root side of the sudo grant.
var grantSide bool

// exitNotImplemented tells Dokku's dispatcher to try the next plugin.
const exitNotImplemented = 10

func main() {
	stop := startProfile()
	code := run(os.Args)
	stop()
	os.Exit(code)
}

func run(argv []string) int {
	self := filepath.Base(argv[0])
	grant, conf, err := viaGrant()
	switch {
	case grant:
		// Through the grant: argv[0] is the granted binary; never a trigger.
		grantSide = true
		if err == nil {
			err = enterRootSide(argv[1:], conf)
		}
		if err == nil {
			err = runCLI(argv)
		}
	case self == "commands":
		return runCommands(argv[1:])
	case filepath.Base(filepath.Dir(argv[0])) == "subcommands":
		err = runSubcommand(self, argv[1:])
	case isTrigger(self):
		err = runTrigger(self, argv[1:])
	default:
		err = runCLI(argv)
	}
	if err == nil {
		return 0
	}
	if ex, ok := err.(exitError); ok {
		// A status of its own (10 for Dokku's dispatcher, a child's
		// through sudo), with what it has to say, if anything, as it is.
		if ex.msg != "" {
			fmt.Fprintln(os.Stderr, ex.msg)
		}
		return ex.code
	}
	printError(os.Stderr, err)
	return exitStatus(err)
}

// exitError carries a specific exit code out of a command.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

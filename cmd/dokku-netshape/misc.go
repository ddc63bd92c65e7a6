package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/watch"
)

func watchCommand() *cli.Command {
	return &cli.Command{
		Name:  "watch",
		Usage: "re-apply limits whenever Docker starts, restarts or reconnects an app's containers (runs until stopped)",
		Action: func(c *cli.Context) error {
			if os.Geteuid() != 0 {
				return errors.New("watch must run as root (it attaches BPF programs)")
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			defer watchStats(os.Stderr)()
			docker, err := containers.New()
			if err != nil {
				return fmt.Errorf("connect to Docker: %w", err)
			}
			defer docker.Close()
			w := &watch.Watcher{
				Source: docker,
				Reconcile: func(ctx context.Context, app string) error {
					return applyApps(ctx, []string{app}, false)
				},
				Resync: func(ctx context.Context) error {
					apps, err := dokku.EnvFromOS().Apps()
					if err != nil {
						return err
					}
					return applyApps(ctx, apps, false)
				},
				Log: os.Stderr,
			}
			fmt.Println("-----> netshape: watching Docker events")
			if err := w.Run(ctx); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:  "completion",
		Usage: "print a bash completion script (source it, or put it in /etc/bash_completion.d/)",
		Action: func(c *cli.Context) error {
			fmt.Print(bashCompletion)
			return nil
		},
	}
}

// bashCompletion asks the binary itself (urfave/cli's --generate-bash-completion),
// so completion always matches the CLI definition.
// urfave/cli lists a command's flags only when the word before
// --generate-bash-completion starts with "-", so a partial flag is passed on.
const bashCompletion = `_dokku_netshape() {
  local cur opts
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == -* ]]; then
    opts=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$COMP_CWORD-1}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$COMP_CWORD-1}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
}
complete -o default -F _dokku_netshape dokku-netshape
`

func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the man page (roff), generated from the CLI definition",
		Action: func(c *cli.Context) error {
			page, err := c.App.ToMan()
			if err != nil {
				return err
			}
			fmt.Print(page)
			return nil
		},
	}
}

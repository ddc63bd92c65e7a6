package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

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

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Where install writes outside Dokku's config. Overridable for tests.
var (
	sudoersPath = envOr("NETSHAPE_SUDOERS", "/etc/sudoers.d/dokku-netshape")
	unitPath    = envOr("NETSHAPE_UNIT", "/etc/systemd/system/dokku-netshape-watch.service")
)

const unitName = "dokku-netshape-watch.service"

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// rootSubcommands are the only things the dokku user may run as root.
var rootSubcommands = []string{"apply", "remove", "report"}

func sudoersContent(self, user string) string {
	var b strings.Builder
	b.WriteString("# Written by the netshape Dokku plugin's install trigger; removed by its uninstall.\n")
	b.WriteString("# Dokku runs plugins as " + user + "; attaching BPF programs needs root, so exactly\n")
	b.WriteString("# these subcommands of the plugin binary may run as root, with Dokku's paths kept.\n")
	fmt.Fprintf(&b, "Defaults:%s env_keep += \"DOKKU_ROOT DOKKU_LIB_ROOT DOKKU_LIB_PATH DOKKU_SYSTEM_USER DOKKU_SYSTEM_GROUP\"\n", user)
	var cmds []string
	for _, c := range rootSubcommands {
		cmds = append(cmds, self+" "+c+" *")
	}
	fmt.Fprintf(&b, "%s ALL=(root) NOPASSWD: %s\n", user, strings.Join(cmds, ", "))
	return b.String()
}

func unitContent(self string) string {
	return `[Unit]
Description=dokku-netshape: re-apply Dokku app limits when Docker restarts containers
After=docker.service
Requires=docker.service

[Service]
ExecStart=` + self + ` watch
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
`
}

// install runs as root from Dokku's install trigger: bpffs + pin directory,
// the sudoers grant, and the watcher's systemd unit (when systemd is there).
func install(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("install must run as root (Dokku runs the install trigger as root)")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return err
	}
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return fmt.Errorf("prepare bpffs: %w", err)
	}
	s.Close()

	user := envOr("DOKKU_SYSTEM_USER", "dokku")
	if err := writeChecked(sudoersPath, sudoersContent(self, user), 0o440); err != nil {
		return err
	}
	fmt.Println("-----> netshape: granted", user, "root for", strings.Join(rootSubcommands, ", "), "in", sudoersPath)

	if _, err := exec.LookPath("systemctl"); err != nil {
		fmt.Println("       netshape: no systemd; run `dokku-netshape watch` under your init system to cover container restarts")
		return nil
	}
	if err := os.WriteFile(unitPath, []byte(unitContent(self)), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", unitPath, err)
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", "--now", unitName}, {"restart", unitName}} {
		if out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	fmt.Println("-----> netshape: watcher running as", unitName)
	return nil
}

// writeChecked writes a sudoers file only if visudo accepts it: a broken
// file in /etc/sudoers.d can lock everyone out of sudo.
func writeChecked(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if visudo, err := exec.LookPath("visudo"); err == nil {
		if out, err := exec.Command(visudo, "-cf", tmp).CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("visudo rejected the generated sudoers file: %v: %s", err, out)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// uninstall removes everything the plugin attached, pinned or wrote outside
// Dokku's config: every budget (detaching its devices), the pins, the
// sudoers grant and the watcher unit. Dokku's properties stay (they are
// Dokku's resource settings, not ours).
func uninstall(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("uninstall must run as root")
	}
	if _, err := exec.LookPath("systemctl"); err == nil {
		exec.CommandContext(ctx, "systemctl", "disable", "--now", unitName).Run()
	}
	var errs []error
	for _, p := range []string{unitPath, sudoersPath} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	budgets, err := s.Budgets()
	if err != nil {
		s.Close()
		return errors.Join(append(errs, err)...)
	}
	for _, b := range budgets {
		if err := s.RemoveBudget(b.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := s.Prune(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = append(errs, s.Destroy())
	} else {
		s.Close()
	}
	fmt.Println("-----> netshape: removed every limit, pin, sudoers grant and unit it installed")
	return errors.Join(errs...)
}

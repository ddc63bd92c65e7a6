package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Where install writes outside Dokku's config, and the systemctl it drives.
// Read at call time so tests can point them elsewhere with t.Setenv.
const (
	envSudoers   = "NETSHAPE_SUDOERS"   // default /etc/sudoers.d/dokku-netshape
	envUnit      = "NETSHAPE_UNIT"      // default /etc/systemd/system/dokku-netshape-watch.service
	envSystemctl = "NETSHAPE_SYSTEMCTL" // set: use this systemctl even if systemd is not PID 1 (tests)
	envRootBin   = "NETSHAPE_ROOT_BIN"  // default /usr/local/libexec/dokku-netshape

	defaultSudoers = "/etc/sudoers.d/dokku-netshape"
	defaultUnit    = "/etc/systemd/system/dokku-netshape-watch.service"
	defaultRootBin = "/usr/local/libexec/dokku-netshape"
)

func rootBinPath() string { return envOr(envRootBin, defaultRootBin) }

func sudoersPath() string { return envOr(envSudoers, defaultSudoers) }
func unitPath() string    { return envOr(envUnit, defaultUnit) }

// unitName is what systemctl calls the unit: its file name.
func unitName() string { return filepath.Base(unitPath()) }

// systemdRunDir exists when systemd is the running init (sd_booted()).
var systemdRunDir = "/run/systemd/system"

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// systemctl returns the systemctl to drive, or "" when systemd is not the
// init system: a systemctl binary alone (containers, chroots) would fail.
func systemctl() string {
	if p := os.Getenv(envSystemctl); p != "" {
		return p
	}
	if _, err := os.Stat(systemdRunDir); err != nil {
		return ""
	}
	p, err := exec.LookPath("systemctl")
	if err != nil {
		return ""
	}
	return p
}

// rootCommands are the only argument patterns the dokku user may run the
// binary with as root (what asRoot re-runs through sudo). "report" appears
// bare too: sudoers' "report *" needs at least the space, and
// `netshape:report` without an app runs plain "report".
var rootCommands = []string{"apply *", "remove *", "report", "report *", "top *"}

// sudoersAlias names our commands; aliases are global across sudoers files.
const sudoersAlias = "DOKKU_NETSHAPE"

// Sudoers gives words special meaning with , : = ! ( ) \ # and whitespace;
// rather than escape them, accept only paths and names that need none.
var (
	safePath = regexp.MustCompile(`^/[A-Za-z0-9/._+-]+$`)
	safeUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
)

func sudoersContent(self, user string) (string, error) {
	if !safePath.MatchString(self) {
		return "", fmt.Errorf("binary path %q has characters sudoers would need escaped; install the plugin under a plain path", self)
	}
	if !safeUser.MatchString(user) {
		return "", fmt.Errorf("DOKKU_SYSTEM_USER %q is not a plain user name", user)
	}
	cmds := make([]string, len(rootCommands))
	for i, c := range rootCommands {
		cmds[i] = self + " " + c
	}
	var b strings.Builder
	b.WriteString("# Written by the netshape Dokku plugin's install trigger; removed by its uninstall trigger.\n")
	b.WriteString("# Dokku runs plugins as " + user + "; attaching BPF programs needs root, so exactly these\n")
	b.WriteString("# subcommands of the plugin binary may run as root, with a reset environment: the root\n")
	b.WriteString("# side reads Dokku's paths from " + rootConfPath + ", never from its caller.\n")
	fmt.Fprintf(&b, "Cmnd_Alias %s = %s\n", sudoersAlias, strings.Join(cmds, ", "))
	// Command-scoped: the dokku user's other sudo rules keep their environment policy.
	fmt.Fprintf(&b, "Defaults!%s env_reset\n", sudoersAlias)
	fmt.Fprintf(&b, "%s ALL=(root) NOPASSWD: %s\n", user, sudoersAlias)
	return b.String(), nil
}

// unitEnv are the install-time variables the watcher needs to find the same
// Dokku tree (Dokku exports them to the install trigger).
// NETSHAPE_METRICS_ADDR, when root's environment has it at install, becomes
// the watcher's metrics address (else the --global property decides).
var unitEnv = []string{"DOKKU_ROOT", "DOKKU_LIB_ROOT", "DOKKU_SYSTEM_USER", "DOKKU_SYSTEM_GROUP", envMetricsAddr}

func unitContent(self string) string {
	var env strings.Builder
	for _, k := range unitEnv {
		if v := os.Getenv(k); v != "" {
			fmt.Fprintf(&env, "Environment=%s\n", systemdQuote(k+"="+v))
		}
	}
	// Wants, not Requires: a Docker restart must not stop the watcher; it
	// reconnects and resyncs by itself. CPUWeight: under systemd the apps'
	// containers are sibling cgroups, where the watcher's own nice value
	// (watch --nice) does not reach; a start must not wait for their CPU.
	return `[Unit]
Description=dokku-netshape: re-apply Dokku app limits when Docker (re)creates containers
After=docker.service
Wants=docker.service

[Service]
` + env.String() + `ExecStart=` + self + ` watch
CPUWeight=1000
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
`
}

// systemdQuote makes one Environment= assignment: double-quoted, with \ and
// " escaped and % doubled (systemd expands specifiers).
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	s = strings.ReplaceAll(s, "%", "%%")
	return `"` + s + `"`
}

// install runs as root from Dokku's install (and update) trigger: the
// root-owned copy of the binary, bpffs and the pin directory, the sudoers
// grant, and the watcher's systemd unit when systemd runs. Idempotent: Dokku
// re-runs every plugin's install trigger on each plugin:install.
func install(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("install must run as root (Dokku runs the install trigger as root)")
	}
	self, err := selfPath()
	if err != nil {
		return err
	}
	bin, err := installRootBinary(self)
	if err != nil {
		return err
	}
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return fmt.Errorf("prepare bpffs: %w", err)
	}
	s.Close()

	if err := writeRootConf(); err != nil {
		return err
	}
	user := envOr("DOKKU_SYSTEM_USER", "dokku")
	content, err := sudoersContent(bin, user)
	if err != nil {
		return err
	}
	checked, err := writeSudoers(sudoersPath(), content)
	if err != nil {
		return err
	}
	fmt.Printf("-----> netshape: %s may run %s as root (%s)\n", user, "apply, remove, report, top", sudoersPath())
	if !checked {
		fmt.Println(" !     netshape: visudo not found: sudo is not installed, so triggers run by Dokku as " + user + " cannot apply limits (apt-get install sudo)")
	}

	sc := systemctl()
	if sc == "" {
		fmt.Println("       netshape: systemd is not running; run `" + bin + " watch` as root under your init system to cover containers Docker restarts")
		return nil
	}
	if err := writeAtomic(unitPath(), []byte(unitContent(bin)), 0o644); err != nil {
		return err
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", unitName()}, {"restart", unitName()}} {
		if out, err := exec.CommandContext(ctx, sc, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	fmt.Println("-----> netshape: watcher running as", unitName())
	return nil
}

// writeRootConf records the Dokku tree this install is for, where the root
// side reads it (0644 root:root in a root-only directory).
func writeRootConf() error {
	content, err := rootConfContent(dokku.EnvFromOS())
	if err != nil {
		return fmt.Errorf("record Dokku's paths for the root side: %w", err)
	}
	dir := filepath.Dir(rootConfPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := writeAtomic(rootConfPath, []byte(content), 0o644); err != nil {
		return err
	}
	if err := checkRootOnly(rootConfPath); err != nil {
		return fmt.Errorf("the root side would refuse %s: %w", rootConfPath, err)
	}
	fmt.Printf("-----> netshape: root side reads Dokku's paths from %s\n", rootConfPath)
	return nil
}

// installRootBinary copies self to the root-owned path that sudo and the
// unit run, and returns that path. Dokku's package scripts chown the whole
// plugins tree to dokku (`chown -R dokku:dokku /var/lib/dokku/plugins`), so
// a grant on the plugin's own bin/dokku-netshape would let the dokku user
// swap in any program and run it as root.
//
// The plugin's bin/dokku-netshape then becomes a link to the copy: Dokku
// runs the trigger and subcommand links, which lead to the copy, so
// os.Executable() — the path asRoot hands to sudo — is the granted one.
func installRootBinary(self string) (string, error) {
	bin := rootBinPath()
	if self != bin {
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", filepath.Dir(bin), err)
		}
		content, err := os.ReadFile(self)
		if err != nil {
			return "", fmt.Errorf("read own executable: %w", err)
		}
		// A new inode: a running watcher keeps executing the old one.
		if err := writeAtomic(bin, content, 0o755); err != nil {
			return "", err
		}
	}
	// The grant makes this file root's: whoever can replace it is root.
	if err := checkRootOnly(bin); err != nil {
		return "", fmt.Errorf("refusing to grant sudo on %s: %w", bin, err)
	}
	if self != bin && filepath.Base(self) == "dokku-netshape" && filepath.Base(filepath.Dir(self)) == "bin" {
		tmp := self + ".netshape-link"
		os.Remove(tmp)
		if err := os.Symlink(bin, tmp); err != nil {
			return "", fmt.Errorf("link %s to %s: %w", self, bin, err)
		}
		if err := os.Rename(tmp, self); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("link %s to %s: %w", self, bin, err)
		}
	}
	return bin, nil
}

// selfPath is this binary's real path, the one asRoot hands to sudo.
func selfPath() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return "", fmt.Errorf("resolve own executable: %w", err)
	}
	return self, nil
}

// checkRootOnly fails unless path and every directory above it are owned by
// root and writable by nobody else. A world-writable sticky directory (/tmp)
// is fine above a root-owned entry: others cannot rename or replace it.
func checkRootOnly(path string) error {
	for p, child := path, true; ; p, child = filepath.Dir(p), false {
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner information", p)
		}
		if sys.Uid != 0 {
			return fmt.Errorf("%s is owned by uid %d, not root", p, sys.Uid)
		}
		sticky := st.Mode()&fs.ModeSticky != 0 && st.IsDir() && !child
		if st.Mode().Perm()&0o022 != 0 && !sticky {
			return fmt.Errorf("%s is writable by group or others (mode %v)", p, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}

// writeSudoers installs a sudoers file only if visudo accepts it (a broken
// file in /etc/sudoers.d locks everyone out of sudo). checked is false when
// there is no visudo, i.e. no sudo.
func writeSudoers(path, content string) (checked bool, err error) {
	// sudo's @includedir silently skips names with a dot or a trailing ~.
	if base := filepath.Base(path); strings.Contains(base, ".") || strings.HasSuffix(base, "~") {
		return false, fmt.Errorf("sudoers file %s: sudo ignores names containing '.' or ending in '~'", path)
	}
	visudo, lookErr := exec.LookPath("visudo")
	check := func(tmp string) error {
		if lookErr != nil {
			return nil
		}
		if out, err := exec.Command(visudo, "-cf", tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("visudo rejected the generated sudoers file: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := writeAtomicChecked(path, []byte(content), 0o440, check); err != nil {
		return false, err
	}
	return lookErr == nil, nil
}

func writeAtomic(path string, content []byte, mode os.FileMode) error {
	return writeAtomicChecked(path, content, mode, nil)
}

// writeAtomicChecked writes content to a fresh root-owned temporary file
// next to path (the dot keeps sudo from reading it), lets check veto it,
// and renames it over path: readers see the old file or the new one.
func writeAtomicChecked(path string, content []byte, mode os.FileMode, check func(tmp string) error) error {
	tmp := path + ".netshape-tmp"
	// A leftover could have another owner or mode: never write into it.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Chmod(mode) // the umask may have narrowed it
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// uninstall removes everything the plugin attached, pinned or wrote outside
// Dokku's config: the watcher (first, so it cannot re-attach), every budget
// (detaching its devices), leftover attachments and the pins (reconcile's
// RemoveAll, under the lock), then the lock file, the sudoers grant, the unit,
// the root-owned binary, and last our records in config/netshape and that
// directory. Dokku's properties stay: they are Dokku's resource settings, not ours.
func uninstall(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("uninstall must run as root")
	}
	var errs []error
	unit := unitPath()
	if sc := systemctl(); sc != "" {
		if _, err := os.Stat(unit); err == nil {
			// disable --now also stops it; a unit that is not loaded is not an error worth failing on.
			if out, err := exec.CommandContext(ctx, sc, "disable", "--now", unitName()).CombinedOutput(); err != nil {
				fmt.Printf(" !     netshape: systemctl disable --now %s: %v: %s\n", unitName(), err, bytes.TrimSpace(out))
			}
		}
	}
	// Under the reconcile lock, like every other change to the shaping: a
	// post-deploy or apply still running finishes first and cannot re-attach.
	if err := withReconciler(ctx, false, func(r *reconcile.Reconciler) error { return r.RemoveAll() }); err != nil {
		errs = append(errs, err)
	}
	// The running binary may be rootBinPath() itself: unlinking it is fine.
	for _, p := range []string{unit, unit + ".netshape-tmp", sudoersPath(), sudoersPath() + ".netshape-tmp",
		rootBinPath(), rootBinPath() + ".netshape-tmp", envOr(envLock, reconcile.DefaultLockPath),
		rootConfPath, rootConfPath + ".netshape-tmp", filepath.Dir(rootConfPath)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if sc := systemctl(); sc != "" {
		if out, err := exec.CommandContext(ctx, sc, "daemon-reload").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("systemctl daemon-reload: %v: %s", err, bytes.TrimSpace(out)))
		}
	}
	// Our docker-options ownership records, then config/netshape itself
	// (the config lock directory): last, so nothing of ours is left in it.
	if err := dokku.EnvFromOS().RemoveOwnStore(configLockTimeout); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		fmt.Println("-----> netshape: removed every limit, pin, sudoers grant and unit it installed")
	}
	return errors.Join(errs...)
}

// sudoFailure explains a failed `sudo -n BIN ARGS...` run by asRoot. sudo
// exits 1 both when it refuses and when the command itself fails with 1, so
// ask it (`sudo -n -l`) whether the command is granted at all: a missing
// grant gets a message naming the fix, anything else keeps the command's
// own exit code (its output has already been shown).
func sudoFailure(ctx context.Context, self string, args []string, code int) error {
	if code == 1 {
		probe := exec.CommandContext(ctx, "sudo", append([]string{"-n", "-l", self}, args...)...)
		if probe.Run() != nil {
			return fmt.Errorf("%s needs root, and sudo does not let this user run `%s %s` without a password: "+
				"the netshape plugin's sudoers grant (%s) is missing or stale; run `sudo dokku plugin:install` to restore it",
				args[0], self, strings.Join(args, " "), sudoersPath())
		}
	}
	return exitError{code: code}
}

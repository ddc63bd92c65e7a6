package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// The root side: the dokku user runs `apply`, `remove` and `report` of the
// root-owned binary through sudo (see sudoersContent). Everything that
// process could take from its caller is the dokku user's to choose, so under
// sudo it takes nothing: the environment is replaced by the paths install
// recorded in a root-owned file, and argv must be one of the granted forms.

// rootConfPath is where install records the Dokku paths it was installed
// with, for the root side to read. A constant: nothing the caller passes
// may move it.
const rootConfPath = "/etc/dokku-netshape/paths"

// Keys of the root-owned config, each checked by its pattern.
var rootConfKeys = map[string]*regexp.Regexp{
	"DOKKU_ROOT":         safePath,
	"DOKKU_LIB_ROOT":     safePath,
	"DOKKU_SYSTEM_USER":  safeUser,
	"DOKKU_SYSTEM_GROUP": safeUser,
	"DOCKER_HOST":        regexp.MustCompile(`^(unix://)?/[A-Za-z0-9/._+-]+$|^tcp://[A-Za-z0-9.:\[\]-]+$`),
	envDockerTimeout:     regexp.MustCompile(`^[0-9]+(ms|s|m)$`),
	envLockTimeout:       regexp.MustCompile(`^[0-9]+(ms|s|m)$`),
}

// rootPath is the fixed PATH of the root side (sudo's secure_path on Debian).
const rootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// viaGrant reports whether this process runs as root for the Dokku system
// user through sudo — the grant's only user — and returns the root-owned
// config. An administrator's own `sudo dokku-netshape ...` is not the grant
// and keeps the whole CLI. A broken config is an error whenever sudo is
// involved: better no root side than one with guessed paths.
func viaGrant() (bool, map[string]string, error) {
	sudoUID := os.Getenv("SUDO_UID")
	if os.Geteuid() != 0 || sudoUID == "" {
		return false, nil, nil
	}
	conf, err := readRootConf(rootConfPath)
	if err != nil {
		return true, nil, err
	}
	name := conf["DOKKU_SYSTEM_USER"]
	if name == "" {
		name = dokku.DefaultSystemUser
	}
	u, err := user.Lookup(name)
	if err != nil || u.Uid != sudoUID {
		return false, nil, nil
	}
	return true, conf, nil
}

// enterRootSide checks argv against the granted forms and replaces the
// whole environment with the root-owned config (defaults when it is absent).
func enterRootSide(args []string, conf map[string]string) error {
	if err := checkGrantedArgs(args); err != nil {
		return err
	}
	keep := map[string]string{"PATH": rootPath}
	for _, k := range []string{"SUDO_UID", "SUDO_GID", "SUDO_USER"} {
		keep[k] = os.Getenv(k)
	}
	os.Clearenv()
	for k, v := range keep {
		os.Setenv(k, v)
	}
	for k, v := range conf {
		os.Setenv(k, v)
	}
	return nil
}

// readRootConf reads KEY=VALUE lines of the root-owned config. A missing
// file means Dokku's defaults; a file root does not own alone, a link, an
// unknown key or a malformed value is an error (never a silent fallback).
func readRootConf(path string) (map[string]string, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err := checkRootOnly(path); err != nil {
		return nil, fmt.Errorf("refusing %s: %w", path, err)
	}
	b, err := dokku.ReadFileBelow(filepath.Dir(path), path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	conf := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		re, known := rootConfKeys[k]
		switch {
		case !ok:
			return nil, fmt.Errorf("%s line %d: want KEY=VALUE", path, i+1)
		case !known:
			return nil, fmt.Errorf("%s line %d: unknown key %s", path, i+1, dokku.ShowValue(k))
		case !re.MatchString(v):
			return nil, fmt.Errorf("%s line %d: %s has an invalid value %s", path, i+1, k, dokku.ShowValue(v))
		}
		conf[k] = v
	}
	return conf, nil
}

// rootConfContent is what install records: the Dokku tree it was installed
// for (as Dokku exported it to the install trigger) and, when set, the
// Docker endpoint.
func rootConfContent(env dokku.Env) (string, error) {
	vals := [][2]string{
		{"DOKKU_ROOT", env.DokkuRoot},
		{"DOKKU_LIB_ROOT", env.LibRoot},
		{"DOKKU_SYSTEM_USER", env.SystemUser},
		{"DOKKU_SYSTEM_GROUP", env.SystemGroup},
	}
	for _, k := range []string{"DOCKER_HOST", envDockerTimeout, envLockTimeout} {
		if v := os.Getenv(k); v != "" {
			vals = append(vals, [2]string{k, v})
		}
	}
	var b strings.Builder
	b.WriteString("# Written by the netshape plugin's install trigger. The root side (apply, remove, report run\n")
	b.WriteString("# through sudo by the dokku user) takes Dokku's paths from here, never from its caller.\n")
	for _, kv := range vals {
		if !rootConfKeys[kv[0]].MatchString(kv[1]) {
			return "", fmt.Errorf("%s=%s: not a plain value the root side would accept", kv[0], dokku.ShowValue(kv[1]))
		}
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	return b.String(), nil
}

// checkGrantedArgs accepts exactly what the grant is for (args without the
// program name):
//
//	apply APP [--force] | apply --all [--force]
//	remove APP
//	report [APP] [--format stdout|json] [--netshape-FIELD] [--sample-window D]
//	top --interval D --count N     (D 100ms..1m, N 0..1000000; read-only)
//
// --force is allowed: it replaces a foreign root qdisc only on the veths of
// the app's own containers, which the dokku user already controls (and
// `netshape:set --force` needs it).
func checkGrantedArgs(args []string) error {
	refuse := func(why string) error {
		return fmt.Errorf("run through sudo, only `apply APP|--all [--force]`, `remove APP`, `report [APP] [--format F] [--netshape-FIELD] [--sample-window D]` and `top --interval D --count N` are allowed: %s", why)
	}
	if len(args) == 0 {
		return refuse("no command")
	}
	switch args[0] {
	case "apply":
		var app string
		all, force := false, false
		for _, a := range args[1:] {
			switch {
			case a == "--all" && !all:
				all = true
			case a == "--force" && !force:
				force = true
			case !strings.HasPrefix(a, "-") && app == "":
				if err := dokku.ValidateAppName(a); err != nil {
					return refuse(err.Error())
				}
				app = a
			default:
				return refuse("unexpected argument " + dokku.ShowValue(a))
			}
		}
		if all == (app != "") {
			return refuse("apply needs exactly one of APP or --all")
		}
	case "remove":
		if len(args) != 2 {
			return refuse("remove needs exactly one APP")
		}
		if err := dokku.ValidateAppName(args[1]); err != nil {
			return refuse(err.Error())
		}
	case "top":
		if err := checkGrantedTop(args[1:]); err != nil {
			return refuse(err.Error())
		}
	case "report":
		ra, err := parseReportArgs(args[1:])
		if err != nil {
			return refuse(err.Error())
		}
		if ra.app != "" {
			if err := dokku.ValidateAppName(ra.app); err != nil {
				return refuse(err.Error())
			}
		}
	default:
		return refuse("command " + dokku.ShowValue(args[0]))
	}
	return nil
}

// Package dokku reads and writes Dokku's on-disk contracts: app directories,
// plugin properties (resource, docker-options, ps), CONTAINER.* files and the
// version file. It knows about files only — no Docker, no devices.
//
// Everything here follows Dokku 0.38.x source (dokku/dokku: the `dokku`
// entry script, plugins/common/properties.go, plugins/resource,
// plugins/docker-options, plugins/ps); the reference is cited next to each
// rule. See doc.go for what Dokku itself does on app rename/clone/delete.
package dokku

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// Defaults as the `dokku` entry script sets them.
const (
	DefaultDokkuRoot   = "/home/dokku" // used only when ~dokku cannot be resolved
	DefaultLibRoot     = "/var/lib/dokku"
	DefaultSystemUser  = "dokku"
	DefaultSystemGroup = "dokku"

	// GlobalApp is the app-directory name Dokku uses for global property values.
	GlobalApp = "--global"
	// DefaultProcess is the process type Dokku uses for "every process type".
	DefaultProcess = "_default_"
)

// Env locates a Dokku installation and says who must own what is written there.
type Env struct {
	DokkuRoot   string // DOKKU_ROOT: per-app dirs, CONTAINER.* files
	LibRoot     string // DOKKU_LIB_ROOT: config/<plugin>/<app>/<key>, data/, VERSION
	SystemUser  string // DOKKU_SYSTEM_USER: owner of written files
	SystemGroup string // DOKKU_SYSTEM_GROUP

	// LookupOwner resolves SystemUser/SystemGroup to numeric ids. nil means
	// os/user. Returning an error wrapping ErrNoSuchOwner means "leave
	// ownership as it is"; any other error fails the write.
	LookupOwner func(userName, groupName string) (uid, gid int, err error)
	// Chown changes a path's owner; nil means os.Lchown. Injectable for tests.
	Chown func(path string, uid, gid int) error
	// IsRoot reports whether ownership must be fixed; nil means euid == 0.
	// A tool run as the dokku user already creates files with the right owner.
	IsRoot func() bool

	// journal, when set, records every file before it changes (WithJournal).
	journal *Journal
}

// ErrNoSuchOwner means the configured Dokku system user does not exist on
// this machine (e.g. a dev box or CI without Dokku): files keep the owner
// they were created with.
var ErrNoSuchOwner = errors.New("dokku system user does not exist")

// EnvFromOS builds an Env the way the `dokku` script does:
//
//	DOKKU_ROOT=${DOKKU_ROOT:=~dokku}            (home of the user literally named dokku)
//	DOKKU_LIB_ROOT=${DOKKU_LIB_PATH:="/var/lib/dokku"}
//	DOKKU_SYSTEM_USER/GROUP default "dokku"
//
// Triggers and commands run by Dokku get DOKKU_LIB_ROOT exported, so it is
// read first; DOKKU_LIB_PATH (what the script itself reads) second. Values
// set only in /etc/default/dokku or dokkurc are not seen by a process not
// started by Dokku — pass them through the environment.
func EnvFromOS() Env {
	e := Env{
		DokkuRoot:   os.Getenv("DOKKU_ROOT"),
		LibRoot:     os.Getenv("DOKKU_LIB_ROOT"),
		SystemUser:  os.Getenv("DOKKU_SYSTEM_USER"),
		SystemGroup: os.Getenv("DOKKU_SYSTEM_GROUP"),
	}
	if e.DokkuRoot == "" {
		e.DokkuRoot = DefaultDokkuRoot
		if u, err := user.Lookup("dokku"); err == nil && u.HomeDir != "" {
			e.DokkuRoot = u.HomeDir
		}
	}
	if e.LibRoot == "" {
		e.LibRoot = os.Getenv("DOKKU_LIB_PATH")
	}
	if e.LibRoot == "" {
		e.LibRoot = DefaultLibRoot
	}
	if e.SystemUser == "" {
		e.SystemUser = DefaultSystemUser
	}
	if e.SystemGroup == "" {
		e.SystemGroup = DefaultSystemGroup
	}
	return e
}

// AppDir is DOKKU_ROOT/APP.
func (e Env) AppDir(app string) string { return filepath.Join(e.DokkuRoot, app) }

// PluginConfigDir is DOKKU_LIB_ROOT/config/PLUGIN.
func (e Env) PluginConfigDir(plugin string) string {
	return filepath.Join(e.LibRoot, "config", plugin)
}

// PropertyDir is DOKKU_LIB_ROOT/config/PLUGIN/APP (APP may be GlobalApp).
func (e Env) PropertyDir(plugin, app string) string {
	return filepath.Join(e.LibRoot, "config", plugin, app)
}

// DataDir is DOKKU_LIB_ROOT/data/PLUGIN/APP (common.GetAppDataDirectory).
func (e Env) DataDir(plugin, app string) string {
	return filepath.Join(e.LibRoot, "data", plugin, app)
}

// owner returns the ids to chown to, or ok=false when ownership must be left
// alone (not root, or the system user does not exist).
func (e Env) owner() (uid, gid int, ok bool, err error) {
	if !e.isRoot() {
		return 0, 0, false, nil
	}
	lookup := e.LookupOwner
	if lookup == nil {
		lookup = LookupOwnerOS
	}
	uid, gid, err = lookup(e.SystemUser, e.SystemGroup)
	if errors.Is(err, ErrNoSuchOwner) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, err
	}
	return uid, gid, true, nil
}

func (e Env) isRoot() bool {
	if e.IsRoot != nil {
		return e.IsRoot()
	}
	return os.Geteuid() == 0
}

// LookupOwnerOS resolves a user and group with os/user. A missing user gives
// ErrNoSuchOwner; a missing group falls back to the user's primary group.
func LookupOwnerOS(userName, groupName string) (uid, gid int, err error) {
	u, err := user.Lookup(userName)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return 0, 0, fmt.Errorf("%w: %q", ErrNoSuchOwner, userName)
		}
		return 0, 0, fmt.Errorf("look up user %q: %w", userName, err)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q has non-numeric uid %q", userName, u.Uid)
	}
	gidStr := u.Gid
	if g, gerr := user.LookupGroup(groupName); gerr == nil {
		gidStr = g.Gid
	} else {
		var unknown user.UnknownGroupError
		if !errors.As(gerr, &unknown) {
			return 0, 0, fmt.Errorf("look up group %q: %w", groupName, gerr)
		}
	}
	gid, err = strconv.Atoi(gidStr)
	if err != nil {
		return 0, 0, fmt.Errorf("group %q has non-numeric gid %q", groupName, gidStr)
	}
	return uid, gid, nil
}

// fixOwner chowns path to the Dokku system user when running as root.
func (e Env) fixOwner(path string) error {
	uid, gid, ok, err := e.owner()
	if err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if !ok {
		return nil
	}
	chown := e.Chown
	if chown == nil {
		chown = os.Lchown
	}
	if err := chown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s to %d:%d: %w", path, uid, gid, err)
	}
	return nil
}

package dokku

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

// App-name rules, from dokku/dokku plugins/common/common.go (0.38.x):
//
//	IsValidAppName:    ^[a-z0-9][a-z0-9.-]*$   (required for new names: apps:create, apps:rename target)
//	IsValidAppNameOld: ^[a-z0-9][a-z0-9._-]*$  (underscores; still accepted for existing apps)
//	VerifyAppName:     valid under either rule AND the directory DOKKU_ROOT/APP exists.
//
// Dokku sets no maximum length (only the filesystem's 255-byte name limit
// applies) and a name may start with a digit.
var (
	appNameRe    = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
	appNameOldRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
)

// maxAppNameLen is NAME_MAX: DOKKU_ROOT/APP must be creatable.
const maxAppNameLen = 255

// App errors.
var (
	ErrNoAppName      = errors.New("please specify an app to run the command on")
	ErrInvalidAppName = errors.New("app name must begin with lowercase alphanumeric character, and may only contain lowercase alphanumerics, dots, and hyphens")
	ErrAppNotFound    = errors.New("app does not exist")
)

// ValidateNewAppName applies Dokku's rule for new app names.
func ValidateNewAppName(name string) error {
	if name == "" {
		return ErrNoAppName
	}
	if len(name) > maxAppNameLen || !appNameRe.MatchString(name) {
		return fmt.Errorf("%w: %q", ErrInvalidAppName, name)
	}
	return nil
}

// ValidateAppName accepts what Dokku's VerifyAppName accepts for an existing
// app: the current rule or the old one (underscores allowed). It does not
// check that the app exists; see VerifyApp.
func ValidateAppName(name string) error {
	if name == "" {
		return ErrNoAppName
	}
	if len(name) > maxAppNameLen || !(appNameRe.MatchString(name) || appNameOldRe.MatchString(name)) {
		return fmt.Errorf("%w: %q", ErrInvalidAppName, name)
	}
	return nil
}

// AppExists reports whether DOKKU_ROOT/APP is a directory, as Dokku's
// VerifyAppName checks. Invalid names never exist. Unlike Dokku, a symbolic
// link is not an app: the dokku user owns DOKKU_ROOT, and a linked app dir
// would steer root's reads anywhere.
func (e Env) AppExists(app string) bool {
	if ValidateAppName(app) != nil {
		return false
	}
	return IsDirBelow(e.DokkuRoot, e.AppDir(app))
}

// VerifyApp is Dokku's VerifyAppName: a valid name whose directory exists.
func (e Env) VerifyApp(app string) error {
	if err := ValidateAppName(app); err != nil {
		return err
	}
	if !e.AppExists(app) {
		if fi, err := os.Lstat(e.AppDir(app)); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%w: %q (%s %v)", ErrAppNotFound, app, e.AppDir(app), ErrSymlink)
		}
		return fmt.Errorf("%w: %q", ErrAppNotFound, app)
	}
	return nil
}

// Apps lists the apps as Dokku's UnfilteredDokkuApps does: directories in
// DOKKU_ROOT not starting with '.' or an upper-case letter (DOKKU_ROOT also
// holds .ssh, VHOST, ...), sorted. A missing DOKKU_ROOT gives no apps.
func (e Env) Apps() ([]string, error) {
	entries, err := os.ReadDir(e.DokkuRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list apps in %s: %w", e.DokkuRoot, err)
	}
	var apps []string
	for _, ent := range entries {
		name := ent.Name()
		if strings.HasPrefix(name, ".") || unicode.IsUpper(rune(name[0])) {
			continue
		}
		if !IsDirBelow(e.DokkuRoot, e.AppDir(name)) { // no links: see AppExists
			continue
		}
		apps = append(apps, name)
	}
	sort.Strings(apps)
	return apps, nil
}

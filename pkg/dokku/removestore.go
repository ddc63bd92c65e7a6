package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ownRecord reports whether name is a file this tool writes in its own
// property store: the docker-options ownership records (recordKey).
func ownRecord(name string) bool {
	return strings.HasPrefix(name, "owned-docker-options.") && strings.HasSuffix(name, ".deploy")
}

// RemoveOwnStore deletes this tool's own property store, for the plugin's
// uninstall: every ownership record in DOKKU_LIB_ROOT/config/netshape/APP,
// each APP directory, then config/netshape itself (also the config lock, so
// it goes last, under that lock). The docker-options lines the records
// describe stay, like Dokku's other settings: without their records they are
// the operator's. Anything else found there (a file we never write, a
// symlink, a subdirectory) is left in place with everything above it, and
// named in the error. No store: nothing to do, and nothing is created.
func (e Env) RemoveOwnStore(lockTimeout time.Duration) error {
	dir := e.PluginConfigDir(OwnerPlugin)
	if fi, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("kept %s: not a directory netshape made", dir)
	}
	unlock, err := e.LockConfig(lockTimeout)
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	defer unlock()

	apps, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	var foreign []string
	for _, app := range apps {
		appDir := filepath.Join(dir, app.Name())
		if !app.IsDir() { // symlinks included: never followed
			foreign = append(foreign, appDir)
			continue
		}
		ents, err := os.ReadDir(appDir)
		if err != nil {
			return fmt.Errorf("remove %s: %w", appDir, err)
		}
		kept := false
		for _, ent := range ents {
			p := filepath.Join(appDir, ent.Name())
			if !ent.Type().IsRegular() || !ownRecord(ent.Name()) {
				foreign = append(foreign, p)
				kept = true
				continue
			}
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
		}
		if !kept {
			if err := os.Remove(appDir); err != nil {
				return fmt.Errorf("remove %s: %w", appDir, err)
			}
		}
	}
	if len(foreign) > 0 {
		return fmt.Errorf("kept %s: it holds what netshape did not write: %s", dir, strings.Join(foreign, ", "))
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

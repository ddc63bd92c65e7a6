package dokku

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Property store layout (dokku/dokku plugins/common/properties.go):
//
//	DOKKU_LIB_ROOT/config/<plugin>/<app>/<key>      app "--global" holds global values
//	scalar: raw content, no trailing newline         (PropertyWrite: fmt.Fprint)
//	list:   one value per line, each ending in "\n"  (PropertyListWrite: fmt.Fprintln)
//	dirs 0755, files 0600, owned DOKKU_SYSTEM_USER:DOKKU_SYSTEM_GROUP (SetPermissions)
//
// Unlike Dokku (truncate + write in place), writes here are atomic: a temp
// file in the plugin's config dir, fsync, chmod/chown, rename over the key.
// The temp file lives beside, not inside, the app dir so that a crash never
// leaves a stray "property" that Dokku's PropertyGetAll would list.

// Property errors.
var (
	ErrInvalidKey    = errors.New("invalid property key")
	ErrInvalidPlugin = errors.New("invalid plugin name")
)

const (
	propertyDirMode  fs.FileMode = 0o755
	propertyFileMode fs.FileMode = 0o600
)

// Properties is one plugin's property store.
type Properties struct {
	Env    Env
	Plugin string
}

// Properties returns the store of a plugin ("resource", "docker-options", "ps", ...).
func (e Env) Properties(plugin string) Properties { return Properties{Env: e, Plugin: plugin} }

func validComponent(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}

func (p Properties) check(app, key string) error {
	if !validComponent(p.Plugin) {
		return fmt.Errorf("%w: %q", ErrInvalidPlugin, p.Plugin)
	}
	if app != GlobalApp {
		if err := ValidateAppName(app); err != nil {
			return err
		}
	}
	if key != "" && !validComponent(key) {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	return nil
}

// Path is the file holding app's key.
func (p Properties) Path(app, key string) (string, error) {
	if key == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if err := p.check(app, key); err != nil {
		return "", err
	}
	return filepath.Join(p.Env.PropertyDir(p.Plugin, app), key), nil
}

// Get returns the raw value of a scalar property; ok is false when the key
// does not exist.
func (p Properties) Get(app, key string) (value string, ok bool, err error) {
	path, err := p.Path(app, key)
	if err != nil {
		return "", false, err
	}
	b, err := ReadFileBelow(p.Env.LibRoot, path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read %s property %s.%s: %w", p.Plugin, app, key, err)
	}
	return string(b), true, nil
}

// Set writes a scalar property: exactly value, no trailing newline.
func (p Properties) Set(app, key, value string) error {
	return p.write(app, key, []byte(value))
}

// Delete removes a key; a missing key is not an error (Dokku's PropertyDelete).
func (p Properties) Delete(app, key string) error {
	path, err := p.Path(app, key)
	if err != nil {
		return err
	}
	if err := p.Env.journal.save(path, filepath.Dir(filepath.Dir(path))); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s property %s.%s: %w", p.Plugin, app, key, err)
	}
	return nil
}

// Keys lists app's property names, sorted (files only, as PropertyGetAll).
func (p Properties) Keys(app string) ([]string, error) {
	if err := p.check(app, ""); err != nil {
		return nil, err
	}
	dir := p.Env.PropertyDir(p.Plugin, app)
	entries, err := ReadDirBelow(p.Env.LibRoot, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s properties of %s: %w", p.Plugin, app, err)
	}
	var keys []string
	for _, ent := range entries {
		if ent.IsDir() {
			continue
		}
		keys = append(keys, ent.Name())
	}
	sort.Strings(keys)
	return keys, nil
}

// GetAll returns every property of app with its raw value.
func (p Properties) GetAll(app string) (map[string]string, error) {
	keys, err := p.Keys(app)
	if err != nil {
		return nil, err
	}
	all := make(map[string]string, len(keys))
	for _, k := range keys {
		v, ok, err := p.Get(app, k)
		if err != nil {
			return nil, err
		}
		if ok {
			all[k] = v
		}
	}
	return all, nil
}

// GetList reads a list property: one value per line (PropertyListGet). A
// missing key is an empty list.
func (p Properties) GetList(app, key string) ([]string, error) {
	v, ok, err := p.Get(app, key)
	if err != nil || !ok {
		return nil, err
	}
	return splitLines(v), nil
}

// SetList writes a list property the way PropertyListWrite does: every value
// followed by "\n". Values must not contain newlines.
func (p Properties) SetList(app, key string, values []string) error {
	var buf bytes.Buffer
	for _, v := range values {
		if strings.ContainsAny(v, "\n\r") {
			return fmt.Errorf("write %s list %s.%s: value %q contains a newline", p.Plugin, app, key, v)
		}
		buf.WriteString(v)
		buf.WriteByte('\n')
	}
	return p.write(app, key, buf.Bytes())
}

// Clone copies every property of from to to (PropertyClone); existing keys
// of to are overwritten, others kept.
func (p Properties) Clone(from, to string) error {
	all, err := p.GetAll(from)
	if err != nil {
		return err
	}
	for k, v := range all {
		if err := p.Set(to, k, v); err != nil {
			return err
		}
	}
	return nil
}

// Destroy removes all of app's properties (PropertyDestroy).
func (p Properties) Destroy(app string) error {
	if err := p.check(app, ""); err != nil {
		return err
	}
	if p.Env.journal != nil {
		keys, err := p.Keys(app)
		if err != nil {
			return err
		}
		for _, k := range keys {
			path := filepath.Join(p.Env.PropertyDir(p.Plugin, app), k)
			if err := p.Env.journal.save(path, p.Env.PluginConfigDir(p.Plugin)); err != nil {
				return err
			}
		}
	}
	if err := os.RemoveAll(p.Env.PropertyDir(p.Plugin, app)); err != nil {
		return fmt.Errorf("destroy %s properties of %s: %w", p.Plugin, app, err)
	}
	return nil
}

// splitLines splits like bufio.Scanner(ScanLines): "a\nb\n" → [a b], a final
// line without newline still counts, "\r\n" endings are stripped.
func splitLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64*1024), len(s)+1)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// ensureDir creates dir and its missing parents below root, giving each
// directory it creates mode 0755 and the Dokku owner. root itself must exist
// (a missing DOKKU_LIB_ROOT means Dokku is not installed: no guessing).
// Existing directories are left untouched.
func (e Env) ensureDir(root, dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	rel, rerr := filepath.Rel(root, dir)
	if rerr != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%s does not exist", dir)
	}
	if err := e.ensureDir(root, filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, propertyDirMode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // created concurrently
		}
		return fmt.Errorf("create %s: %w", dir, err)
	}
	e.journal.created(dir)
	// Explicit chmod: Mkdir's mode is filtered by the umask.
	if err := os.Chmod(dir, propertyDirMode); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return e.fixOwner(dir)
}

func (p Properties) write(app, key string, content []byte) error {
	path, err := p.Path(app, key)
	if err != nil {
		return err
	}
	if err := p.Env.ensureDir(p.Env.LibRoot, filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s property %s.%s: %w", p.Plugin, app, key, err)
	}
	if err := p.Env.journal.save(path, filepath.Dir(filepath.Dir(path))); err != nil {
		return fmt.Errorf("write %s property %s.%s: %w", p.Plugin, app, key, err)
	}
	if err := p.Env.writeFileAtomic(path, filepath.Dir(filepath.Dir(path)), content, propertyFileMode, nil); err != nil {
		return fmt.Errorf("write %s property %s.%s: %w", p.Plugin, app, key, err)
	}
	return nil
}

// ownerSpec forces a uid/gid on a written file (to keep an existing file's owner).
type ownerSpec struct{ uid, gid int }

// writeFileAtomic writes content to path via a temp file in tmpDir (same
// filesystem), setting mode and either keep's ids or the Dokku owner.
func (e Env) writeFileAtomic(path, tmpDir string, content []byte, mode fs.FileMode, keep *ownerSpec) (err error) {
	f, err := os.CreateTemp(tmpDir, ".netshape-tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(content); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if keep != nil && e.isRoot() {
		chown := e.Chown
		if chown == nil {
			chown = os.Lchown
		}
		if err = chown(tmp, keep.uid, keep.gid); err != nil {
			return fmt.Errorf("chown %s to %d:%d: %w", tmp, keep.uid, keep.gid, err)
		}
	} else if keep == nil {
		if err = e.fixOwner(tmp); err != nil {
			return err
		}
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// GetMap reads a map property the way PropertyMapGet does: a missing key or
// an empty file is an empty map, anything else must be a JSON object of
// strings.
func (p Properties) GetMap(app, key string) (map[string]string, error) {
	v, ok, err := p.Get(app, key)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	if !ok || v == "" {
		return m, nil
	}
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return nil, fmt.Errorf("read %s map property %s.%s: not a JSON object of strings: %w", p.Plugin, app, key, err)
	}
	return m, nil
}

// SetMap writes a map property byte for byte as PropertyMapWrite does:
// json.Marshal of the map (keys sorted, no trailing newline), "{}" for none.
func (p Properties) SetMap(app, key string, m map[string]string) error {
	if m == nil {
		m = map[string]string{}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("write %s map property %s.%s: %w", p.Plugin, app, key, err)
	}
	return p.write(app, key, b)
}

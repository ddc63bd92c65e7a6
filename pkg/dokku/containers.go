package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ContainerFile is one DOKKU_ROOT/APP/CONTAINER.<proc>.<n> file, written by
// the docker-local scheduler (scheduler-deploy-process-container:
// `echo "$cid" > "$DOKKU_ROOT/$APP/CONTAINER.$PROC_TYPE.$CONTAINER_INDEX"`).
// It names the container Dokku considers current for that dyno; replaced
// containers may still run for DOKKU_WAIT_TO_RETIRE. The Docker label
// com.dokku.app-name is the primary source — this is a cross-check.
type ContainerFile struct {
	Process string
	Index   int
	ID      string // first line, trimmed (64-hex in practice)
	Path    string
}

// ContainerFiles lists an app's CONTAINER.<proc>.<n> files, sorted by process
// then index. Files whose name or content does not fit (no index, empty,
// non-hex ID) and the pre-scaling plain "CONTAINER" file are skipped. A
// missing app dir is ErrAppNotFound.
func (e Env) ContainerFiles(app string) ([]ContainerFile, error) {
	if err := e.VerifyApp(app); err != nil {
		return nil, err
	}
	dir := e.AppDir(app)
	entries, err := ReadDirBelow(e.DokkuRoot, dir)
	if err != nil {
		return nil, fmt.Errorf("list container files of %s: %w", app, err)
	}
	var out []ContainerFile
	for _, ent := range entries {
		name := ent.Name()
		rest, ok := strings.CutPrefix(name, "CONTAINER.")
		if !ok || ent.IsDir() {
			continue
		}
		i := strings.LastIndexByte(rest, '.')
		if i <= 0 {
			continue
		}
		n, err := strconv.Atoi(rest[i+1:])
		if err != nil || n < 0 {
			continue
		}
		path := filepath.Join(dir, name)
		b, err := ReadFileBelow(e.DokkuRoot, path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // replaced while listing
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		id, _, _ := strings.Cut(string(b), "\n")
		id = strings.TrimSpace(id)
		if !isHexID(id) {
			continue
		}
		out = append(out, ContainerFile{Process: rest[:i], Index: n, ID: id, Path: path})
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Process != out[b].Process {
			return out[a].Process < out[b].Process
		}
		return out[a].Index < out[b].Index
	})
	return out, nil
}

// ContainerIDs maps process type → container IDs from the CONTAINER files,
// ordered by dyno index.
func (e Env) ContainerIDs(app string) (map[string][]string, error) {
	files, err := e.ContainerFiles(app)
	if err != nil {
		return nil, err
	}
	m := map[string][]string{}
	for _, f := range files {
		m[f.Process] = append(m[f.Process], f.ID)
	}
	return m, nil
}

func isHexID(s string) bool {
	if len(s) < 12 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// RetiringName reports whether name is what Dokku renames a replaced deploy
// container to, APP.PROC.N.<epoch>, while it waits to retire it (the new
// container takes APP.PROC.N, which it returns). Dokku stops such a
// container DOKKU_WAIT_TO_RETIRE after the deploy.
func RetiringName(app, name string) (replacement string, ok bool) {
	rest, found := strings.CutPrefix(name, app+".")
	if !found {
		return "", false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 || parts[0] == "" || !allDigits(parts[1]) || !allDigits(parts[2]) {
		return "", false
	}
	return app + "." + parts[0] + "." + parts[1], true
}

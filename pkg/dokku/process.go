package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Process types, by Dokku version (dokku/dokku plugins/ps):
//
//   - 0.38: list property ps/APP/scale, lines "<proc>=<count>" (updateScale
//     writes every Procfile process type, 0 for unscaled ones; types that left
//     the Procfile move to "scale.old" and are not valid any more). The
//     extracted Procfile is DOKKU_LIB_ROOT/data/ps/APP/Procfile.
//   - older releases: DOKKU_ROOT/APP/DOKKU_SCALE with the same lines (0.38's ps
//     install trigger deletes it).
//
// ProcessTypes reads the first of: the scale property, DOKKU_SCALE, the
// Procfile. An app with none of them (never deployed) has no process types.

// ErrUnknownProcessType means a process type is not in the app's formation.
var ErrUnknownProcessType = errors.New("unknown process type")

// Formation is one process type and its scale.
type Formation struct {
	Process  string
	Quantity int
}

// procfileLine is procfile-util's process line: "name: command".
var procfileLine = regexp.MustCompile(`^([A-Za-z0-9_-]+):\s*(.+)$`)

// Formations returns the app's process types with their scale, sorted by
// name, and the source they were read from.
func (e Env) Formations(app string) ([]Formation, string, error) {
	if err := e.VerifyApp(app); err != nil {
		return nil, "", err
	}
	if lines, ok, err := e.scaleProperty(app); err != nil {
		return nil, "", err
	} else if ok {
		f, err := parseScale(lines)
		if err != nil {
			return nil, "", fmt.Errorf("ps scale property of %s: %w", app, err)
		}
		return f, "property ps/" + app + "/scale", nil
	}
	legacy := filepath.Join(e.AppDir(app), "DOKKU_SCALE")
	if b, err := ReadFileBelow(e.DokkuRoot, legacy); err == nil {
		f, err := parseScale(splitLines(string(b)))
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", legacy, err)
		}
		return f, legacy, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("read %s: %w", legacy, err)
	}
	procfile := filepath.Join(e.DataDir("ps", app), "Procfile")
	if b, err := ReadFileBelow(e.LibRoot, procfile); err == nil {
		var f []Formation
		seen := map[string]bool{}
		for _, l := range splitLines(string(b)) {
			m := procfileLine.FindStringSubmatch(strings.TrimSpace(l))
			if m == nil || seen[m[1]] {
				continue
			}
			seen[m[1]] = true
			f = append(f, Formation{Process: m[1]})
		}
		sortFormations(f)
		return f, procfile, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("read %s: %w", procfile, err)
	}
	return nil, "", nil
}

func (e Env) scaleProperty(app string) ([]string, bool, error) {
	p := e.Properties("ps")
	_, ok, err := p.Get(app, "scale")
	if err != nil || !ok {
		return nil, false, err
	}
	lines, err := p.GetList(app, "scale")
	return lines, true, err
}

// parseScale follows Dokku's parseProcessTuples: "proc=count", first wins.
func parseScale(lines []string) ([]Formation, error) {
	var f []Formation
	seen := map[string]bool{}
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		proc, count, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("missing count for process type %s", ShowValue(l))
		}
		proc = strings.TrimSpace(proc)
		n, err := strconv.Atoi(strings.TrimSpace(count))
		if err != nil {
			return nil, fmt.Errorf("invalid count for process type %s", ShowValue(proc))
		}
		if seen[proc] {
			continue
		}
		seen[proc] = true
		f = append(f, Formation{Process: proc, Quantity: n})
	}
	sortFormations(f)
	return f, nil
}

func sortFormations(f []Formation) {
	sort.Slice(f, func(a, b int) bool { return f[a].Process < f[b].Process })
}

// ProcessTypes returns the app's process type names, sorted.
func (e Env) ProcessTypes(app string) ([]string, error) {
	f, _, err := e.Formations(app)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(f))
	for i, x := range f {
		names[i] = x.Process
	}
	return names, nil
}

// CheckProcessType returns nil for _default_ and for a process type of the
// app's formation, and an error wrapping ErrUnknownProcessType otherwise
// (including apps with no known process types).
func (e Env) CheckProcessType(app, proc string) error {
	if proc == "" || proc == DefaultProcess {
		return nil
	}
	if err := ValidateProcessType(proc); err != nil {
		return err
	}
	names, err := e.ProcessTypes(app)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == proc {
			return nil
		}
	}
	known := "none known"
	// Names come from a file the dokku user writes: list only valid ones.
	names = slices.DeleteFunc(names, func(n string) bool { return ValidateProcessType(n) != nil })
	if len(names) > 0 {
		known = "known: " + strings.Join(names, ", ")
	}
	return fmt.Errorf("%w %q for app %s (%s)", ErrUnknownProcessType, proc, app, known)
}

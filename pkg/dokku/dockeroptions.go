package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
)

// Docker options of the deploy phase, where Dokku keeps them:
//
//   - Dokku ≥ 0.38.0 (docker-options plugin rewritten in Go, dokku #8514/#8516):
//     list property of plugin "docker-options", key "<proc>.deploy"
//     ("_default_.deploy" for every process type), one shell-quoted option per
//     line, sorted on every write. Dokku emits the _default_ list
//     (docker-args-deploy) and then the process's own list
//     (docker-args-process-deploy) on `docker run`.
//   - Dokku < 0.38.0: file DOKKU_ROOT/APP/DOCKER_OPTIONS_DEPLOY, one option per
//     line, '#' comments, no process scoping. 0.38's docker-options install
//     trigger drains these files into "_default_.<phase>" and then writes
//     config/docker-options/--global/migrated-from-files = "true".
//
// Ownership: this tool edits only lines it wrote itself. Which lines those
// are is recorded in its own property store (plugin Owner, key
// "owned-docker-options.<proc>.deploy", a list). A line whose flag is one of
// OwnedFlags but that is not in the record was written by the operator: it is
// never changed or removed, and setting the same flag while it exists is a
// conflict (ErrForeignOption) rather than a silent duplicate.

// DockerOptionsPlugin is the docker-options plugin's property namespace.
const DockerOptionsPlugin = "docker-options"

// OwnerPlugin is the default property namespace of this tool.
const OwnerPlugin = "netshape"

// OwnedFlags are the docker run flags this tool manages through docker-options.
var OwnedFlags = []string{
	"--blkio-weight",
	"--device-read-bps",
	"--device-write-bps",
	"--device-read-iops",
	"--device-write-iops",
}

// OptionsStorage says where an installation keeps docker-options.
type OptionsStorage string

// Storage kinds.
const (
	StorageProperties OptionsStorage = "properties"  // config/docker-options/APP/<proc>.deploy
	StorageLegacyFile OptionsStorage = "legacy-file" // DOKKU_ROOT/APP/DOCKER_OPTIONS_DEPLOY
)

// Docker-options errors.
var (
	ErrForeignOption        = errors.New("an operator-written docker option already sets this flag")
	ErrNotOwnedOption       = errors.New("not an option this tool manages")
	ErrProcessScopeLegacy   = errors.New("docker-options cannot be scoped to a process type before Dokku 0.38")
	ErrUnknownOptionStorage = errors.New("cannot tell where this Dokku keeps docker-options")
)

// ForeignOptionsError lists the operator-written lines that conflict.
type ForeignOptionsError struct {
	App, Process string
	Lines        []string
}

func (e *ForeignOptionsError) Error() string {
	return fmt.Sprintf("docker-options of %s (%s, deploy): %v: %s — remove them with `dokku docker-options:remove` first",
		e.App, e.Process, ErrForeignOption, strings.Join(e.Lines, " | "))
}

func (e *ForeignOptionsError) Unwrap() error { return ErrForeignOption }

// DockerOptionsStorage detects where docker-options live, in this order:
//
//  1. the Dokku version (DokkuVersion: STABLE_VERSION, else VERSION):
//     < 0.38.0 → legacy file, otherwise properties — it is what the running
//     Dokku reads, whatever is on disk;
//  2. no usable version file: config/docker-options/--global/migrated-from-files
//     = "true" (only 0.38+ writes it), or the directory config/docker-options
//     exists (only the Go plugin creates it) → properties;
//  3. otherwise ErrUnknownOptionStorage.
//
// The reason string says which rule decided, for reports.
func (e Env) DockerOptionsStorage() (OptionsStorage, string, error) {
	v, verr := e.DokkuVersion()
	if verr == nil {
		if v.Less(0, 38, 0) {
			return StorageLegacyFile, fmt.Sprintf("Dokku %s (%s) is older than 0.38.0", v, v.File), nil
		}
		return StorageProperties, fmt.Sprintf("Dokku %s (%s) is 0.38.0 or newer", v, v.File), nil
	}
	if val, ok, _ := e.Properties(DockerOptionsPlugin).Get(GlobalApp, "migrated-from-files"); ok && val == "true" {
		return StorageProperties, "docker-options --global migrated-from-files is true", nil
	}
	if IsDirBelow(e.LibRoot, e.PluginConfigDir(DockerOptionsPlugin)) {
		return StorageProperties, e.PluginConfigDir(DockerOptionsPlugin) + " exists", nil
	}
	return "", "", fmt.Errorf("%w: %v; no %s", ErrUnknownOptionStorage, verr, e.PluginConfigDir(DockerOptionsPlugin))
}

// DockerOptions edits the deploy-phase docker-options this tool owns.
type DockerOptions struct {
	Env Env
	// Owner is the plugin whose properties record the lines written here;
	// "" means OwnerPlugin.
	Owner string
	// Storage forces a storage kind; "" detects it on every call.
	Storage OptionsStorage
}

// DockerOptions returns an editor recording ownership under plugin OwnerPlugin.
func (e Env) DockerOptions() DockerOptions { return DockerOptions{Env: e} }

func (d DockerOptions) owner() Properties {
	o := d.Owner
	if o == "" {
		o = OwnerPlugin
	}
	return d.Env.Properties(o)
}

func recordKey(proc string) string { return "owned-docker-options." + proc + ".deploy" }

func (d DockerOptions) storage() (OptionsStorage, error) {
	if d.Storage != "" {
		return d.Storage, nil
	}
	s, _, err := d.Env.DockerOptionsStorage()
	return s, err
}

func (d DockerOptions) scope(app, proc string) (string, OptionsStorage, error) {
	if err := d.Env.VerifyApp(app); err != nil {
		return "", "", err
	}
	if proc == "" {
		proc = DefaultProcess
	}
	if err := ValidateProcessType(proc); err != nil {
		return "", "", err
	}
	st, err := d.storage()
	if err != nil {
		return "", "", err
	}
	if st == StorageLegacyFile && proc != DefaultProcess {
		return "", "", fmt.Errorf("%w (process %q)", ErrProcessScopeLegacy, proc)
	}
	return proc, st, nil
}

// LegacyOptionsFile is DOKKU_ROOT/APP/DOCKER_OPTIONS_DEPLOY.
func (e Env) LegacyOptionsFile(app string) string {
	return filepath.Join(e.AppDir(app), "DOCKER_OPTIONS_DEPLOY")
}

// readLines returns the raw lines of the scope (legacy: every line including
// comments and blanks; properties: non-blank lines) and whether it exists.
func (d DockerOptions) readLines(app, proc string, st OptionsStorage) ([]string, bool, error) {
	if st == StorageLegacyFile {
		path := d.Env.LegacyOptionsFile(app)
		b, err := ReadFileBelow(d.Env.DokkuRoot, path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", path, err)
		}
		return splitLines(string(b)), true, nil
	}
	p := d.Env.Properties(DockerOptionsPlugin)
	_, ok, err := p.Get(app, proc+".deploy")
	if err != nil || !ok {
		return nil, false, err
	}
	raw, err := p.GetList(app, proc+".deploy")
	if err != nil {
		return nil, false, err
	}
	var lines []string
	for _, l := range raw {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines, true, nil
}

// Lines returns the deploy-phase docker-options of app's scope proc as
// stored (legacy files: comments included).
func (d DockerOptions) Lines(app, proc string) ([]string, error) {
	proc, st, err := d.scope(app, proc)
	if err != nil {
		return nil, err
	}
	lines, _, err := d.readLines(app, proc, st)
	return lines, err
}

// OwnedOptions describes one scope.
type OwnedOptions struct {
	Storage OptionsStorage
	Owned   []string // lines this tool wrote that are still there
	Foreign []string // operator-written lines that use one of OwnedFlags
}

func (d DockerOptions) classify(app, proc string, st OptionsStorage) (lines []string, exists bool, owned OwnedOptions, record []string, err error) {
	lines, exists, err = d.readLines(app, proc, st)
	if err != nil {
		return nil, false, OwnedOptions{}, nil, err
	}
	record, err = d.owner().GetList(app, recordKey(proc))
	if err != nil {
		return nil, false, OwnedOptions{}, nil, err
	}
	owned.Storage = st
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if slices.Contains(record, t) {
			owned.Owned = append(owned.Owned, t)
		} else if len(ownedFlagsIn(t)) > 0 {
			owned.Foreign = append(owned.Foreign, l)
		}
	}
	return lines, exists, owned, record, nil
}

// Owned reports which lines of the scope this tool owns and which
// operator-written lines use the same flags.
func (d DockerOptions) Owned(app, proc string) (OwnedOptions, error) {
	proc, st, err := d.scope(app, proc)
	if err != nil {
		return OwnedOptions{}, err
	}
	_, _, owned, _, err := d.classify(app, proc, st)
	return owned, err
}

// SetOwned makes options (each one of OwnedFlags with its value, e.g.
// "--blkio-weight=500" or "--device-read-bps /dev/sda:10mb") the complete set
// of this tool's lines in the scope: its previous lines are removed, every
// other line is kept byte for byte. Nothing is written when nothing changes.
// An operator line using a flag being set is a *ForeignOptionsError and
// nothing is written. Options apply to containers created afterwards only.
func (d DockerOptions) SetOwned(app, proc string, options []string) error {
	proc, st, err := d.scope(app, proc)
	if err != nil {
		return err
	}
	want := make([]string, 0, len(options))
	flags := map[string]bool{}
	for _, o := range options {
		c, err := CanonicalOwnedOption(o)
		if err != nil {
			return err
		}
		if !slices.Contains(want, c) {
			want = append(want, c)
		}
		for _, f := range ownedFlagsIn(c) {
			flags[f] = true
		}
	}
	sort.Strings(want)

	lines, exists, owned, record, err := d.classify(app, proc, st)
	if err != nil {
		return err
	}
	var conflicts []string
	for _, l := range owned.Foreign {
		for _, f := range ownedFlagsIn(strings.TrimSpace(l)) {
			if flags[f] {
				conflicts = append(conflicts, l)
				break
			}
		}
	}
	if len(conflicts) > 0 {
		return &ForeignOptionsError{App: app, Process: proc, Lines: conflicts}
	}

	var kept []string
	for _, l := range lines {
		if !slices.Contains(owned.Owned, strings.TrimSpace(l)) {
			kept = append(kept, l)
		}
	}
	newLines := append(slices.Clone(kept), want...)
	if st == StorageProperties {
		sort.Strings(newLines) // Dokku keeps the list sorted on every write
	}
	have := slices.Clone(owned.Owned)
	sort.Strings(have)
	have = slices.Compact(have)
	linesChanged := !slices.Equal(have, want) && (exists || len(newLines) > 0)

	rec := d.owner()
	if linesChanged {
		// Record the union first: a crash between the two writes then leaves
		// lines that are still recognised as ours, never orphaned ones.
		union := append(slices.Clone(record), want...)
		sort.Strings(union)
		union = slices.Compact(union)
		if !slices.Equal(union, record) {
			if err := rec.SetList(app, recordKey(proc), union); err != nil {
				return err
			}
		}
		if err := d.writeLines(app, proc, st, newLines); err != nil {
			return err
		}
	}
	if len(want) == 0 {
		if len(record) > 0 {
			return rec.Delete(app, recordKey(proc))
		}
		return nil
	}
	if !slices.Equal(record, want) {
		return rec.SetList(app, recordKey(proc), want)
	}
	return nil
}

// ClearOwned removes this tool's lines from the scope (SetOwned with none).
func (d DockerOptions) ClearOwned(app, proc string) error { return d.SetOwned(app, proc, nil) }

func (d DockerOptions) writeLines(app, proc string, st OptionsStorage, lines []string) error {
	if st == StorageProperties {
		return d.Env.Properties(DockerOptionsPlugin).SetList(app, proc+".deploy", lines)
	}
	path := d.Env.LegacyOptionsFile(app)
	if err := d.Env.journal.save(path, filepath.Dir(path)); err != nil {
		return err
	}
	var buf strings.Builder
	for _, l := range lines {
		buf.WriteString(l)
		buf.WriteByte('\n')
	}
	// Keep an existing file's mode and owner; a new one gets what Dokku's
	// bash plugin produced (touch as dokku: 0644, dokku:dokku).
	mode := fs.FileMode(0o644)
	var keep *ownerSpec
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			keep = &ownerSpec{uid: int(sys.Uid), gid: int(sys.Gid)}
		}
	}
	if err := d.Env.writeFileAtomic(path, filepath.Dir(path), []byte(buf.String()), mode, keep); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// CanonicalOwnedOption validates one option of OwnedFlags and returns it the
// way Dokku's docker-options:add stores it: a single "--flag=value" word,
// single-quoted only if it contains shell metacharacters. Accepted input:
// "--flag=value" or "--flag value" (shell quoting allowed).
func CanonicalOwnedOption(opt string) (string, error) {
	words, err := shellWords(opt)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrNotOwnedOption, opt, err)
	}
	var flag, value string
	switch {
	case len(words) == 1 && strings.Contains(words[0], "="):
		flag, value, _ = strings.Cut(words[0], "=")
	case len(words) == 2 && !strings.Contains(words[0], "="):
		flag, value = words[0], words[1]
	default:
		return "", fmt.Errorf("%w: %q (want one --flag=value)", ErrNotOwnedOption, opt)
	}
	if !slices.Contains(OwnedFlags, flag) {
		return "", fmt.Errorf("%w: %q (flag must be one of %s)", ErrNotOwnedOption, opt, strings.Join(OwnedFlags, ", "))
	}
	if value == "" || strings.ContainsAny(value, "\n\r") {
		return "", fmt.Errorf("%w: %q (empty or multi-line value)", ErrNotOwnedOption, opt)
	}
	return quoteShellWord(flag + "=" + value), nil
}

// ownedFlagsIn returns the OwnedFlags used by any flag word of a stored line
// ("--flag=v", "--flag v", several flags on one legacy line). Lines that do
// not parse as shell words use none (they are never touched anyway).
func ownedFlagsIn(line string) []string {
	words, err := shellWords(line)
	if err != nil {
		return nil
	}
	var out []string
	for _, w := range words {
		if !strings.HasPrefix(w, "-") {
			continue
		}
		f, _, _ := strings.Cut(w, "=")
		if slices.Contains(OwnedFlags, f) && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// shellWords splits a line into words with POSIX quote removal and no
// expansion, like Dokku's literalFields: '…' is literal, "…" honours \$ \`
// \" \\ escapes, a backslash outside quotes escapes the next byte, an
// unquoted '#' starting a word begins a comment.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case c == '\\':
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// quoteShellWord quotes like Dokku's quoteShellArg: verbatim unless the word
// holds a character the shell would interpret, then single-quoted.
func quoteShellWord(s string) string {
	if s == "" {
		return "''"
	}
	if !strings.ContainsAny(s, " \t\n\"'$`\\*?[]<>|&;(){}!#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

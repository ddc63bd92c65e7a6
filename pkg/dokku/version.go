package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
)

// Version is a Dokku release number.
type Version struct {
	Major, Minor, Patch int
	Raw                 string // file content, trimmed
	File                string // where it was read
}

// ErrUnknownVersion means no usable version file was found.
var ErrUnknownVersion = errors.New("cannot determine the Dokku version")

// Less reports whether v is older than major.minor.patch.
func (v Version) Less(major, minor, patch int) bool {
	if v.Major != major {
		return v.Major < major
	}
	if v.Minor != minor {
		return v.Minor < minor
	}
	return v.Patch < patch
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// DokkuVersion reads the version the way `dokku version` (plugins/common/
// functions dokku_version) does: DOKKU_LIB_ROOT/STABLE_VERSION, else
// DOKKU_LIB_ROOT/VERSION. Packaging writes VERSION from `git describe --tags`
// ("v0.38.27", "v0.38.27-3-gabc123") and STABLE_VERSION as "0.38.27", with
// an "EPOCH:" prefix on non-release builds; a source install of master may
// hold "~master (DATE)", which is not a version.
func (e Env) DokkuVersion() (Version, error) {
	var tried []string
	for _, name := range []string{"STABLE_VERSION", "VERSION"} {
		path := filepath.Join(e.LibRoot, name)
		b, err := ReadFileBelow(e.LibRoot, path)
		if errors.Is(err, fs.ErrNotExist) {
			tried = append(tried, path+" missing")
			continue
		}
		if err != nil {
			return Version{}, fmt.Errorf("read %s: %w", path, err)
		}
		v, err := ParseVersion(string(b))
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		v.File = path
		return v, nil
	}
	return Version{}, fmt.Errorf("%w (%s)", ErrUnknownVersion, strings.Join(tried, "; "))
}

// ParseVersion reads "0.38.27", "v0.38.27", "v0.38.27-3-gabc", "1700000000:0.38.27".
func ParseVersion(s string) (Version, error) {
	raw := strings.TrimSpace(s)
	t := raw
	if i := strings.IndexByte(t, ':'); i > 0 && allDigits(t[:i]) {
		t = t[i+1:]
	}
	t = strings.TrimPrefix(t, "v")
	if i := strings.IndexAny(t, "-+ ~"); i >= 0 {
		t = t[:i]
	}
	parts := strings.Split(t, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return Version{}, fmt.Errorf("not a version: %s", ShowValue(raw))
	}
	var n [3]int
	for i, p := range parts {
		if !allDigits(p) {
			return Version{}, fmt.Errorf("not a version: %s", ShowValue(raw))
		}
		v, err := strconv.Atoi(p)
		if err != nil {
			return Version{}, fmt.Errorf("not a version: %s", ShowValue(raw))
		}
		n[i] = v
	}
	return Version{Major: n[0], Minor: n[1], Patch: n[2], Raw: raw}, nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

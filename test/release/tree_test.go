// Package release tests the release route: `make release` gives the same
// bytes every time, and the plugin's install trigger installs a binary
// downloaded from a release only when its checksum is the one the git tree
// pins, falling back to Go, and failing with both routes named.
//
// The install trigger tests need root (the trigger refuses anything else, and
// they run it in a private mount namespace) and serve releases only from
// loopback; the reproducibility test needs Go and GNU tar.
package release

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

// copyTree copies the repository's tracked and new (not ignored) files into
// dst, links as links and modes kept: what a git clone of this working tree
// would hold, without bin/ and dist/.
func copyTree(t *testing.T, dst string) {
	t.Helper()
	root := repoRoot(t)
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, rel := range bytes.Split(bytes.TrimRight(out, "\x00"), []byte{0}) {
		name := string(rel)
		src := filepath.Join(root, name)
		st, err := os.Lstat(src)
		if err != nil {
			continue // deleted in the working tree
		}
		to := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(l, to); err != nil {
				t.Fatal(err)
			}
		case st.Mode().IsRegular():
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, b, st.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

var versionLine = regexp.MustCompile(`(?m)^version *= *"([^"]+)"$`)

func pluginVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "plugin.toml"))
	if err != nil {
		t.Fatal(err)
	}
	m := versionLine.FindSubmatch(b)
	if m == nil {
		t.Fatal("no version in plugin.toml")
	}
	return string(m[1])
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

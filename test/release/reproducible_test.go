package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two `make release` runs of the same source, from different paths, with
// different umasks and clocks, give byte-identical tarballs and the same
// pins: what CI builds from the tag is what the commit before it pinned.
func TestReleaseReproducible(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make not found")
	}
	version := pluginVersion(t)
	var sums [2]string
	var tarballs [2]map[string][]byte
	for i, umask := range []string{"022", "002"} {
		dir := filepath.Join(t.TempDir(), strings.Repeat("x", i+1), "dokku-netshape")
		copyTree(t, dir)
		// A pin for another version must survive; this version's is replaced.
		other := strings.Repeat("ab", 32) + "  dokku-netshape-0.0.1-linux-amd64.tar.gz\n"
		stale := strings.Repeat("cd", 32) + "  dokku-netshape-" + version + "-linux-amd64.tar.gz\n"
		if err := os.WriteFile(filepath.Join(dir, "release", "SHA256SUMS"), []byte(other+stale), 0o644); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			time.Sleep(1100 * time.Millisecond) // a different clock second for every timestamp
		}
		cmd := exec.Command("sh", "-c", "umask "+umask+" && exec make release")
		cmd.Dir = dir
		cmd.Env = os.Environ()
		if i == 1 {
			// A user's GOFLAGS would be stamped into the binary: the release ignores it.
			cmd.Env = append(cmd.Env, "GOFLAGS=-tags=netshape_user_tag")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make release (umask %s): %v\n%s", umask, err, out)
		}
		pin, err := os.ReadFile(filepath.Join(dir, "release", "SHA256SUMS"))
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = string(pin)
		dist, err := os.ReadFile(filepath.Join(dir, "dist", "release", "SHA256SUMS"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(sums[i], other) || strings.Contains(sums[i], stale) || !strings.HasSuffix(sums[i], string(dist)) {
			t.Errorf("release/SHA256SUMS after make release:\n%s\nwant the other version's line kept, this version's replaced by:\n%s", sums[i], dist)
		}
		tarballs[i] = map[string][]byte{}
		for _, arch := range []string{"amd64", "arm64"} {
			name := "dokku-netshape-" + version + "-linux-" + arch + ".tar.gz"
			b, err := os.ReadFile(filepath.Join(dir, "dist", "release", name))
			if err != nil {
				t.Fatal(err)
			}
			tarballs[i][name] = b
			if !strings.Contains(string(dist), sha256Hex(b)+"  "+name+"\n") {
				t.Errorf("dist SHA256SUMS does not list %s with its checksum:\n%s", name, dist)
			}
			checkTarball(t, name, b, version, arch)
		}
	}
	if sums[0] != sums[1] {
		t.Errorf("pins differ between runs:\n%s\n---\n%s", sums[0], sums[1])
	}
	for name, b := range tarballs[0] {
		if !bytes.Equal(b, tarballs[1][name]) {
			t.Errorf("%s differs between two make release runs (%s vs %s)", name, sha256Hex(b), sha256Hex(tarballs[1][name]))
		}
	}
}

// checkTarball: one top directory, root-owned entries with the fixed mtime,
// no group/other write, the binary for arch and the .release line the
// install trigger reads.
func checkTarball(t *testing.T, name string, b []byte, version, arch string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("%s: gzip header names %q at %v, want neither", name, zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(h.Name, "dokku-netshape/") && h.Name != "dokku-netshape/" {
			t.Errorf("%s: entry %s outside dokku-netshape/", name, h.Name)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(946684800, 0)) {
			t.Errorf("%s: %s owned %d:%d mtime %v, want 0:0 at 2000-01-01", name, h.Name, h.Uid, h.Gid, h.ModTime.UTC())
		}
		if h.Typeflag != tar.TypeSymlink && h.Mode&0o022 != 0 {
			t.Errorf("%s: %s mode %o is group/other writable", name, h.Name, h.Mode)
		}
		if h.Typeflag == tar.TypeReg {
			c, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = c
		}
	}
	if got := string(files["dokku-netshape/bin/.release"]); got != version+" linux/"+arch+"\n" {
		t.Errorf("%s: bin/.release %q, want %q", name, got, version+" linux/"+arch+"\n")
	}
	bin := files["dokku-netshape/bin/dokku-netshape"]
	// ELF machine: 62 x86-64, 183 AArch64.
	wantMachine := map[string]byte{"amd64": 62, "arm64": 183}[arch]
	if len(bin) < 20 || string(bin[:4]) != "\x7fELF" || bin[18] != wantMachine {
		t.Errorf("%s: bin/dokku-netshape is not a linux/%s ELF binary", name, arch)
	}
	for _, f := range []string{"dokku-netshape/plugin.toml", "dokku-netshape/install", "dokku-netshape/commands"} {
		if _, ok := files[f]; !ok {
			t.Errorf("%s: no %s", name, f)
		}
	}
}

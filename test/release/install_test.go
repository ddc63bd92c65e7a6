package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// releaseFixture is one release of this tree for this machine's
// architecture, plus a tampered copy, served from loopback.
type releaseFixture struct {
	version, arch, name string
	good, tampered      []byte
	goodBin             []byte
	url                 string // http://127.0.0.1:PORT; /good, /tampered, /missing below it
	hangURL             string // accepts connections and never answers
	refusedURL          string // nothing listens
	requests            atomic.Int64
}

var (
	fixtureOnce sync.Once
	fixture     *releaseFixture
	fixtureErr  error
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the install trigger refuses anything else, and runs here in a private mount namespace")
	}
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Fatalf("releases exist for amd64 and arm64, not %s", runtime.GOARCH)
	}
}

func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func getFixture(t *testing.T) *releaseFixture {
	t.Helper()
	fixtureOnce.Do(func() { fixture, fixtureErr = newFixture(t) })
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixture
}

func newFixture(t *testing.T) (*releaseFixture, error) {
	f := &releaseFixture{version: pluginVersion(t), arch: runtime.GOARCH}
	f.name = "dokku-netshape-" + f.version + "-linux-" + f.arch + ".tar.gz"
	out, err := os.MkdirTemp("", "netshape-release-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	cmd := exec.Command(filepath.Join(repoRoot(t), "scripts", "plugin-tarball.sh"))
	cmd.Env = append(os.Environ(), "OUT="+out, "GO="+goBin(), "GOARCH="+f.arch)
	if o, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("plugin-tarball.sh: %v\n%s", err, o)
	}
	if f.good, err = os.ReadFile(filepath.Join(out, f.name)); err != nil {
		return nil, err
	}
	if f.tampered, f.goodBin, err = tamper(f.good); err != nil {
		return nil, err
	}

	mux := http.NewServeMux()
	serve := func(prefix string, body []byte) {
		mux.HandleFunc("/"+prefix+"/v"+f.version+"/"+f.name, func(w http.ResponseWriter, r *http.Request) {
			w.Write(body)
		})
	}
	serve("good", f.good)
	serve("tampered", f.tampered)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		mux.ServeHTTP(w, r) // anything else, /missing included: 404
	}))
	srv.Start() // on 127.0.0.1
	f.url = srv.URL

	// Accepts, reads, never answers; every connection is closed when the test binary ends.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			f.requests.Add(1)
			go io.Copy(io.Discard, c)
		}
	}()
	f.hangURL = "http://" + hang.Addr().String()

	// A port nothing listens on: bound and closed again.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.refusedURL = "http://" + l.Addr().String()
	l.Close()
	return f, nil
}

// tamper returns the tarball with its binary replaced by a script that
// leaves a mark if anything ever runs it, and the original binary.
func tamper(tgz []byte) (tampered, bin []byte, err error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			return nil, nil, err
		}
		if h.Name == "dokku-netshape/bin/dokku-netshape" {
			bin = body
			body = []byte("#!/bin/sh\ntouch \"$NETSHAPE_TEST_MARK\"\n")
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	if bin == nil {
		return nil, nil, errors.New("release tarball has no dokku-netshape/bin/dokku-netshape")
	}
	return buf.Bytes(), bin, nil
}

// host is a fake Dokku host: a plugin dir laid out like a git clone of this
// tree, release/SHA256SUMS pinning the good tarball, and private paths for
// everything the binary's own install step writes.
type host struct {
	base, lib, plugin string
	enabled           string // plugins/enabled/netshape → plugin, as plugn links it
	sudoers, rootBin  string
	mark              string
	before            []string // listing() before any install
}

func newHost(t *testing.T, f *releaseFixture) *host {
	t.Helper()
	base := t.TempDir()
	h := &host{
		base:    base,
		lib:     filepath.Join(base, "var-lib-dokku"),
		sudoers: filepath.Join(base, "sudoers.d", "dokku-netshape"),
		rootBin: filepath.Join(base, "libexec", "dokku-netshape"),
		mark:    filepath.Join(base, "tampered-binary-ran"),
	}
	h.plugin = filepath.Join(h.lib, "plugins", "available", "netshape")
	h.enabled = filepath.Join(h.lib, "plugins", "enabled", "netshape")
	copyTree(t, h.plugin)
	pin := sha256Hex(f.good) + "  " + f.name + "\n"
	if err := os.WriteFile(filepath.Join(h.plugin, "release", "SHA256SUMS"), []byte(pin), 0o644); err != nil {
		t.Fatal(err)
	}
	// What a Dokku host already has before the plugin.
	for _, d := range []string{filepath.Dir(h.sudoers), filepath.Dir(h.rootBin), filepath.Join(h.lib, "config", "resource"), filepath.Join(base, "home-dokku")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(h.enabled), 0o755); err != nil {
		t.Fatal(err)
	}
	h.before = h.listing(t)
	if err := os.Symlink(h.plugin, h.enabled); err != nil {
		t.Fatal(err)
	}
	return h
}

type runResult struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

func (r runResult) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// namespaceSetup runs in the trigger's private mount namespace before it:
// the machine's own paths become empty tmpfs (nothing the trigger or the
// binary does can reach them), /etc is an overlay on a tmpfs in scratch
// (install writes the root-owned /etc/dokku-netshape/paths, a path no
// environment variable may move), bpffs is a fresh instance, and without Go
// the toolchain directory is hidden too.
func namespaceSetup(withGo bool, scratch string) string {
	dirs := []string{"/etc/sudoers.d", "/etc/systemd/system", "/usr/local/libexec", "/var/lib/dokku"}
	if !withGo {
		dirs = append(dirs, "/usr/local/go")
	}
	var b strings.Builder
	b.WriteString("set -e\n")
	fmt.Fprintf(&b, "mount -t tmpfs -o mode=0755 netshape-test %[1]s\nmkdir %[1]s/upper %[1]s/work\n", scratch)
	fmt.Fprintf(&b, "mount -t overlay -o lowerdir=/etc,upperdir=%[1]s/upper,workdir=%[1]s/work netshape-test /etc\n", scratch)
	for _, d := range dirs {
		fmt.Fprintf(&b, "if [ -d %s ]; then mount -t tmpfs -o mode=0755 netshape-test %s; fi\n", d, d)
	}
	b.WriteString("mount -t bpf bpf /sys/fs/bpf\n")
	b.WriteString("exec \"$0\" \"$@\"\n")
	return b.String()
}

// runInstall runs the plugin's install script the way Dokku does (as root,
// no arguments, Dokku's environment) inside a private mount namespace.
func (h *host) runInstall(t *testing.T, withGo bool, extraEnv ...string) runResult {
	t.Helper()
	return h.runTrigger(t, withGo, extraEnv, filepath.Join(h.enabled, "install"))
}

// runTrigger runs one of the plugin's entry points as root the same way.
func (h *host) runTrigger(t *testing.T, withGo bool, extraEnv []string, trigger string, args ...string) runResult {
	t.Helper()
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if withGo {
		path += ":" + filepath.Dir(goBin())
	} else if p, err := exec.LookPath("go"); err == nil && !strings.HasPrefix(p, "/usr/local/go/") {
		t.Fatalf("go is at %s, which this test cannot hide", p)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", namespaceSetup(withGo, t.TempDir()), trigger}, args...)...)
	cmd.Env = append([]string{
		"PATH=" + path,
		"HOME=/root",
		"DOKKU_ROOT=" + filepath.Join(h.base, "home-dokku"),
		"DOKKU_LIB_ROOT=" + h.lib,
		"DOKKU_SYSTEM_USER=root",
		"DOKKU_SYSTEM_GROUP=root",
		"PLUGIN_PATH=" + filepath.Join(h.lib, "plugins"),
		"PLUGIN_AVAILABLE_PATH=" + filepath.Join(h.lib, "plugins", "available"),
		"PLUGIN_ENABLED_PATH=" + filepath.Join(h.lib, "plugins", "enabled"),
		"NETSHAPE_SUDOERS=" + h.sudoers,
		"NETSHAPE_UNIT=" + filepath.Join(h.base, "netshape-watch.service"),
		"NETSHAPE_SYSTEMCTL=/bin/true",
		"NETSHAPE_ROOT_BIN=" + h.rootBin,
		"NETSHAPE_PIN_DIR=/sys/fs/bpf/netshape-release-test",
		"NETSHAPE_LOCK=" + filepath.Join(h.base, "netshape.lock"),
		"NETSHAPE_DOWNLOAD_TIMEOUT=2",
		"NETSHAPE_TEST_MARK=" + h.mark,
	}, extraEnv...)
	cmd.Dir = h.plugin
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS} // Go makes / private first
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s: no end after 5 minutes\nstdout:\n%s\nstderr:\n%s", trigger, out.String(), errb.String())
	}
	r := runResult{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return r
}

// installed is the binary the plugin's bin/dokku-netshape leads to.
func (h *host) installed(t *testing.T) ([]byte, error) {
	t.Helper()
	return os.ReadFile(filepath.Join(h.plugin, "bin", "dokku-netshape"))
}

// nothingInstalled: no binary, no marker, no grant, no root copy, and the
// tampered binary never ran.
func (h *host) nothingInstalled(t *testing.T) {
	t.Helper()
	for _, p := range []string{
		filepath.Join(h.plugin, "bin", "dokku-netshape"), filepath.Join(h.plugin, "bin", "dokku-netshape.new"),
		filepath.Join(h.plugin, "bin", ".download"), h.rootBin, h.sudoers, h.mark,
	} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a failed install (%v)", p, err)
		}
	}
}

// The good release, by curl and by wget, with no Go anywhere: the binary
// installed is byte for byte the release's, and it runs its own install.
// A second run (Dokku re-runs every install trigger) needs no network.
func TestRootInstallTriggerDownloadsPinnedRelease(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	for _, dl := range []string{"curl", "wget"} {
		t.Run(dl, func(t *testing.T) {
			if _, err := exec.LookPath(dl); err != nil {
				t.Fatalf("%s not installed", dl)
			}
			h := newHost(t, f)
			before := f.requests.Load()
			r := h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+f.url+"/good", "NETSHAPE_DOWNLOADER="+dl)
			if r.code != 0 || !strings.Contains(r.stdout, "installed the release binary "+f.version+" linux/"+f.arch) {
				t.Fatalf("install from the good release:\n%s", r)
			}
			if n := f.requests.Load() - before; n != 1 {
				t.Errorf("%d requests to the release server, want 1", n)
			}
			// The binary ran its install step: the grant names the root-owned copy.
			if !strings.Contains(r.stdout, "may run apply, remove, report, top as root") {
				t.Errorf("the binary's install step did not run:\n%s", r)
			}
			got, err := h.installed(t)
			if err != nil || sha256Hex(got) != sha256Hex(f.goodBin) {
				t.Errorf("installed binary %v: sha256 %s, want the release's %s", err, sha256Hex(got), sha256Hex(f.goodBin))
			}
			if l, err := os.Readlink(filepath.Join(h.plugin, "bin", "dokku-netshape")); err != nil || l != h.rootBin {
				t.Errorf("bin/dokku-netshape links to %q (%v), want the root copy %s", l, err, h.rootBin)
			}
			if g, err := os.ReadFile(h.sudoers); err != nil || !strings.Contains(string(g), h.rootBin+" apply *") {
				t.Errorf("sudoers grant %v:\n%s", err, g)
			}

			r = h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+f.refusedURL)
			if r.code != 0 || !strings.Contains(r.stdout, "using the release binary downloaded earlier ("+f.version+" linux/"+f.arch+")") {
				t.Errorf("second install (nothing listening) did not reuse the verified binary:\n%s", r)
			}
			h.uninstallLeavesNothing(t)
		})
	}
}

// uninstallLeavesNothing: with records in config/netshape as `set` leaves
// them, `dokku plugin:uninstall netshape` (the uninstall trigger as root,
// then rm -rf of the plugin dir) leaves the host as it was before install.
func (h *host) uninstallLeavesNothing(t *testing.T) {
	t.Helper()
	record := filepath.Join(h.lib, "config", "netshape", "shop", "owned-docker-options._default_.deploy")
	if err := os.MkdirAll(filepath.Dir(record), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, []byte("--blkio-weight=300"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.runTrigger(t, false, nil, filepath.Join(h.enabled, "uninstall"), "netshape")
	if r.code != 0 {
		t.Fatalf("uninstall trigger:\n%s", r)
	}
	// plugn: disable (the link), then rm -rf the plugin dir.
	if err := os.Remove(h.enabled); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(h.plugin); err != nil {
		t.Fatal(err)
	}
	if got, want := h.listing(t), h.before; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after uninstall the host holds:\n%s\nbefore install it held:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// listing is every path under the host's base, outside the plugin dir.
func (h *host) listing(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(h.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == h.plugin {
			return filepath.SkipDir
		}
		out = append(out, strings.TrimPrefix(p, h.base))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// An offline mirror: the same layout under a file:// URL.
func TestRootInstallTriggerOfflineMirror(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	h := newHost(t, f)
	mirror := filepath.Join(h.base, "mirror")
	if err := os.MkdirAll(filepath.Join(mirror, "v"+f.version), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mirror, "v"+f.version, f.name), f.good, 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.runInstall(t, false, "NETSHAPE_RELEASE_URL=file://"+mirror)
	got, err := h.installed(t)
	if r.code != 0 || err != nil || sha256Hex(got) != sha256Hex(f.goodBin) {
		t.Errorf("install from file:// mirror (%v):\n%s", err, r)
	}
}

// Every way the download can fail, with no Go: refused with the reason,
// nothing installed, and an error naming both routes. Stalls are bounded
// by NETSHAPE_DOWNLOAD_TIMEOUT (2 s here, 3 attempts).
func TestRootInstallTriggerFailsClosedWithoutGo(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	cases := []struct {
		name, url, why string
	}{
		{"wrong checksum", f.url + "/tampered", "REFUSED"},
		{"404", f.url + "/missing", "404"},
		{"connection refused", f.refusedURL, "download of " + f.refusedURL + "/v"},
		{"server never answers", f.hangURL, "download of " + f.hangURL + "/v"},
	}
	for _, dl := range []string{"curl", "wget"} {
		for _, c := range cases {
			t.Run(dl+"/"+c.name, func(t *testing.T) {
				h := newHost(t, f)
				r := h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+c.url, "NETSHAPE_DOWNLOADER="+dl)
				t.Logf("%s", r)
				if r.code == 0 || !strings.Contains(r.stderr, c.why) {
					t.Errorf("want a failure saying %q:\n%s", c.why, r)
				}
				if !strings.Contains(r.stderr, "install Go") || !strings.Contains(r.stderr, "release tarball") ||
					!strings.Contains(r.stderr, "dokku plugin:install file://") {
					t.Errorf("the error does not name both routes:\n%s", r)
				}
				if r.took > 60*time.Second {
					t.Errorf("took %v: the download is not bounded by its timeout", r.took)
				}
				h.nothingInstalled(t)
			})
		}
	}
}

// A wrong checksum with Go available: refused loudly, then built from
// source; the tampered binary is never installed nor run.
func TestRootInstallTriggerFallsBackToGo(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	h := newHost(t, f)
	r := h.runInstall(t, true, "NETSHAPE_RELEASE_URL="+f.url+"/tampered")
	t.Logf("%s", r)
	if r.code != 0 || !strings.Contains(r.stderr, "REFUSED "+f.url+"/tampered/v"+f.version+"/"+f.name) ||
		!strings.Contains(r.stderr, "building from source instead") || !strings.Contains(r.stdout, "building bin/dokku-netshape with go version") {
		t.Fatalf("install with a tampered release and Go:\n%s", r)
	}
	got, err := h.installed(t)
	if err != nil || !bytes.HasPrefix(got, []byte("\x7fELF")) || bytes.Contains(got, []byte("NETSHAPE_TEST_MARK")) {
		t.Errorf("installed binary (%v) is not the one built from source", err)
	}
	for _, p := range []string{h.mark, filepath.Join(h.plugin, "bin", ".download")} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (%v)", p, err)
		}
	}
	if !strings.Contains(r.stdout, "may run apply, remove, report, top as root") {
		t.Errorf("the built binary's install step did not run:\n%s", r)
	}
}

// No pin for this version (not released yet): no request at all, straight
// to Go. A bad override is one clear error before anything happens.
func TestRootInstallTriggerUnpinnedAndBadOverride(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	h := newHost(t, f)
	if err := os.WriteFile(filepath.Join(h.plugin, "release", "SHA256SUMS"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before := f.requests.Load()
	r := h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+f.url+"/good")
	if r.code == 0 || !strings.Contains(r.stderr, "pins no "+f.name) || f.requests.Load() != before {
		t.Errorf("unpinned version: %d requests, want none and a failure naming the missing pin:\n%s", f.requests.Load()-before, r)
	}
	h.nothingInstalled(t)

	h = newHost(t, f)
	for _, bad := range []string{"ftp://127.0.0.1/x", "127.0.0.1:80", "file:relative"} {
		r = h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+bad)
		if r.code == 0 || !strings.Contains(r.stderr, "NETSHAPE_RELEASE_URL="+bad+": use an https://") {
			t.Errorf("NETSHAPE_RELEASE_URL=%s:\n%s", bad, r)
		}
		h.nothingInstalled(t)
	}
}

// Over HTTPS (the default scheme), a redirect to plain http is refused:
// the download never leaves TLS. The test CA reaches curl through
// CURL_CA_BUNDLE.
func TestRootInstallTriggerHTTPSNoDowngrade(t *testing.T) {
	requireRoot(t)
	f := getFixture(t)
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/tls/v"+f.version+"/"+f.name):
			w.Write(f.good)
		case strings.HasPrefix(r.URL.Path, "/downgrade/"):
			http.Redirect(w, r, f.url+"/good/v"+f.version+"/"+f.name, http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer tls.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tls.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}

	h := newHost(t, f)
	before := f.requests.Load()
	r := h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+tls.URL+"/downgrade", "NETSHAPE_DOWNLOADER=curl", "CURL_CA_BUNDLE="+ca)
	if r.code == 0 || f.requests.Load() != before {
		t.Errorf("https → http redirect followed (%d plain requests):\n%s", f.requests.Load()-before, r)
	}
	h.nothingInstalled(t)

	h = newHost(t, f)
	r = h.runInstall(t, false, "NETSHAPE_RELEASE_URL="+tls.URL+"/tls", "NETSHAPE_DOWNLOADER=curl", "CURL_CA_BUNDLE="+ca)
	got, err := h.installed(t)
	if r.code != 0 || err != nil || sha256Hex(got) != sha256Hex(f.goodBin) {
		t.Errorf("install over https (%v):\n%s", err, r)
	}
}

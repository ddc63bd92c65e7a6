package vm

// The scripts that install the suite's packages and fetch the guest kernels (.ci/apt.sh,
// .ci/vm-deps.sh, test/vm/fetch-kernels.sh) run here against a fake apt: apt-get, apt-cache,
// dpkg-query, dpkg and depmod first on PATH, answering from a fake "archive" whose lists start
// stale and become fresh when `apt-get update` runs. The machine's own apt is never called.

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// fakeApt is a directory of fake tools plus the state they share.
type fakeApt struct {
	bin, state string
}

// The fake archive: "stale" lists know the packages in $STATE/stale, fresh ones (after update)
// those in $STATE/fresh; `download`/`install` of a known package succeeds unless it is listed in
// $STATE/gone (removed from the mirror: a 404). Every call is appended to $STATE/calls.
const fakeAptGet = `#!/bin/sh
echo "apt-get $*" >>"$STATE/calls"
lists=$STATE/stale; [ -f "$STATE/updated" ] && lists=$STATE/fresh
case $1 in
update) touch "$STATE/updated"; echo "Reading package lists..."; exit 0 ;;
download)
	p=$3
	echo "Reading package lists..."
	grep -qx "$p" "$lists" 2>/dev/null || { echo "E: Unable to locate package $p" >&2; exit 100; }
	grep -qx "$p" "$STATE/gone" 2>/dev/null && { echo "E: Failed to fetch http://deb.debian.org/$p.deb  404  Not Found" >&2; exit 100; }
	echo fake >"${p}_1_amd64.deb"; exit 0 ;;
install)
	shift
	for p in "$@"; do
		case $p in -*) continue ;; esac
		grep -qx "$p" "$lists" 2>/dev/null || { echo "E: Unable to locate package $p" >&2; exit 100; }
	done
	for p in "$@"; do case $p in -*) ;; *) echo "$p" >>"$STATE/installed"; echo "Setting up $p ..." ;; esac; done
	exit 0 ;;
esac
exit 1
`

const fakeAptCache = `#!/bin/sh
echo "apt-cache $*" >>"$STATE/calls"
lists=$STATE/stale; [ -f "$STATE/updated" ] && lists=$STATE/fresh
case $1 in
policy)
	if [ -f "$STATE/policy-lies" ]; then printf '%s:\n  Installed: (none)\n  Candidate: 1.0\n' "$2"; exit 0; fi
	grep -qx "$2" "$lists" 2>/dev/null || { [ -f "$STATE/policy-none" ] && printf '%s:\n  Installed: (none)\n  Candidate: (none)\n' "$2"; exit 0; }
	printf '%s:\n  Installed: (none)\n  Candidate: 1.0\n  Version table:\n' "$2" ;;
depends)
	p=$(grep -E '^linux-image-6\.1\.' "$lists" 2>/dev/null | head -n1)
	[ -n "$p" ] && printf 'linux-image-amd64\n  Depends: %s\n' "$p" ;;
pkgnames) grep -E "^$2" "$lists" 2>/dev/null ;;
esac
exit 0
`

// dpkg-query says nothing is installed; dpkg -x unpacks a fake kernel named by the .deb; depmod
// writes modules.dep.
const fakeDpkgQuery = "#!/bin/sh\nexit 1\n"

const fakeDpkg = `#!/bin/sh
[ "$1" = -x ] || exit 1
pkg=$(basename "$2"); pkg=${pkg%%_*}
rel=${pkg#linux-image-}; rel=${rel%-unsigned}
mkdir -p "$3/boot" "$3/lib/modules/$rel/kernel/net/sched"
echo vmlinuz >"$3/boot/vmlinuz-$rel"
echo "CONFIG_NET_SCH_FQ=m" >"$3/boot/config-$rel"
echo ko >"$3/lib/modules/$rel/kernel/net/sched/sch_fq.ko"
`

const fakeDepmod = `#!/bin/sh
echo "depmod $*" >>"$STATE/calls"
: >"$2/lib/modules/$3/modules.dep"
`

func newFakeApt(t *testing.T, stale, fresh []string) *fakeApt {
	t.Helper()
	dir := t.TempDir()
	f := &fakeApt{bin: filepath.Join(dir, "bin"), state: filepath.Join(dir, "state")}
	for _, d := range []string{f.bin, f.state} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range map[string]string{"apt-get": fakeAptGet, "apt-cache": fakeAptCache,
		"dpkg-query": fakeDpkgQuery, "dpkg": fakeDpkg, "depmod": fakeDepmod} {
		if err := os.WriteFile(filepath.Join(f.bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.write(t, "stale", strings.Join(stale, "\n")+"\n")
	f.write(t, "fresh", strings.Join(fresh, "\n")+"\n")
	return f
}

func (f *fakeApt) write(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.state, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs a command from the repository root with the fakes first on PATH.
func (f *fakeApt) run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "PATH="+f.bin+":"+os.Getenv("PATH"), "STATE="+f.state,
		"NETSHAPE_APT_REFRESHED=", "NETSHAPE_VM_REFRESH=", "NETSHAPE_VM_PKG_61=", "NETSHAPE_VM_PKG_612=")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// calls are the fake apt commands run, in order, filtered to those starting with prefix.
func (f *fakeApt) calls(t *testing.T, prefix string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(f.state, "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if l != "" && strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func (f *fakeApt) updates(t *testing.T) int {
	return len(f.calls(t, "apt-get update"))
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func TestAptInstallRefreshesStaleLists(t *testing.T) {
	for _, tc := range []struct {
		name         string
		stale, fresh []string
		setup        func(*testing.T, *fakeApt)
		pkgs         []string
		ok           bool
		updates      int
		installs     int
	}{
		// Current lists: no update, one install.
		{name: "fresh lists", stale: []string{"qemu-system-x86", "cpio"}, fresh: []string{"qemu-system-x86", "cpio"},
			pkgs: []string{"qemu-system-x86", "cpio"}, ok: true, updates: 0, installs: 1},
		// A package the lists do not know (no policy at all): update first, then install.
		{name: "unknown package", stale: []string{"cpio"}, fresh: []string{"cpio", "qemu-system-x86"},
			pkgs: []string{"cpio", "qemu-system-x86"}, ok: true, updates: 1, installs: 1},
		// apt-cache policy shows "Candidate: (none)".
		{name: "candidate none", stale: []string{}, fresh: []string{"docker.io"},
			setup: func(t *testing.T, f *fakeApt) { f.write(t, "policy-none", "") },
			pkgs:  []string{"docker.io"}, ok: true, updates: 1, installs: 1},
		// The policy claims a candidate, but install says "Unable to locate": update, retry once.
		{name: "install fails on stale lists", stale: []string{}, fresh: []string{"sudo"},
			setup: func(t *testing.T, f *fakeApt) { f.write(t, "policy-lies", "") },
			pkgs:  []string{"sudo"}, ok: true, updates: 1, installs: 2},
		// Not in the archive at all: one update, one retry, then a failure (no loop).
		{name: "package nowhere", stale: []string{}, fresh: []string{},
			setup: func(t *testing.T, f *fakeApt) { f.write(t, "policy-lies", "") },
			pkgs:  []string{"nosuchpkg"}, ok: false, updates: 1, installs: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeApt(t, tc.stale, tc.fresh)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			out, err := f.run(t, nil, ".ci/apt.sh", append([]string{"install"}, tc.pkgs...)...)
			if (err == nil) != tc.ok {
				t.Fatalf("apt.sh install %v: err %v, want ok=%v\n%s", tc.pkgs, err, tc.ok, out)
			}
			if n := f.updates(t); n != tc.updates {
				t.Errorf("apt-get update ran %d times, want %d\n%s", n, tc.updates, out)
			}
			if n := len(f.calls(t, "apt-get install")); n != tc.installs {
				t.Errorf("apt-get install ran %d times, want %d\n%s", n, tc.installs, out)
			}
			if tc.ok {
				raw, _ := os.ReadFile(filepath.Join(f.state, "installed"))
				for _, p := range tc.pkgs {
					if !slices.Contains(strings.Fields(string(raw)), p) {
						t.Errorf("%s not installed: %q", p, raw)
					}
				}
			}
		})
	}
}

// The failure seen on a fresh CI machine: `make demo` → vm-deps.sh → fetch-kernels.sh with stale
// lists that name no 6.12 kernel. vm-deps.sh installs its packages and the kernels are fetched,
// with exactly one apt-get update between them.
func TestDepsScriptsRefreshStaleListsOnce(t *testing.T) {
	const (
		k61     = "linux-image-6.1.0-56-amd64"
		k612    = "linux-image-6.12.117+deb12-amd64-unsigned"
		k612old = "linux-image-6.12.100+deb12-amd64-unsigned"
	)
	pkgs := []string{"qemu-system-x86", "cpio", "kmod", "busybox-static", "xz-utils", "iproute2", "iperf3"}
	t.Run("no kernel in the lists", func(t *testing.T) {
		f := newFakeApt(t, append(slices.Clone(pkgs), k61), append(slices.Clone(pkgs), k61, k612))
		cache := t.TempDir()
		out, err := f.run(t, []string{"NETSHAPE_VM_CACHE=" + cache}, ".ci/vm-deps.sh")
		if err != nil {
			t.Fatalf("vm-deps.sh: %v\n%s", err, out)
		}
		if n := f.updates(t); n != 1 {
			t.Errorf("apt-get update ran %d times, want 1\n%s", n, out)
		}
		checkKernel(t, cache, "6.1", "6.1.0-56-amd64")
		checkKernel(t, cache, "6.12", "6.12.117+deb12-amd64")
	})
	t.Run("listed kernel gone from the mirror", func(t *testing.T) {
		// The stale lists name 6.12.100, which the mirror no longer has (404); fresh ones name 6.12.117.
		f := newFakeApt(t, []string{k61, k612old}, []string{k61, k612})
		f.write(t, "gone", k612old+"\n")
		cache := t.TempDir()
		out, err := f.run(t, []string{"NETSHAPE_VM_CACHE=" + cache}, "test/vm/fetch-kernels.sh")
		if err != nil {
			t.Fatalf("fetch-kernels.sh: %v\n%s", err, out)
		}
		if n := f.updates(t); n != 1 {
			t.Errorf("apt-get update ran %d times, want 1\n%s", n, out)
		}
		checkKernel(t, cache, "6.12", "6.12.117+deb12-amd64")
		if n := len(f.calls(t, "apt-get download")); n != 3 {
			t.Errorf("apt-get download ran %d times, want 3 (6.1, 6.12.100, 6.12.117)\n%s", n, out)
		}
	})
	t.Run("no kernel anywhere", func(t *testing.T) {
		f := newFakeApt(t, []string{k61}, []string{k61})
		cache := t.TempDir()
		out, err := f.run(t, []string{"NETSHAPE_VM_CACHE=" + cache}, "test/vm/fetch-kernels.sh")
		if err == nil || !strings.Contains(out, "6.12: no package found in apt, even after apt-get update") {
			t.Fatalf("fetch-kernels.sh without a 6.12 kernel: err %v\n%s", err, out)
		}
		if n := f.updates(t); n != 1 {
			t.Errorf("apt-get update ran %d times, want 1\n%s", n, out)
		}
	})
}

func checkKernel(t *testing.T, cache, alias, rel string) {
	t.Helper()
	link, err := os.Readlink(filepath.Join(cache, "kernels", alias))
	if err != nil || link != rel {
		t.Fatalf("kernels/%s -> %q (%v), want %s", alias, link, err, rel)
	}
	for _, p := range []string{".complete", "vmlinuz", "config", "lib/modules/" + rel + "/modules.dep"} {
		if _, err := os.Stat(filepath.Join(cache, "kernels", rel, p)); err != nil {
			t.Errorf("kernel %s: %v", rel, err)
		}
	}
}

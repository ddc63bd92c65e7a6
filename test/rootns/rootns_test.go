package rootns

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// Inside: the private paths are empty and writable, a user can be added,
// and sudo reads the private /etc/sudoers.d. Outside (checked by Enter in
// the parent): none of it reached the machine.
func TestRootNamespaceIsPrivate(t *testing.T) {
	if !Enter(t) {
		return
	}
	MustBeInside(t)
	for _, dir := range Private {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if dir == "/run" && (e.Name() == "docker.sock" || e.Name() == "lock") {
				continue
			}
			t.Errorf("%s not empty: %s", dir, e.Name())
		}
	}
	uid, gid := AddUser(t, "nsprobe")
	if err := os.WriteFile("/etc/sudoers.d/nsprobe", []byte("nsprobe ALL=(root) NOPASSWD: /bin/true\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/etc/dokku-netshape", 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sudo", "-n", "/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Skip("sudo not installed (.ci/plugin-deps.sh)")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sudo -n /bin/true as nsprobe through the private grant: %v: %s", err, out)
	}
	cmd = exec.Command("sudo", "-n", "/bin/false")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "password is required") {
		t.Errorf("sudo -n /bin/false as nsprobe: %v %s, want a refusal", err, out)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != 0xcafe4a11 {
		t.Errorf("/sys/fs/bpf: %v type %#x, want a bpffs", err, st.Type)
	}
}

// The parent's before/after check sees a file added, changed or removed.
func TestSnapshotSeesChanges(t *testing.T) {
	dir := t.TempDir()
	old := Watched
	Watched = []string{dir}
	defer func() { Watched = old }()
	before := snapshot(t)
	p := dir + "/dokku-netshape"
	if err := os.WriteFile(p, []byte("a"), 0o440); err != nil {
		t.Fatal(err)
	}
	added := snapshot(t)
	if d := diff(before, added); len(d) != 1 || !strings.HasPrefix(d[0], "added ") {
		t.Errorf("after adding a file: %q", d)
	}
	if err := os.WriteFile(p, []byte("b"), 0o440); err != nil {
		t.Fatal(err)
	}
	if d := diff(added, snapshot(t)); len(d) != 1 || !strings.HasPrefix(d[0], "changed ") {
		t.Errorf("after changing it: %q", d)
	}
	os.Remove(p)
	if d := diff(before, snapshot(t)); len(d) != 0 {
		t.Errorf("after removing it again: %q", d)
	}
}

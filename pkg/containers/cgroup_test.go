package containers

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FromStart reads the first process of the container's cgroup under each of
// Docker's layouts, takes the labels from the event, and refuses what is not
// a full id (an event field is never a path).
func TestFromStartFindsTheCgroupUnderEachLayout(t *testing.T) {
	id := strings.Repeat("ab", 32)
	ev := Event{App: "shop", ID: id, Name: "shop.web.1", Action: ActionStart, ContainerType: TypeDeploy, ProcessType: "web"}
	for _, dir := range []string{"system.slice/docker-" + id + ".scope", "docker/" + id, "pids/system.slice/docker-" + id + ".scope", "pids/docker/" + id} {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "cgroup.procs"), []byte("4242\n4250\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := FromStart(root, ev)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		want := Container{ID: id, Name: "shop.web.1", App: "shop", Type: TypeDeploy, ProcessType: "web", Running: true, Pid: 4242}
		if c.ID != want.ID || c.Name != want.Name || c.App != want.App || c.Type != want.Type || c.ProcessType != want.ProcessType || !c.Running || c.Pid != want.Pid {
			t.Fatalf("%s: %+v, want %+v", dir, c, want)
		}
		if got := c.NetnsPath(); got != "/proc/4242/ns/net" {
			t.Fatalf("%s: netns path %q", dir, got)
		}
	}

	root := t.TempDir()
	empty := filepath.Join(root, "docker", id)
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(empty, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := FromStart(root, ev); !errors.Is(err, ErrNoCgroup) {
		t.Fatalf("empty cgroup: %v, want ErrNoCgroup", err)
	}
	if _, err := FromStart(t.TempDir(), ev); !errors.Is(err, ErrNoCgroup) {
		t.Fatalf("no cgroup: %v, want ErrNoCgroup", err)
	}
	for _, bad := range []string{"", "abc", "../../../etc", strings.Repeat("AB", 32), id + "/x"} {
		e := ev
		e.ID = bad
		if _, err := FromStart(root, e); err == nil || errors.Is(err, ErrNoCgroup) {
			t.Fatalf("id %q: %v, want a refusal", bad, err)
		}
	}
}

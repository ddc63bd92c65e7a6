package containers

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
)

// CgroupRoot is where the cgroup hierarchy is mounted.
const CgroupRoot = "/sys/fs/cgroup"

// ErrNoCgroup: no cgroup of the container where Docker puts them by default
// (a --cgroup-parent, another runtime layout, or no process in it yet).
var ErrNoCgroup = errors.New("no cgroup with a process of the container in Docker's default places")

var fullID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// cgroupDirs are the container's cgroup under Docker's two drivers, for
// cgroup v2 and (pids controller) v1, relative to the cgroup root.
func cgroupDirs(id string) []string {
	return []string{
		"system.slice/docker-" + id + ".scope", // v2, systemd driver (Debian, Ubuntu)
		"docker/" + id,                         // v2, cgroupfs driver
		"pids/system.slice/docker-" + id + ".scope",
		"pids/docker/" + id,
	}
}

// FromStart is the container a start event names, found without asking
// dockerd: its labels come with the event, and its first process from the
// cgroup Docker made for it. dockerd answers an inspect only after it has
// finished the whole start (tens of ms under load), while the cgroup lists
// the process the moment it runs. What the event does not carry (network
// mode, capabilities, resources) stays unknown: a caller must treat the
// result as provisional and check it against an inspect soon after.
func FromStart(root string, ev Event) (Container, error) {
	if !fullID.MatchString(ev.ID) {
		return Container{}, fmt.Errorf("container id %q: not a full Docker id", ev.ID)
	}
	for _, dir := range cgroupDirs(ev.ID) {
		b, err := os.ReadFile(filepath.Join(root, dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		line, _, _ := bytes.Cut(b, []byte("\n"))
		pid, err := strconv.Atoi(string(bytes.TrimSpace(line)))
		if err != nil || pid <= 0 {
			continue
		}
		return Container{
			ID: ev.ID, Name: ev.Name, App: ev.App, Type: ev.ContainerType, ProcessType: ev.ProcessType,
			Running: true, Pid: pid,
		}, nil
	}
	return Container{}, fmt.Errorf("container %.12s: %w", ev.ID, ErrNoCgroup)
}

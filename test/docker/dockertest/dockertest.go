// Package dockertest gives tests a Docker daemon, netshape's test image and containers labelled
// the way Dokku labels them, and removes what it created when the test ends.
//
// The daemon is the host's (start one with .ci/docker-up.sh). Without one, tests skip, or fail
// when CI=true.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
)

// Image is the test image: test/docker/app as /app, CMD ["/app"].
const Image = "netshape-test-app:latest"

// TestLabel is put on everything this package creates, so leftovers of a killed test run can
// be found: docker ps -a --filter label=netshape.test
const TestLabel = "netshape.test"

// Need returns a client for the host's Docker daemon. No daemon: t fails under CI=true and is
// skipped otherwise.
func Need(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Ping(ctx)
		cancel()
		if err != nil {
			cli.Close()
		}
	}
	if err != nil {
		msg := fmt.Sprintf("no Docker daemon (start one with .ci/docker-up.sh): %v", err)
		if os.Getenv("NETSHAPE_VM") == "1" {
			// Inside a make vm-test guest the host's socket is hidden on purpose: these tests
			// run against the host's dockerd in the same CI run; test/e2e covers dockerd in guests.
			t.Skip("Docker tests run on the host, not in VM guests: " + msg)
		}
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

var imageOnce struct {
	sync.Mutex
	done bool
}

// imageHashLabel records which build of the app an image holds, so unchanged sources reuse it
// instead of leaving a dangling image per test run.
const imageHashLabel = "netshape.app-sha256"

// EnsureImage builds test/docker/app (static, CGO off, -trimpath so the build is reproducible)
// and imports it as Image unless the existing Image already holds that exact binary. The old
// image, if replaced, is removed when no container uses it.
func EnsureImage(t testing.TB, cli *client.Client) string {
	t.Helper()
	imageOnce.Lock()
	defer imageOnce.Unlock()
	ctx := context.Background()
	if imageOnce.done {
		if _, err := cli.ImageInspect(ctx, Image); err == nil {
			return Image
		}
	}
	_, self, _, _ := runtime.Caller(0)
	appDir := filepath.Join(filepath.Dir(self), "..", "app")
	bin := filepath.Join(t.TempDir(), "app")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", bin, ".")
	cmd.Dir = appDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test app: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])

	old, err := cli.ImageInspect(ctx, Image)
	if err == nil && old.Config != nil && old.Config.Labels[imageHashLabel] == hash {
		imageOnce.done = true
		return Image
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, Image,
		image.ImportOptions{Changes: []string{`CMD ["/app"]`, "LABEL " + imageHashLabel + "=" + hash + " " + TestLabel + "=1"}})
	if err != nil {
		t.Fatalf("import %s: %v", Image, err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		t.Fatalf("import %s: %v", Image, err)
	}
	if old.ID != "" {
		// Best effort: fails harmlessly while a container (maybe another package's test) uses it.
		_, _ = cli.ImageRemove(ctx, old.ID, image.RemoveOptions{})
	}
	imageOnce.done = true
	return Image
}

// AppName is a fresh Dokku-style app name for one test ("nst" + random digits).
func AppName() string {
	return "nst" + strconv.Itoa(100000+rand.IntN(900000))
}

// DokkuLabels are the labels Dokku puts on a container of app: process type proc, dyno
// number n, container type typ (deploy, run, cron).
func DokkuLabels(app, proc string, n int, typ string) map[string]string {
	l := map[string]string{
		"com.dokku.app-name":       app,
		"com.dokku.container-type": typ,
		"dokku":                    "",
		"org.label-schema.vendor":  "dokku",
		TestLabel:                  "1",
	}
	if typ == "deploy" {
		l["com.dokku.process-type"] = proc
		l["com.dokku.dyno"] = proc + "." + strconv.Itoa(n)
		l["com.dokku.image-stage"] = "release"
	}
	return l
}

// Spec describes a test container.
type Spec struct {
	Name   string            // container name; Dokku's is APP.PROC.N
	Labels map[string]string // see DokkuLabels; TestLabel is added
	Cmd    []string          // default: the image's /app
	// Host is applied to the host config (network mode, caps, limits, ...).
	Host func(*container.HostConfig)
	// NoStart creates the container without starting it.
	NoStart bool
}

// Run creates (and starts) a container from the test image and removes it, with force, when
// the test ends. It returns the container ID.
func Run(t testing.TB, cli *client.Client, s Spec) string {
	t.Helper()
	EnsureImage(t, cli)
	ctx := context.Background()
	labels := map[string]string{TestLabel: "1"}
	for k, v := range s.Labels {
		labels[k] = v
	}
	hc := &container.HostConfig{}
	if s.Host != nil {
		s.Host(hc)
	}
	resp, err := cli.ContainerCreate(ctx, &container.Config{Image: Image, Cmd: s.Cmd, Labels: labels}, hc, nil, nil, s.Name)
	if err != nil {
		t.Fatalf("create container %s: %v", s.Name, err)
	}
	t.Cleanup(func() { Remove(t, cli, resp.ID) })
	if !s.NoStart {
		if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			t.Fatalf("start container %s: %v", s.Name, err)
		}
	}
	return resp.ID
}

// Remove removes a container with force; a container that is already gone is fine.
func Remove(t testing.TB, cli *client.Client, id string) {
	t.Helper()
	err := cli.ContainerRemove(context.Background(), id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("remove container %s: %v", id, err)
	}
}

// Network creates a bridge network with a fresh name (its subnet comes from the daemon's
// address pool) and removes it when the test ends. Register it before the containers that
// use it, so cleanup (last in, first out) removes them first.
func Network(t testing.TB, cli *client.Client) (id, name string) {
	t.Helper()
	name = "nstnet" + strconv.Itoa(100000+rand.IntN(900000))
	resp, err := cli.NetworkCreate(context.Background(), name, network.CreateOptions{
		Driver: "bridge",
		Labels: map[string]string{TestLabel: "1"},
	})
	if err != nil {
		t.Fatalf("create network %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cli.NetworkRemove(context.Background(), resp.ID); err != nil && !cerrdefs.IsNotFound(err) {
			t.Errorf("remove network %s: %v", name, err)
		}
	})
	return resp.ID, name
}

// Connect attaches a container to a network.
func Connect(t testing.TB, cli *client.Client, networkID, containerID string) {
	t.Helper()
	if err := cli.NetworkConnect(context.Background(), networkID, containerID, nil); err != nil {
		t.Fatalf("connect %s to %s: %v", containerID, networkID, err)
	}
}

// Leftovers lists containers carrying TestLabel (a test that was killed before cleanup).
func Leftovers(cli *client.Client) ([]string, error) {
	cs, err := cli.ContainerList(context.Background(), container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("label", TestLabel)),
	})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids, nil
}

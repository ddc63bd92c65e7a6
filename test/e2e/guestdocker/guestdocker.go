// Package guestdocker runs a private Debian dockerd inside a test VM guest (test/vm) and
// turns a static binary into an image with `docker import`. The e2e tests and `make demo`
// use it; both run only inside a guest, where /var/lib/docker and /run are tmpfs.
//
// The daemon gets its own socket, exec-root and pidfile under a state directory, its own
// bridge address inside 10.0.0.0/8, and leaves iptables, IP forwarding and masquerading alone:
// nothing it starts can reach past the guest, which has no NIC anyway.
package guestdocker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// Options configure Start.
type Options struct {
	// StateDir holds the socket, pidfile, exec-root and log (created; default /run/netshape-dockerd).
	StateDir string
	// DataRoot is dockerd's --data-root (default /var/lib/docker, a tmpfs in the guest:
	// overlay2 cannot sit on the guest's overlayfs root).
	DataRoot string
	// Bip is docker0's address, CIDR (default 10.241.0.1/24).
	Bip string
	// Wait bounds the wait for the daemon to answer (default 60s).
	Wait time.Duration
}

// Daemon is a running dockerd.
type Daemon struct {
	Host   string // DOCKER_HOST value, unix://...
	Bip    string
	LogDir string
	cmd    *exec.Cmd
	done   chan error
	log    *os.File
}

// Start launches dockerd and waits until it answers a ping.
func Start(ctx context.Context, o Options) (*Daemon, error) {
	if o.StateDir == "" {
		o.StateDir = "/run/netshape-dockerd"
	}
	if o.DataRoot == "" {
		o.DataRoot = "/var/lib/docker"
	}
	if o.Bip == "" {
		o.Bip = "10.241.0.1/24"
	}
	if o.Wait == 0 {
		o.Wait = 60 * time.Second
	}
	path, err := exec.LookPath("dockerd")
	if err != nil {
		return nil, fmt.Errorf("find dockerd (apt-get install docker.io): %w", err)
	}
	for _, d := range []string{o.StateDir, o.DataRoot} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	sock := filepath.Join(o.StateDir, "docker.sock")
	logPath := filepath.Join(o.StateDir, "dockerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create dockerd log: %w", err)
	}
	cmd := exec.Command(path,
		"--host", "unix://"+sock,
		"--data-root", o.DataRoot,
		"--exec-root", filepath.Join(o.StateDir, "exec"),
		"--pidfile", filepath.Join(o.StateDir, "dockerd.pid"),
		"--bip", o.Bip,
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a signal meant for the test does not reach the daemon first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start dockerd: %w", err)
	}
	d := &Daemon{Host: "unix://" + sock, Bip: o.Bip, LogDir: o.StateDir, cmd: cmd, done: make(chan error, 1), log: logf}
	go func() { d.done <- cmd.Wait() }()

	deadline := time.Now().Add(o.Wait)
	for {
		cli, err := d.Client()
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = cli.Ping(pctx)
			cancel()
			cli.Close()
			if err == nil {
				return d, nil
			}
		}
		select {
		case werr := <-d.done:
			d.done <- werr
			return nil, fmt.Errorf("dockerd exited while starting (%v); log:\n%s", werr, d.LogTail(20))
		case <-ctx.Done():
			d.Stop()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, fmt.Errorf("dockerd did not answer on %s within %s: %v; log:\n%s", sock, o.Wait, err, d.LogTail(20))
		}
	}
}

// Gateway is docker0's address (Bip without the prefix length).
func (d *Daemon) Gateway() string {
	ip, _, _ := strings.Cut(d.Bip, "/")
	return ip
}

// Client is a new API client for this daemon; close it when done.
func (d *Daemon) Client() (*client.Client, error) {
	return client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
}

// Env is os.Environ() with DOCKER_HOST pointing at this daemon, for the docker CLI and
// dokku-netshape.
func (d *Daemon) Env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_HOST=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "DOCKER_HOST="+d.Host), extra...)
}

// Docker runs the docker CLI against this daemon and returns its trimmed stdout.
func (d *Daemon) Docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = d.Env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// LogTail is the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(d.LogDir, "dockerd.log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop terminates dockerd (SIGTERM, then SIGKILL after 20s) and waits for it. It stops the
// containerd it started, too. Safe to call twice.
func (d *Daemon) Stop() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	defer d.log.Close()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-d.done:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		err = <-d.done
	}
	d.done <- err // a second Stop returns at once
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
		return fmt.Errorf("dockerd killed: %w", err)
	}
	return nil
}

// ImportBinary makes image ref from one static binary, stored as /NAME (NAME = the file's
// base name), with the given CMD as a JSON array string, e.g. `["/loadgen","serve"]`.
func ImportBinary(ctx context.Context, cli *client.Client, binPath, ref, cmdJSON string) error {
	data, err := os.ReadFile(binPath)
	if err != nil {
		return fmt.Errorf("read image binary: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: filepath.Base(binPath), Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", binPath, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("tar %s: %w", binPath, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("tar %s: %w", binPath, err)
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, ref,
		image.ImportOptions{Changes: []string{"CMD " + cmdJSON}})
	if err != nil {
		return fmt.Errorf("import %s: %w", ref, err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("import %s: %w", ref, err)
	}
	return nil
}

// Command demo is the guest half of `make demo` (see demo/run.sh, which boots the VM): inside a
// throw-away test VM it starts dockerd, runs one container of a Dokku app "demoapp" the way
// Dokku would, limits the app with dokku-netshape and prints, once a second, the limit and
// the rate its traffic actually gets, while the limit is changed live and then cleared.
//
// Every line meant for the viewer starts with "DEMO " so the host can pick them out of the
// guest's console. It refuses to run outside the test VM: it starts its own dockerd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

const (
	app   = "demoapp"
	image = "netshape-demo-app:latest"
	bip   = "10.242.0.1/24"
	// pinDir: the demo's own shaper state, apart from anything else in the guest.
	pinDir = "/sys/fs/bpf/netshape-demo"
)

func say(format string, args ...any) {
	for _, l := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		fmt.Println("DEMO " + l)
	}
}

func main() {
	netshape := flag.String("netshape", "", "dokku-netshape binary")
	loadgen := flag.String("loadgen", "", "static loadgen binary (becomes the app image)")
	phase := flag.Duration("phase", 7*time.Second, "how long each limit is shown")
	flag.Parse()
	if os.Getenv("NETSHAPE_VM") != "1" {
		fmt.Fprintln(os.Stderr, "demo: runs only inside the test VM (make demo); it starts its own dockerd")
		os.Exit(2)
	}
	if *netshape == "" || *loadgen == "" {
		fmt.Fprintln(os.Stderr, "demo: -netshape and -loadgen are required")
		os.Exit(2)
	}
	// Bounded whatever happens: the host kills the VM at 2 minutes anyway.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	if err := run(ctx, *netshape, *loadgen, *phase); err != nil {
		say("FAILED: %v", err)
		cancel()
		os.Exit(1)
	}
}

func run(ctx context.Context, netshape, loadgen string, phase time.Duration) error {
	say("Starting dockerd inside the VM (bridge %s) ...", bip)
	t0 := time.Now()
	d, err := guestdocker.Start(ctx, guestdocker.Options{StateDir: "/run/netshape-demo", DataRoot: "/var/lib/docker/netshape-demo", Bip: bip})
	if err != nil {
		return err
	}
	defer d.Stop()
	say("dockerd ready after %.1fs", time.Since(t0).Seconds())
	cli, err := d.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := guestdocker.ImportBinary(ctx, cli, loadgen, image, `["/loadgen","serve"]`); err != nil {
		return err
	}

	// What `dokku apps:create demoapp` and a deploy leave on disk, reduced to what
	// dokku-netshape reads: the app directory, its process formation and CONTAINER.web.1.
	root := "/run/netshape-demo/dokku"
	env := dokkuEnv(d, root)
	name := app + ".web.1"
	resp, err := cli.ContainerCreate(ctx,
		&container.Config{Image: image, Env: []string{"PORT=5000"},
			Cmd: []string{"/loadgen", "serve", "-duration", "5m"},
			Labels: map[string]string{ // as Dokku labels a deploy container
				"com.dokku.app-name": app, "com.dokku.container-type": "deploy", "com.dokku.process-type": "web",
				"com.dokku.dyno": "web.1", "dokku": "", "org.label-schema.vendor": "dokku",
			}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 10}},
		nil, nil, name)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	defer cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	if err := dokkuTree(root, resp.ID); err != nil {
		return err
	}
	say("Container %s is running (labelled as Dokku labels it; no Dokku installed)", name)

	cmd := func(args ...string) error {
		say("$ dokku-netshape %s", strings.Join(args, " "))
		c := exec.CommandContext(ctx, netshape, args...)
		c.Env = env
		out, err := c.CombinedOutput()
		for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			if l != "" {
				say("  %s", l)
			}
		}
		if err != nil {
			return fmt.Errorf("dokku-netshape %s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	if err := cmd("set", app, "--egress", "20mbit"); err != nil {
		return err
	}

	// The kernel's own view: the budget's configured rate and the bytes it let through.
	sh, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		return err
	}
	defer sh.Close()
	budget := app + "/_default_/egress"

	// The app sends to a sink in the VM's own network namespace; the sink counts what arrives.
	ln, err := net.Listen("tcp", net.JoinHostPort(d.Gateway(), "7001"))
	if err != nil {
		return err
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()
	// Two limited phases, a few unlimited seconds, and a second for `docker exec` to start.
	total := 2*phase + 5*time.Second
	say("")
	say("The app now sends as fast as it can for %s over one TCP connection. Each second:", total.Round(time.Second))
	say("  limit     the egress budget's rate in the kernel (none: no budget)")
	say("  measured  TCP payload that arrived at the receiver")
	say("  wire      frames the budget let through (payload + headers: 1514 bytes carry 1448)")
	say("")
	sender := make(chan error, 1)
	go func() {
		_, err := d.Docker(ctx, "exec", name, "/loadgen", "send", "-to", ln.Addr().String(), "-duration", total.String())
		sender <- err
	}()

	steps := []struct {
		at   time.Duration
		args []string
	}{
		{phase, []string{"set", app, "--egress", "50mbit"}},
		{2 * phase, []string{"clear", app, "--egress"}},
	}
	wireBytes := func() (uint64, float64, bool) {
		st, err := sh.Budget(budget)
		if err != nil {
			return 0, 0, false
		}
		return st.Stats.Bytes, float64(st.Rate), true
	}
	// `docker exec` takes a moment under emulation: the clock starts with the first byte.
	for wait := time.Now(); sink.Bytes() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Since(wait) > 10*time.Second {
			return errors.New("the app sent nothing within 10s")
		}
	}
	start := time.Now()
	last, lastT := sink.Bytes(), start
	lastWire, _, _ := wireBytes()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sec := 0
	for sender != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sender:
			if err != nil {
				return fmt.Errorf("sender: %w", err)
			}
			sender = nil // its last partial second is not shown
		case now := <-tick.C:
			sec++
			b := sink.Bytes()
			secs := now.Sub(lastT).Seconds()
			r := float64(b-last) * 8 / secs
			w, limit, limited := wireBytes()
			line := fmt.Sprintf("t=%-4s limit %-12s measured %6.1f Mbit/s", strconv.Itoa(sec)+"s", "none", r/1e6)
			if limited {
				line = fmt.Sprintf("t=%-4s limit %-12s measured %6.1f Mbit/s   wire %5.1f Mbit/s", strconv.Itoa(sec)+"s",
					fmt.Sprintf("%.1f Mbit/s", limit/1e6), r/1e6, float64(w-lastWire)*8/secs/1e6)
			}
			say("%s", line)
			last, lastT, lastWire = b, now, w
			if len(steps) > 0 && time.Since(start) >= steps[0].at {
				// The change is made between two samples; its own output is shown as it returns.
				if err := cmd(steps[0].args...); err != nil {
					return err
				}
				steps = steps[1:]
				// Skip the time the command took, so the next sample is a clean second.
				last, lastT = sink.Bytes(), time.Now()
				lastWire, _, _ = wireBytes()
			}
		}
	}
	say("")
	say("Done: one TCP connection ran at 20, then 50 Mbit/s, then unlimited; the limit changed live,")
	say("without restarting the container. Next: README.md and docs/DESIGN.md.")
	return nil
}

func dokkuEnv(d *guestdocker.Daemon, root string) []string {
	return d.Env(
		"DOKKU_ROOT="+filepath.Join(root, "home"),
		"DOKKU_LIB_ROOT="+filepath.Join(root, "lib"),
		"DOKKU_SYSTEM_USER=root", "DOKKU_SYSTEM_GROUP=root",
		"NETSHAPE_PIN_DIR="+pinDir,
		"NETSHAPE_LOCK=/run/netshape-demo/netshape.lock",
	)
}

// dokkuTree writes the files Dokku 0.38 keeps for a deployed app with one web container.
func dokkuTree(root, id string) error {
	home, lib := filepath.Join(root, "home"), filepath.Join(root, "lib")
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{filepath.Join(lib, "VERSION"), "v0.38.27\n", 0o644},
		{filepath.Join(lib, "STABLE_VERSION"), "0.38.27\n", 0o644},
		{filepath.Join(lib, "config", "docker-options", "--global", "migrated-from-files"), "true", 0o600},
		{filepath.Join(lib, "config", "apps", app, "created-at"), strconv.FormatInt(time.Now().Unix(), 10), 0o600},
		{filepath.Join(lib, "config", "ps", app, "scale"), "web=1\n", 0o600},
		{filepath.Join(home, app, "CONTAINER.web.1"), id + "\n", 0o644},
	}
	if err := os.MkdirAll(filepath.Join(lib, "config", "resource"), 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			return fmt.Errorf("dokku tree: %w", err)
		}
		if err := os.WriteFile(f.path, []byte(f.content), f.mode); err != nil {
			return fmt.Errorf("dokku tree: %w", err)
		}
	}
	return nil
}

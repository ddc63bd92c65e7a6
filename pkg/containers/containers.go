// Package containers is netshape's view of Docker: which running containers belong to a Dokku
// app (by the labels Dokku puts on them), what their network namespace and privileges are,
// live resource updates, and a filtered event stream for the watcher.
package containers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// Labels Dokku puts on the containers it creates.
const (
	LabelApp           = "com.dokku.app-name"
	LabelContainerType = "com.dokku.container-type"
	LabelProcessType   = "com.dokku.process-type"
	LabelDyno          = "com.dokku.dyno"
)

// Values of LabelContainerType.
const (
	TypeDeploy = "deploy" // the app's long-running process containers
	TypeRun    = "run"    // `dokku run`
	TypeCron   = "cron"   // scheduled `dokku run`
)

// ErrGone means the container does not exist (any more).
var ErrGone = errors.New("container gone")

// Container is what netshape needs to know about one container.
type Container struct {
	ID   string
	Name string // without Docker's leading "/"

	App         string // LabelApp
	Type        string // LabelContainerType: TypeDeploy, TypeRun, TypeCron ("" if unlabelled)
	ProcessType string // LabelProcessType, e.g. "web" (deploy containers only)
	Dyno        string // LabelDyno, e.g. "web.1"
	Labels      map[string]string

	Running    bool
	Pid        int    // 0 unless running
	SandboxKey string // Docker's bind mount of the container netns, e.g. /var/run/docker/netns/1a2b3c4d5e6f

	// NetworkMode as Docker reports it: "default"/"bridge", a network name, "host", "none",
	// or "container:ID" (shares that container's netns).
	NetworkMode string
	Networks    []string // names of the networks the container is attached to, sorted

	Privileged  bool
	HostNetwork bool // NetworkMode is host: nothing of its own to shape
	// HasNetAdmin: the container can change its own netns (tc, qdiscs): privileged, or
	// CapAdd holds NET_ADMIN or ALL (and CapDrop does not take NET_ADMIN back).
	HasNetAdmin bool

	// Resources currently set on the container (0 = not set; MemorySwap -1 = unlimited).
	Resources Resources
}

// NetnsPath is where the container's network namespace can be opened: Docker's SandboxKey
// when it exists in this mount namespace, else /proc/PID/ns/net. "" when the container has
// neither (not running and no sandbox).
//
// The SandboxKey is preferred because it belongs to the container's sandbox; a /proc/PID path
// could name an unrelated process if the container died and its pid was reused.
func (c Container) NetnsPath() string {
	if c.SandboxKey != "" {
		if _, err := os.Stat(c.SandboxKey); err == nil {
			return c.SandboxKey
		}
	}
	if c.Running && c.Pid > 0 {
		return "/proc/" + strconv.Itoa(c.Pid) + "/ns/net"
	}
	return ""
}

// SharesNetnsWith is the container whose netns this one joined (--network container:X), or "".
func (c Container) SharesNetnsWith() string {
	if id, ok := strings.CutPrefix(c.NetworkMode, "container:"); ok {
		return id
	}
	return ""
}

// Client talks to the Docker daemon. Every call but the event stream is bounded by Timeout:
// a daemon that accepts and never answers must not hang a deploy (post-deploy) or keep the
// reconcile lock held.
type Client struct {
	api *client.Client
	// Timeout bounds each API call (an inspect, a list, an update); 0 means DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout is how long one Docker API call may take.
const DefaultTimeout = 30 * time.Second

// ErrTimeout means the daemon did not answer a call in time.
var ErrTimeout = errors.New("Docker did not answer")

// New connects the way the docker CLI does (DOCKER_HOST, DOCKER_CERT_PATH, ... or the default
// socket) and negotiates the API version with the daemon, so older daemons work too.
func New() (*Client, error) {
	api, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return &Client{api: api}, nil
}

// NewFromAPI wraps an existing Docker API client (tests, or callers that already have one).
func NewFromAPI(api *client.Client) *Client { return &Client{api: api} }

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// call runs fn with the per-call deadline and turns that deadline into a clear error. The
// caller's own cancellation stays what it was.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	err := fn(cctx)
	if err != nil && ctx.Err() == nil && cctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("%w within %s on %s", ErrTimeout, c.timeout(), c.api.DaemonHost())
	}
	return err
}

// API is the underlying Docker client.
func (c *Client) API() *client.Client { return c.api }

// Close releases the client's connections.
func (c *Client) Close() error { return c.api.Close() }

// CloseIdle closes the idle keep-alive connections to the daemon. They are a
// cache (bounded by the HTTP transport), so a long-running caller that counts
// its descriptors closes them first to see only what it really holds.
func (c *Client) CloseIdle() { c.api.HTTPClient().CloseIdleConnections() }

// Ping checks that the daemon answers.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.call(ctx, func(ctx context.Context) error { _, err := c.api.Ping(ctx); return err }); err != nil {
		return fmt.Errorf("docker ping: %w", err)
	}
	return nil
}

// ListApp returns the app's running deploy containers (the ones `ps:scale` manages), sorted by
// name. `dokku run` and cron containers are left out: use List for those.
func (c *Client) ListApp(ctx context.Context, app string) ([]Container, error) {
	if app == "" {
		return nil, errors.New("list containers: empty app name")
	}
	return c.List(ctx, app, TypeDeploy)
}

// ListAll returns every running container that carries Dokku's app label, of any type and
// app, sorted by name. Container.Type and Container.App say what each one is.
func (c *Client) ListAll(ctx context.Context) ([]Container, error) {
	return c.List(ctx, "")
}

// List returns running Dokku containers, sorted by name: those of app ("" = any app) whose
// container type is one of types (none = any type).
func (c *Client) List(ctx context.Context, app string, types ...string) ([]Container, error) {
	args := filters.NewArgs(filters.Arg("status", "running"))
	if app == "" {
		args.Add("label", LabelApp)
	} else {
		args.Add("label", LabelApp+"="+app)
	}
	// Several values of one label filter are ANDed by Docker, so filter the types here.
	var sums []container.Summary
	err := c.call(ctx, func(ctx context.Context) (err error) {
		sums, err = c.api.ContainerList(ctx, container.ListOptions{Filters: args})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list containers of %q: %w", app, err)
	}
	var out []Container
	for _, s := range sums {
		if len(types) > 0 && !contains(types, s.Labels[LabelContainerType]) {
			continue
		}
		ct, err := c.Inspect(ctx, s.ID)
		if errors.Is(err, ErrGone) {
			continue // removed between list and inspect
		}
		if err != nil {
			return nil, err
		}
		if !ct.Running {
			continue // stopped between list and inspect
		}
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Inspect returns one container by ID or name, running or not. A missing container is
// ErrGone (wrapped).
func (c *Client) Inspect(ctx context.Context, id string) (Container, error) {
	var r container.InspectResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		r, err = c.api.ContainerInspect(ctx, id)
		return err
	})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("inspect container %s: %w", id, ErrGone)
		}
		return Container{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	return fromInspect(r), nil
}

func fromInspect(r container.InspectResponse) Container {
	ct := Container{}
	if r.ContainerJSONBase != nil {
		ct.ID = r.ID
		ct.Name = strings.TrimPrefix(r.Name, "/")
		if st := r.State; st != nil {
			ct.Running = st.Running
			if st.Running {
				ct.Pid = st.Pid
			}
		}
		if hc := r.HostConfig; hc != nil {
			ct.NetworkMode = string(hc.NetworkMode)
			ct.HostNetwork = hc.NetworkMode.IsHost()
			ct.Privileged = hc.Privileged
			ct.HasNetAdmin = hasNetAdmin(hc.Privileged, hc.CapAdd, hc.CapDrop)
			ct.Resources = Resources{
				Memory:      hc.Memory,
				MemorySwap:  hc.MemorySwap,
				NanoCPUs:    hc.NanoCPUs,
				BlkioWeight: hc.BlkioWeight,
			}
		}
	}
	if r.Config != nil {
		ct.Labels = r.Config.Labels
		ct.App = r.Config.Labels[LabelApp]
		ct.Type = r.Config.Labels[LabelContainerType]
		ct.ProcessType = r.Config.Labels[LabelProcessType]
		ct.Dyno = r.Config.Labels[LabelDyno]
	}
	if ns := r.NetworkSettings; ns != nil {
		ct.SandboxKey = ns.SandboxKey
		for name := range ns.Networks {
			ct.Networks = append(ct.Networks, name)
		}
		sort.Strings(ct.Networks)
	}
	return ct
}

// hasNetAdmin follows Docker's capability rules: "ALL" in CapAdd grants everything except
// what CapDrop names; a capability named in CapAdd is granted even when CapDrop says ALL.
// Names are accepted with or without the CAP_ prefix, in any case, as Docker does.
func hasNetAdmin(privileged bool, add, drop []string) bool {
	if privileged {
		return true
	}
	norm := func(s string) string { return strings.TrimPrefix(strings.ToUpper(s), "CAP_") }
	has := func(list []string, want string) bool {
		for _, s := range list {
			if norm(s) == want {
				return true
			}
		}
		return false
	}
	if has(add, "NET_ADMIN") {
		return true
	}
	return has(add, "ALL") && !has(drop, "NET_ADMIN")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

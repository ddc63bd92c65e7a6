// Package scale measures dokku-netshape at a thousand containers: the real CLI (`apply
// --all`, `apply APP`, `report`), the real Docker client library, reconcile and shaper,
// against real network namespaces and veth pairs. Only dockerd is replaced: a guest cannot
// hold a thousand containerd shims, so API serves the records of namespaces the test made,
// labelled as Dokku labels its deploy containers, over the same Engine API.
package scale

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

// apiVersion is what API answers /_ping with; the client negotiates down to it.
const apiVersion = "1.41"

// Record is one container as API reports it: a running Dokku deploy container whose
// network namespace is Netns (Docker's SandboxKey).
type Record struct {
	App, Process string
	Index        int
	Netns        string
}

// Name is Dokku's container name for the record: APP.PROC.N.
func (r Record) Name() string { return fmt.Sprintf("%s.%s.%d", r.App, r.Process, r.Index) }

// ID is a stable 64-hex container ID derived from the name.
func (r Record) ID() string {
	sum := sha256.Sum256([]byte(r.Name()))
	return hex.EncodeToString(sum[:])
}

func (r Record) labels() map[string]string {
	return map[string]string{
		"com.dokku.app-name":       r.App,
		"com.dokku.container-type": "deploy",
		"com.dokku.process-type":   r.Process,
		"com.dokku.dyno":           fmt.Sprintf("%s.%d", r.Process, r.Index),
	}
}

// API serves container list and inspect for its records on a unix socket, answering what
// the Docker client library asks (ping, list with label filters, inspect); anything else is
// a 404 with Docker's error body, so a code path that needs more shows up as an error.
type API struct {
	Socket string

	mu      sync.Mutex
	byID    map[string]Record
	calls   map[string]int
	srv     *http.Server
	lis     net.Listener
	unknown []string
}

// Serve starts API on socket with records.
func Serve(socket string, records []Record) (*API, error) {
	a := &API{Socket: socket, byID: map[string]Record{}, calls: map[string]int{}}
	for _, r := range records {
		a.byID[r.ID()] = r
	}
	os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	a.lis = lis
	a.srv = &http.Server{Handler: http.HandlerFunc(a.handle)}
	go a.srv.Serve(lis)
	return a, nil
}

// Close stops serving.
func (a *API) Close() error { return a.srv.Close() }

// Calls counts requests by kind ("ping", "list", "inspect").
func (a *API) Calls() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{}
	for k, v := range a.calls {
		out[k] = v
	}
	return out
}

// Unknown lists requests API could not answer.
func (a *API) Unknown() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.unknown...)
}

func (a *API) count(kind string) {
	a.mu.Lock()
	a.calls[kind]++
	a.mu.Unlock()
}

func (a *API) handle(w http.ResponseWriter, req *http.Request) {
	// Strip the version prefix (/v1.41/containers/json -> /containers/json).
	path := req.URL.Path
	if strings.HasPrefix(path, "/v1.") {
		if i := strings.Index(path[1:], "/"); i >= 0 {
			path = path[1+i:]
		}
	}
	w.Header().Set("Api-Version", apiVersion)
	switch {
	case path == "/_ping":
		a.count("ping")
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("OK"))
	case path == "/containers/json" && req.Method == http.MethodGet:
		a.count("list")
		a.list(w, req)
	case strings.HasPrefix(path, "/containers/") && strings.HasSuffix(path, "/json") && req.Method == http.MethodGet:
		a.count("inspect")
		a.inspect(w, strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json"))
	default:
		a.mu.Lock()
		a.unknown = append(a.unknown, req.Method+" "+req.URL.Path)
		a.mu.Unlock()
		apiError(w, http.StatusNotFound, "scale API: not served: "+req.Method+" "+path)
	}
}

func apiError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// list answers GET /containers/json with the records matching its label filters (each
// "key" or "key=value"; all must match) and status=running (every record runs).
func (a *API) list(w http.ResponseWriter, req *http.Request) {
	args, err := filters.FromJSON(req.URL.Query().Get("filters"))
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	var out []container.Summary
	for _, r := range a.byID {
		if !matchLabels(r.labels(), args.Get("label")) {
			continue
		}
		if st := args.Get("status"); len(st) > 0 && !(len(st) == 1 && st[0] == "running") {
			continue
		}
		out = append(out, container.Summary{ID: r.ID(), Names: []string{"/" + r.Name()}, Labels: r.labels(),
			State: "running", Status: "Up", HostConfig: struct {
				NetworkMode string            `json:",omitempty"`
				Annotations map[string]string `json:",omitempty"`
			}{NetworkMode: "bridge"}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Names[0] < out[j].Names[0] })
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func matchLabels(have map[string]string, want []string) bool {
	for _, f := range want {
		k, v, hasValue := strings.Cut(f, "=")
		got, ok := have[k]
		if !ok || (hasValue && got != v) {
			return false
		}
	}
	return true
}

// inspect answers GET /containers/ID/json, by full ID, a unique prefix or name.
func (a *API) inspect(w http.ResponseWriter, ref string) {
	var found []Record
	for id, r := range a.byID {
		if id == ref || r.Name() == strings.TrimPrefix(ref, "/") || (len(ref) >= 12 && strings.HasPrefix(id, ref)) {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		apiError(w, http.StatusNotFound, "No such container: "+ref)
		return
	}
	r := found[0]
	resp := container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID:   r.ID(),
			Name: "/" + r.Name(),
			// Pid 0: the namespace is reached only through SandboxKey, never a /proc path.
			State: &container.State{Status: "running", Running: true},
			HostConfig: &container.HostConfig{
				NetworkMode: "bridge",
			},
		},
		Config: &container.Config{Labels: r.labels()},
		NetworkSettings: &container.NetworkSettings{
			NetworkSettingsBase: container.NetworkSettingsBase{SandboxKey: r.Netns},
			Networks:            map[string]*network.EndpointSettings{"bridge": {}},
		},
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

package scale

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
)

// TestAPIAnswersTheDockerClient: the production Docker client (pkg/containers, through the
// Docker library and DOCKER_HOST) lists and inspects the rig's records as Dokku containers,
// and a request the rig does not serve fails and is recorded.
func TestAPIAnswersTheDockerClient(t *testing.T) {
	recs := []Record{
		{App: "shop", Process: "web", Index: 1, Netns: "/run/netns/a"},
		{App: "shop", Process: "worker", Index: 1, Netns: "/run/netns/b"},
		{App: "blog", Process: "web", Index: 1, Netns: "/run/netns/c"},
	}
	api, err := Serve(filepath.Join(t.TempDir(), "d.sock"), recs)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	t.Setenv("DOCKER_HOST", "unix://"+api.Socket)
	c, err := containers.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	shop, err := c.ListApp(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if len(shop) != 2 || shop[0].Name != "shop.web.1" || shop[1].Name != "shop.worker.1" {
		t.Fatalf("ListApp(shop) = %+v", shop)
	}
	for i, ct := range shop {
		if ct.App != "shop" || ct.Type != containers.TypeDeploy || !ct.Running || ct.SandboxKey != recs[i].Netns || ct.Pid != 0 {
			t.Errorf("container %d: %+v", i, ct)
		}
	}
	all, err := c.ListAll(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("ListAll = %d containers, %v; want 3", len(all), err)
	}
	if _, err := c.Inspect(ctx, "nonexistent0000"); !errors.Is(err, containers.ErrGone) {
		t.Errorf("Inspect(unknown) = %v, want ErrGone", err)
	}
	if err := c.UpdateResources(ctx, shop[0].ID, containers.Resources{Memory: 1 << 30}); err == nil {
		t.Error("an update the rig does not serve succeeded")
	}
	if len(api.Unknown()) != 1 {
		t.Errorf("unserved requests recorded: %v, want the update", api.Unknown())
	}
	if got := api.Calls(); got["list"] != 2 || got["inspect"] != 6 {
		t.Errorf("calls = %v, want 2 lists and 6 inspects (2 + 3 + the unknown one)", got)
	}
}

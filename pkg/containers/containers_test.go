package containers

import "testing"

func TestHasNetAdmin(t *testing.T) {
	cases := []struct {
		priv      bool
		add, drop []string
		want      bool
	}{
		{false, nil, nil, false},
		{true, nil, []string{"NET_ADMIN"}, true},
		{false, []string{"NET_ADMIN"}, nil, true},
		{false, []string{"cap_net_admin"}, nil, true},
		{false, []string{"NET_RAW", "SYS_ADMIN"}, nil, false},
		{false, []string{"all"}, nil, true},
		{false, []string{"ALL"}, []string{"CAP_NET_ADMIN"}, false},
		{false, []string{"NET_ADMIN"}, []string{"ALL"}, true},
	}
	for _, c := range cases {
		if got := hasNetAdmin(c.priv, c.add, c.drop); got != c.want {
			t.Errorf("hasNetAdmin(%v, %v, %v) = %v, want %v", c.priv, c.add, c.drop, got, c.want)
		}
	}
}

func TestResourcesString(t *testing.T) {
	if s := (Resources{}).String(); s != "{}" {
		t.Errorf("empty: %q", s)
	}
	r := Resources{Memory: 1 << 20, MemorySwap: -1, NanoCPUs: 5e8, BlkioWeight: 300}
	if s := r.String(); s != "{memory=1048576 memory-swap=-1 nano-cpus=500000000 blkio-weight=300}" {
		t.Errorf("full: %q", s)
	}
	if !(Resources{}).IsZero() || r.IsZero() {
		t.Error("IsZero")
	}
}

func TestNetnsPath(t *testing.T) {
	c := Container{SandboxKey: "/nonexistent/netshape/sandbox", Running: true, Pid: 42}
	if p := c.NetnsPath(); p != "/proc/42/ns/net" {
		t.Errorf("missing sandbox key falls back to /proc: %q", p)
	}
	c.SandboxKey = t.TempDir()
	if p := c.NetnsPath(); p != c.SandboxKey {
		t.Errorf("existing sandbox key preferred: %q", p)
	}
	if p := (Container{Pid: 42}).NetnsPath(); p != "" {
		t.Errorf("not running: %q", p)
	}
	if id := (Container{NetworkMode: "container:abc"}).SharesNetnsWith(); id != "abc" {
		t.Errorf("SharesNetnsWith = %q", id)
	}
}

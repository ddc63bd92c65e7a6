package dokku

import "testing"

func TestIsNetworkLimitKey(t *testing.T) {
	for key, want := range map[string]bool{
		"_default_.limit.network":         true,
		"_default_.limit.network-egress":  true,
		"web.limit.network-ingress":       true,
		"_default_.reserve.network":       false, // reservations do not shape
		"_default_.limit.memory":          false,
		"_default_.limit.cpu":             false,
		"web.limit.network-egress.bak":    false,
		".netshape-tmp-123":               false,
		"we/b.limit.network":              false,
		"limit.network":                   false,
		"_default_.limit.network-egress ": false,
	} {
		if got := IsNetworkLimitKey(key); got != want {
			t.Errorf("IsNetworkLimitKey(%q) = %v, want %v", key, got, want)
		}
	}
}

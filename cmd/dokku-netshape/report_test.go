package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// bypassed is text in the stdout report and per budget numbers in JSON.
func TestReportBypassedTextAndJSON(t *testing.T) {
	all := map[string]appReport{"shop": {
		fields:   map[string]string{"egress": "20mbit", "bypassed": "_default_/egress: 7, web/egress: 0"},
		bypassed: map[string]uint64{"_default_/egress": 7, "web/egress": 0},
	}}
	var out bytes.Buffer
	if err := writeReport(&out, reportArgs{app: "shop", format: "json"}, []string{"shop"}, all, nil); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Egress   string            `json:"netshape-egress"`
		Bypassed map[string]uint64 `json:"netshape-bypassed"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("report JSON %s: %v", out.String(), err)
	}
	if got.Egress != "20mbit" || len(got.Bypassed) != 2 || got.Bypassed["_default_/egress"] != 7 || got.Bypassed["web/egress"] != 0 {
		t.Fatalf("JSON %s, want egress 20mbit and bypassed {_default_/egress: 7, web/egress: 0}", out.String())
	}
	out.Reset()
	if err := writeReport(&out, reportArgs{app: "shop", format: "stdout"}, []string{"shop"}, all, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Netshape bypassed:              _default_/egress: 7, web/egress: 0\n") {
		t.Fatalf("text report lacks the bypassed line:\n%s", out.String())
	}
	out.Reset()
	if err := writeReport(&out, reportArgs{app: "shop", field: "bypassed"}, []string{"shop"}, all, nil); err != nil {
		t.Fatal(err)
	}
	if out.String() != "_default_/egress: 7, web/egress: 0\n" {
		t.Fatalf("--netshape-bypassed: %q", out.String())
	}
}

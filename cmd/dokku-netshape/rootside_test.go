package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// What the grant lets through to the root side, argument by argument.
func TestCheckGrantedArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"apply", "myapp"}, true},
		{[]string{"apply", "myapp", "--force"}, true},
		{[]string{"apply", "--force", "myapp"}, true},
		{[]string{"apply", "--all"}, true},
		{[]string{"apply", "--all", "--force"}, true},
		{[]string{"remove", "myapp"}, true},
		{[]string{"report"}, true},
		{[]string{"report", "myapp", "--format", "json"}, true},
		{[]string{"report", "myapp", "--netshape-egress"}, true},
		{[]string{"report", "myapp", "--sample-window", "2s"}, true},
		{[]string{"report", "--netshape-usage", "--sample-window=250ms"}, true},
		{[]string{"top", "--interval", "1s", "--count", "0"}, true},
		{[]string{"top", "--interval", "100ms", "--count", "1000000"}, true},
		{nil, false},
		{[]string{"report", "myapp", "--sample-window", "1h"}, false}, // would hold a root process open
		{[]string{"report", "myapp", "--sample-window", "0"}, false},
		{[]string{"report", "myapp", "--sample-window"}, false},
		{[]string{"report", "--sample-window", "1s", "--sample-window", "1s"}, false},
		{[]string{"top"}, false}, // the CLI always passes both flags
		{[]string{"top", "--interval", "1ms", "--count", "1"}, false},
		{[]string{"top", "--interval", "2m", "--count", "1"}, false},
		{[]string{"top", "--interval", "1s", "--count", "-1"}, false},
		{[]string{"top", "--interval", "1s", "--count", "1000001"}, false},
		{[]string{"top", "--interval", "1s", "--count", "+5"}, false},
		{[]string{"top", "--count", "1", "--interval", "1s"}, false},
		{[]string{"top", "--interval", "1s", "--count", "1", "--help"}, false},
		{[]string{"top", "--interval=1s", "--count=1"}, false},
		{[]string{"apply"}, false},
		{[]string{"apply", "myapp", "--all"}, false},
		{[]string{"apply", "myapp", "other"}, false},
		{[]string{"apply", "myapp", "--force", "--force"}, false},
		{[]string{"apply", "myapp", "--help"}, false},
		{[]string{"apply", "--generate-bash-completion"}, false},
		{[]string{"apply", "../etc"}, false},
		{[]string{"apply", "myapp", "--no-apply"}, false},
		{[]string{"remove"}, false},
		{[]string{"remove", "a", "b"}, false},
		{[]string{"remove", "--all"}, false},
		{[]string{"report", "a", "b"}, false},
		{[]string{"report", "--netshape-bogus"}, false},
		{[]string{"report", "Bad/App"}, false},
		{[]string{"set", "myapp", "--egress", "1mbit"}, false},
		{[]string{"watch"}, false},
		{[]string{"install"}, false},
		{[]string{"uninstall", "netshape"}, false},
		{[]string{"--help"}, false},
	} {
		err := checkGrantedArgs(c.args)
		if (err == nil) != c.ok {
			t.Errorf("checkGrantedArgs(%q) = %v, want ok=%v", c.args, err, c.ok)
		}
	}
}

func TestRootReadRootConf(t *testing.T) {
	nettest.RequireRoot(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "paths")
	if conf, err := readRootConf(p); err != nil || conf != nil {
		t.Errorf("missing file: %v, %v; want defaults (nil, nil)", conf, err)
	}
	write := func(content string, mode os.FileMode, uid int) {
		os.Remove(p)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, 0); err != nil {
			t.Fatal(err)
		}
	}
	write("# c\nDOKKU_ROOT=/home/dokku\nDOKKU_LIB_ROOT=/srv/dokku\nDOCKER_HOST=unix:///run/docker.sock\nNETSHAPE_DOCKER_TIMEOUT=30s\n", 0o644, 0)
	conf, err := readRootConf(p)
	if err != nil || conf["DOKKU_LIB_ROOT"] != "/srv/dokku" || conf["DOCKER_HOST"] != "unix:///run/docker.sock" || len(conf) != 4 {
		t.Errorf("good file: %v, %v", conf, err)
	}
	for _, c := range []struct {
		content string
		mode    os.FileMode
		uid     int
		want    string
	}{
		{"DOKKU_ROOT=/home/dokku\n", 0o666, 0, "writable by group or others"},
		{"DOKKU_ROOT=/home/dokku\n", 0o644, 65534, "not root"},
		{"NETSHAPE_PIN_DIR=/tmp/x\n", 0o644, 0, "unknown key"},
		{"LD_PRELOAD=/tmp/x.so\n", 0o644, 0, "unknown key"},
		{"DOKKU_ROOT=relative\n", 0o644, 0, "invalid value"},
		{"DOKKU_ROOT=/a b\n", 0o644, 0, "invalid value"},
		{"DOKKU_SYSTEM_USER=root ALL\n", 0o644, 0, "invalid value"},
		{"garbage\n", 0o644, 0, "KEY=VALUE"},
		{strings.Repeat("#", 20<<10), 0o644, 0, "larger than"},
	} {
		write(c.content, c.mode, c.uid)
		if _, err := readRootConf(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q mode %v uid %d: %v, want %q", c.content, c.mode, c.uid, err, c.want)
		}
	}
	// A link, even to a good root-owned file, is refused.
	write("DOKKU_ROOT=/home/dokku\n", 0o644, 0)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if _, err := readRootConf(link); err == nil {
		t.Errorf("link: %v", err)
	}
}

// report (run as root) shows stored values only when short and printable.
func TestReportValue(t *testing.T) {
	for in, want := range map[string]string{
		"512m":                   "512m",
		"":                       "",
		"512m\x1b[2J":            "invalid (8 bytes with unprintable characters, not shown)",
		strings.Repeat("9", 100): "invalid (100 bytes, not shown)",
		"--blkio-weight=500":     "--blkio-weight=500",
	} {
		if got := reportValue(in); got != want {
			t.Errorf("reportValue(%q) = %q, want %q", in, got, want)
		}
	}
}

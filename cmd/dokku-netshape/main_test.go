package main

import (
	"os"
	"os/exec"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/limits"
)

// envExecCLI makes the test binary run as the CLI (argv after the binary
// name): tests start it as separate processes, the way Dokku runs
// concurrent commands, without building another binary.
const envExecCLI = "NETSHAPE_TEST_EXEC_CLI"

func TestMain(m *testing.M) {
	deviceResolver = fakeDevices
	if os.Getenv(envExecCLI) == "1" {
		os.Exit(run(append([]string{"dokku-netshape"}, os.Args[1:]...)))
	}
	os.Exit(m.Run())
}

// fakeDevices stands in for disks the test machine may not have: sda (also
// as a by-id alias), sdb, sdc, and /dev/fake0../dev/fake999 (device 240:N).
// Every other path goes to the real check, so /dev/null and friends are
// judged as on a server.
func fakeDevices(path string) (uint64, error) {
	switch path {
	case "/dev/sda", "/dev/disk/by-id/ata-disk0":
		return 8<<8 | 0, nil
	case "/dev/sdb":
		return 8<<8 | 16, nil
	case "/dev/sdc":
		return 8<<8 | 32, nil
	}
	var n uint64
	if len(path) > len("/dev/fake") && path[:len("/dev/fake")] == "/dev/fake" {
		for _, c := range path[len("/dev/fake"):] {
			if c < '0' || c > '9' || n > 99 {
				return limits.BlockDevice(path)
			}
			n = n*10 + uint64(c-'0')
		}
		return 240<<8 | n, nil
	}
	return limits.BlockDevice(path)
}

// cliProcess is the CLI as its own process (the test binary re-executed),
// with the test's environment (fixture paths) plus extra.
func cliProcess(t testing.TB, extra []string, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(append(os.Environ(), envExecCLI+"=1"), extra...)
	return cmd
}

// Package vmspec is the contract between the host-side VM driver (test/vm/vmrun) and the guest's /init
// (test/vm/guestinit): the run description the driver puts into the initramfs, and the marker lines the
// guest prints on its serial console.
package vmspec

// SpecPath is where the driver puts the JSON-encoded Spec inside the initramfs.
const SpecPath = "/netshape/spec.json"

// Marker lines on the guest console (ttyS0). Each starts a line; the rest of the line is the payload.
const (
	// MarkReady: printed by /init just before the first command starts; payload "uptime=<seconds>".
	MarkReady = "NETSHAPE-READY"
	// MarkCmd: a command starts; payload "<index> <shell command>".
	MarkCmd = "NETSHAPE-CMD"
	// MarkCmdExit: a command ended; payload "<index> <exit code>".
	MarkCmdExit = "NETSHAPE-CMD-EXIT"
	// MarkResult: a measurement a test wants in the summary; payload is one JSON object.
	MarkResult = "NETSHAPE-RESULT"
	// MarkExit: the guest is about to power off; payload is the overall exit code
	// (first non-zero command exit, 124 on the in-guest deadline, 125 on a setup failure).
	MarkExit = "NETSHAPE-EXIT"
	// MarkError: setup failed before any command ran; payload is the error text.
	MarkError = "NETSHAPE-ERROR"
)

// Exit codes /init uses besides a command's own.
const (
	ExitTimeout = 124
	ExitSetup   = 125
)

// Spec tells the guest's /init what to do.
type Spec struct {
	Kernel  string `json:"kernel"`  // series alias, e.g. "6.1"
	Release string `json:"release"` // uname -r of the guest kernel
	// Modules are initramfs paths of .ko files in load order (dependencies first).
	Modules []string `json:"modules"`
	// ModulesDir is the host path of lib/modules/<release>; the guest sees the host's / and links it
	// into its /lib/modules so modprobe and the kernel's module autoloading work there.
	ModulesDir string `json:"modules_dir"`
	// Commands run one after another with /bin/sh -c in Dir; all of them run even if one fails.
	Commands []string `json:"commands"`
	Dir      string   `json:"dir"`
	Env      []string `json:"env"`
	// TimeoutSec bounds all commands together inside the guest (the host has its own, longer, timeout).
	TimeoutSec int `json:"timeout_sec"`
	// Interactive gives the commands the serial port as stdin and controlling terminal (vmrun -shell).
	Interactive bool `json:"interactive,omitempty"`
}

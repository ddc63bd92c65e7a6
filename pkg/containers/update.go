package containers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// Resources are the limits `docker update` can change on a running container. A zero field is
// left as it is: Docker's update API cannot remove a memory or CPU limit, only change it.
type Resources struct {
	Memory     int64 // bytes; Docker's minimum is 6 MiB
	MemorySwap int64 // memory+swap in bytes, -1 = unlimited swap; must be >= Memory
	NanoCPUs   int64 // CPUs × 1e9 (--cpus 1.5 = 1.5e9); at most the host's CPU count
	// BlkioWeight is the relative block IO weight, 10..1000. Docker drops it (with a warning,
	// no error) when its cgroup has no weight file: with cgroup v1 it looks only for the CFQ
	// blkio.weight, not BFQ's blkio.bfq.weight; with cgroup v2 it needs the io controller.
	BlkioWeight uint16
}

// IsZero reports whether r changes nothing.
func (r Resources) IsZero() bool { return r == Resources{} }

// ErrNotApplied means Docker accepted an update but a value did not take effect (the daemon
// discards settings its cgroup setup does not support, e.g. the block IO weight).
var ErrNotApplied = errors.New("docker did not apply the update")

// UpdateResources changes the limits of a container live. Fields left zero are not changed.
// Afterwards the container is inspected and every field that was set is checked, so a value
// the daemon silently dropped is an error (ErrNotApplied, with the daemon's warnings) rather
// than a success. A missing container is ErrGone.
//
// What Docker refuses (seen with dockerd 20.10, cgroup v1): a Memory above the current
// MemorySwap ("Memory limit should be smaller than already set memoryswap limit, update the
// memoryswap at the same time" — also when neither was set, so set MemorySwap with Memory);
// Memory below 6 MiB; a Memory the kernel cannot reclaim down to (the write to the cgroup fails,
// reported by runc); NanoCPUs above the host's CPU count; NanoCPUs on a container created with
// --cpu-quota/--cpu-period.
func (c *Client) UpdateResources(ctx context.Context, id string, r Resources) error {
	if r.IsZero() {
		return nil
	}
	var resp container.UpdateResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		resp, err = c.api.ContainerUpdate(ctx, id, container.UpdateConfig{Resources: container.Resources{
			Memory:      r.Memory,
			MemorySwap:  r.MemorySwap,
			NanoCPUs:    r.NanoCPUs,
			BlkioWeight: r.BlkioWeight,
		}})
		return err
	})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return fmt.Errorf("update %s of container %s: %w", r, id, ErrGone)
		}
		return fmt.Errorf("update %s of container %s: %w", r, id, err)
	}
	got, err := c.Inspect(ctx, id)
	if err != nil {
		return fmt.Errorf("check update of container %s: %w", id, err)
	}
	var missed []string
	if r.Memory != 0 && got.Resources.Memory != r.Memory {
		missed = append(missed, fmt.Sprintf("memory is %d", got.Resources.Memory))
	}
	if r.MemorySwap != 0 && got.Resources.MemorySwap != r.MemorySwap {
		missed = append(missed, fmt.Sprintf("memory-swap is %d", got.Resources.MemorySwap))
	}
	if r.NanoCPUs != 0 && got.Resources.NanoCPUs != r.NanoCPUs {
		missed = append(missed, fmt.Sprintf("nano-cpus is %d", got.Resources.NanoCPUs))
	}
	if r.BlkioWeight != 0 && got.Resources.BlkioWeight != r.BlkioWeight {
		missed = append(missed, fmt.Sprintf("blkio-weight is %d", got.Resources.BlkioWeight))
	}
	if len(missed) > 0 {
		msg := strings.Join(missed, ", ")
		if len(resp.Warnings) > 0 {
			msg += "; daemon warnings: " + strings.Join(resp.Warnings, "; ")
		}
		return fmt.Errorf("update %s of container %s: %w: %s", r, id, ErrNotApplied, msg)
	}
	return nil
}

// String lists the fields that are set, for error messages.
func (r Resources) String() string {
	var parts []string
	if r.Memory != 0 {
		parts = append(parts, fmt.Sprintf("memory=%d", r.Memory))
	}
	if r.MemorySwap != 0 {
		parts = append(parts, fmt.Sprintf("memory-swap=%d", r.MemorySwap))
	}
	if r.NanoCPUs != 0 {
		parts = append(parts, fmt.Sprintf("nano-cpus=%d", r.NanoCPUs))
	}
	if r.BlkioWeight != 0 {
		parts = append(parts, fmt.Sprintf("blkio-weight=%d", r.BlkioWeight))
	}
	if len(parts) == 0 {
		return "{}"
	}
	return "{" + strings.Join(parts, " ") + "}"
}

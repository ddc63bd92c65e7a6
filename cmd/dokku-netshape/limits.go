package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/limits"
	"github.com/dokku-netshape/dokku-netshape/pkg/size"
)

// deviceResolver checks --device-* paths; nil is the host's /dev (tests
// substitute disks the test machine does not have).
var deviceResolver limits.DeviceResolver

func limitsRequest(c *cli.Context, app, proc string) (limits.Request, error) {
	r := limits.Request{
		Devices: deviceResolver,
		App:     app, Process: proc,
		Memory: c.String("memory"), MemorySwap: c.String("memory-swap"), CPUs: c.String("cpus"),
		BlkioWeight:     c.String("blkio-weight"),
		DeviceReadBps:   c.StringSlice("device-read-bps"),
		DeviceWriteBps:  c.StringSlice("device-write-bps"),
		DeviceReadIOPS:  c.StringSlice("device-read-iops"),
		DeviceWriteIOPS: c.StringSlice("device-write-iops"),
	}
	for _, f := range []string{"memory", "memory-swap", "cpus", "blkio-weight"} {
		if c.IsSet(f) && c.String(f) == "" {
			return r, fmt.Errorf("--%s: empty value", f)
		}
	}
	return r, nil
}

// applyLimits pushes memory/CPU/blkio to running containers. Docker access
// is enough (the dokku user is in the docker group); no root needed.
func applyLimits(ctx context.Context, env dokku.Env, r limits.Request) error {
	docker, err := newDocker()
	if err != nil {
		return fmt.Errorf("connect to Docker to apply limits live: %w", err)
	}
	defer docker.Close()
	applied, pending, err := limits.ApplyLive(ctx, docker, env, r)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range applied {
		if a.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Container, a.Err))
			continue
		}
		fmt.Printf("-----> %s updated live: %s\n", a.Container, describeResources(a.Resources))
	}
	if pending != "" {
		fmt.Println("       " + pending)
	}
	if len(errs) > 0 {
		return fmt.Errorf("limits saved; Docker could not apply them live (they apply at the next deploy): %w", errors.Join(errs...))
	}
	return nil
}

// describeResources says what was set in the units the user typed
// (containers.Resources.String is raw numbers, for error messages).
func describeResources(r containers.Resources) string {
	var parts []string
	if r.Memory != 0 {
		parts = append(parts, "memory "+size.Size(r.Memory).String())
	}
	switch {
	case r.MemorySwap < 0:
		parts = append(parts, "memory-swap unlimited")
	case r.MemorySwap > 0:
		parts = append(parts, "memory-swap "+size.Size(r.MemorySwap).String())
	}
	if r.NanoCPUs != 0 {
		parts = append(parts, "cpus "+strconv.FormatFloat(float64(r.NanoCPUs)/1e9, 'f', -1, 64))
	}
	if r.BlkioWeight != 0 {
		parts = append(parts, fmt.Sprintf("blkio-weight %d", r.BlkioWeight))
	}
	return strings.Join(parts, ", ")
}

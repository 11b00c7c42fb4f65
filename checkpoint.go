package runckit

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
)

// CheckpointOptions say how runc and CRIU checkpoint a container.
type CheckpointOptions struct {
	// ImagePath is the directory the CRIU image is written to; required.
	ImagePath string
	// WorkPath is CRIU's working directory (logs); defaults to ImagePath.
	WorkPath string
	// LeaveRunning keeps the container running after the checkpoint;
	// otherwise its processes exit, and their exits are published as usual.
	LeaveRunning bool
	// TCPEstablished checkpoints open TCP connections.
	TCPEstablished bool
	// ExternalUnixSockets checkpoints unix sockets connected outside.
	ExternalUnixSockets bool
	// Terminal checkpoints a container with a terminal (CRIU's shell-job).
	Terminal bool
	// FileLocks checkpoints held file locks.
	FileLocks bool
	// EmptyNamespaces are namespaces (e.g. "network") recreated empty on
	// restore rather than saved.
	EmptyNamespaces []string
}

func (o CheckpointOptions) criuOptions() runc.CheckpointOpts {
	return runc.CheckpointOpts{
		ImagePath:                o.ImagePath,
		WorkDir:                  o.WorkPath,
		AllowOpenTCP:             o.TCPEstablished,
		AllowExternalUnixSockets: o.ExternalUnixSockets,
		AllowTerminal:            o.Terminal,
		FileLocks:                o.FileLocks,
		EmptyNamespaces:          o.EmptyNamespaces,
	}
}

// RestoreOptions say how Restore brings a container back from an image;
// the fields mean what they mean in CheckpointOptions.
type RestoreOptions struct {
	ImagePath           string
	WorkPath            string
	TCPEstablished      bool
	ExternalUnixSockets bool
	Terminal            bool
	FileLocks           bool
	EmptyNamespaces     []string
}

func (o RestoreOptions) criuOptions() runc.CheckpointOpts {
	return CheckpointOptions{
		ImagePath: o.ImagePath, WorkPath: o.WorkPath, TCPEstablished: o.TCPEstablished,
		ExternalUnixSockets: o.ExternalUnixSockets, Terminal: o.Terminal, FileLocks: o.FileLocks,
		EmptyNamespaces: o.EmptyNamespaces,
	}.criuOptions()
}

// Checkpoint saves the running container's processes to an image with runc
// checkpoint (CRIU).
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc checkpoint runs, runc and CRIU are killed and, if that left
// the container frozen, it is thawed; Checkpoint returns an error wrapping
// ctx.Err(). What CRIU wrote to ImagePath so far (the caller's directory)
// is left as it is and is not a usable image.
func (c *Container) Checkpoint(ctx context.Context, o CheckpointOptions) error {
	if o.ImagePath == "" {
		return fmt.Errorf("runckit: checkpoint container %q: no image path: %w", c.id, errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	err := c.checkLocked(opCheckpoint)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.ImagePath, 0o700); err != nil {
		return fmt.Errorf("runckit: checkpoint container %q: %w", c.id, err)
	}
	opts := o.criuOptions()
	var actions []runc.CheckpointAction
	if o.LeaveRunning {
		actions = append(actions, runc.LeaveRunning)
	}
	return c.runCheckpoint(ctx, &opts, actions)
}

// Restore creates container id from bundleDir with its processes restored
// from a checkpoint image (runc restore). It takes the options NewContainer
// takes; the container comes back running, so its stream starts with create
// and start.
//
// Context: as for NewContainer; when ctx ends during runc restore, CRIU and
// the restored processes are killed too.
func Restore(ctx context.Context, id, bundleDir string, ro RestoreOptions, opts ...Option) (*Container, error) {
	if ro.ImagePath == "" {
		return nil, fmt.Errorf("runckit: restore container %q: no image path: %w", id, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(ro.ImagePath); err != nil {
		return nil, fmt.Errorf("runckit: restore container %q: checkpoint image %s: %v: %w", id, ro.ImagePath, err, errdefs.ErrNotFound)
	}
	return newContainer(ctx, id, bundleDir, &ro, opts)
}

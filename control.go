package runckit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// freezeState is where a container is between running and paused. The
// transitional states stand for a runc pause or resume under way: a second
// pause or resume meanwhile is refused rather than queued behind a lock.
type freezeState int

const (
	thawed freezeState = iota
	freezing
	frozen
	thawing
)

func (f freezeState) String() string {
	return [...]string{"running", "pausing", "paused", "resuming"}[f]
}

// Pause freezes every process of the container with runc pause and
// publishes a pause event. Execs can not start while it is paused.
//
// The cgroup freezer does it: v1's freezer.state, v2's cgroup.freeze. A
// SIGKILL still ends frozen processes on cgroup v2 (and on v1 with recent
// kernels): init's exit is then published while paused, the container is
// stopped, and Resume is refused. Older v1 freezers hold it until Resume.
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc pause runs, the freeze is undone (runc resume) so that no
// half-frozen cgroup is left, and Pause returns an error wrapping
// ctx.Err(); the container is running again, unless the thaw failed, in
// which case it is reported paused, as runc's state says.
func (c *Container) Pause(ctx context.Context) error {
	return c.changeFreeze(ctx, opPause, "pause", thawed, freezing, frozen, EventPause, c.runtime.Pause)
}

// Resume thaws a paused container with runc resume and publishes a resume
// event.
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc resume runs, Resume settles from runc's state before it
// returns an error wrapping ctx.Err(): still paused, or running (resume
// event published; the error says it resumed anyway).
func (c *Container) Resume(ctx context.Context) error {
	return c.changeFreeze(ctx, opResume, "resume", frozen, thawing, thawed, EventResume, c.runtime.Resume)
}

func (c *Container) changeFreeze(ctx context.Context, op operation, step string, from, during, to freezeState, kind EventKind,
	run func(context.Context, string) error) error {
	c.mu.Lock()
	if err := c.checkLocked(op); err != nil {
		c.mu.Unlock()
		return err
	}
	c.freeze = during
	c.mu.Unlock()

	settled, err := c.runFreeze(ctx, step, from, to, run)

	defer c.saveRecord() // after the unlock: the record keeps the last event's Seq
	c.mu.Lock()
	defer c.mu.Unlock()
	c.freeze = settled
	if settled == to {
		c.publishLocked(Event{Kind: kind, Pid: c.init.pid})
	}
	return err
}

// runcCPUQuotaMin is the smallest CFS quota runc accepts, in microseconds.
const runcCPUQuotaMin = 1000

// Update changes the container's resource limits with runc update.
// Limits that runc would refuse are refused first, with
// ErrInvalidArgument, and nothing is changed.
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc update runs, runc is killed and Update returns an error
// wrapping ctx.Err(): some of the limits may have been applied and others
// not; call Update again to be sure of them.
func (c *Container) Update(ctx context.Context, r *specs.LinuxResources) error {
	if err := validateResources(r); err != nil {
		return fmt.Errorf("runckit: update container %q: %w", c.id, err)
	}
	c.mu.Lock()
	err := c.checkLocked(opUpdate)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return canceledError(ctx, "update", c.id, "")
	}
	if err := c.runtime.Update(ctx, c.id, r); err != nil {
		return newRuntimeError(ctx, "update", c.id, "", "", err)
	}
	return nil
}

func validateResources(r *specs.LinuxResources) error {
	if r == nil {
		return fmt.Errorf("no resources given: %w", errdefs.ErrInvalidArgument)
	}
	invalid := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if m := r.Memory; m != nil {
		for name, v := range map[string]*int64{"memory limit": m.Limit, "memory reservation": m.Reservation, "memory+swap limit": m.Swap} {
			if v != nil && *v < -1 {
				return invalid("%s %d is negative (-1 means unlimited)", name, *v)
			}
		}
		if m.Limit != nil && m.Swap != nil && *m.Limit > 0 && *m.Swap > 0 && *m.Swap < *m.Limit {
			return invalid("memory+swap limit %d is below the memory limit %d", *m.Swap, *m.Limit)
		}
	}
	if cpu := r.CPU; cpu != nil {
		if cpu.Quota != nil && *cpu.Quota != -1 && *cpu.Quota < runcCPUQuotaMin {
			return invalid("CPU quota %dµs is below runc's minimum of %dµs (-1 means unlimited)", *cpu.Quota, runcCPUQuotaMin)
		}
		if cpu.Period != nil && *cpu.Period != 0 && (*cpu.Period < 1000 || *cpu.Period > 1000000) {
			return invalid("CPU period %dµs is outside 1000..1000000", *cpu.Period)
		}
		if cpu.Shares != nil && *cpu.Shares != 0 && *cpu.Shares < 2 {
			return invalid("CPU shares %d is below 2", *cpu.Shares)
		}
	}
	if p := r.Pids; p != nil && p.Limit != nil && *p.Limit < -1 {
		return invalid("pids limit %d is negative (-1 means unlimited)", *p.Limit)
	}
	return nil
}

// ProcessInfo is one process of a container, as Pids lists them.
type ProcessInfo struct {
	Pid int
	// ExecID names the exec process this is, "" for init and for processes
	// those started.
	ExecID string
}

// Pids lists the container's processes with runc ps, tagging each exec's
// process with its exec ID.
//
// Context: if ctx ends before or while runc ps runs, Pids returns an error
// wrapping ctx.Err(); runc ps changes nothing, so there is nothing to undo.
func (c *Container) Pids(ctx context.Context) ([]ProcessInfo, error) {
	c.mu.Lock()
	err := c.checkLocked(opPids)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, canceledError(ctx, "ps", c.id, "")
	}
	pids, err := c.runtime.Ps(ctx, c.id)
	if err != nil {
		return nil, newRuntimeError(ctx, "ps", c.id, "", "", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	byPid := make(map[int]string, len(c.execs))
	for id, p := range c.execs {
		if p.state == stateRunning {
			byPid[p.pid] = id
		}
	}
	out := make([]ProcessInfo, len(pids))
	for i, pid := range pids {
		out[i] = ProcessInfo{Pid: pid, ExecID: byPid[pid]}
	}
	return out, nil
}

// StopSignalAnnotation names the signal Stop sends first, as in OCI image
// configs; the default is SIGTERM.
const StopSignalAnnotation = "org.opencontainers.image.stopSignal"

// Stop sends the container's stop signal (StopSignalAnnotation in its spec,
// or SIGTERM) to init, waits up to grace for it to exit, then kills every
// process with SIGKILL. It returns init's exit status. A paused container
// is resumed first, so that its processes can act on the signal; when init had
// exited, or was exiting, before the signal, Stop returns that exit.
//
// Context: ctx bounds the whole of it; when it ends, Stop returns an error
// wrapping ctx.Err() as Kill and Wait do, and the container may or may not
// have been signalled (see Kill).
func (c *Container) Stop(ctx context.Context, grace time.Duration) (ExitStatus, error) {
	c.mu.Lock()
	err := c.checkLocked(opStop)
	state := c.containerStateLocked()
	c.mu.Unlock()
	switch {
	case err != nil:
		return ExitStatus{}, err
	case state == ctrStopped || state == ctrExiting:
		return c.Wait(ctx)
	case state == ctrPaused:
		if err := c.Resume(ctx); err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return ExitStatus{}, fmt.Errorf("runckit: stop container %q: resume it first: %w", c.id, err)
		}
	}
	// "not running" (ErrFailedPrecondition) means init has exited or is
	// exiting: its exit is on its way, and is what Stop returns.
	if err := c.Kill(ctx, c.stopSignal); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return ExitStatus{}, err
	}
	graceCtx, cancel := context.WithTimeout(ctx, grace)
	st, err := c.Wait(graceCtx)
	cancel()
	if err == nil || ctx.Err() != nil {
		return st, err
	}
	if err := c.Kill(ctx, syscall.SIGKILL, KillAll()); err != nil && !errdefs.IsNotFound(err) {
		// "not running": init exited between the grace period and the kill.
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return ExitStatus{}, err
		}
	}
	return c.Wait(ctx)
}

// parseStopSignal reads the stop signal annotation: a name such as
// "SIGQUIT" or "QUIT", or a number.
func parseStopSignal(spec *specs.Spec) (syscall.Signal, error) {
	v := spec.Annotations[StopSignalAnnotation]
	if v == "" {
		return syscall.SIGTERM, nil
	}
	name := strings.ToUpper(v)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	var n int
	if _, err := fmt.Sscanf(v, "%d", &n); err == nil && validateSignal(syscall.Signal(n)) == nil {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("runckit: stop signal annotation %q is not a signal: %w", v, errdefs.ErrInvalidArgument)
}

package runckit

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/internal/phase"
)

// processState is where a process is in its life; lifecycle.go holds the
// moves and which operation may run in which state.
type processState int

const (
	stateCreated  processState = iota // init made by runc create, or an exec reserved by Exec
	stateStarting                     // runc start or runc exec is running
	stateRunning                      // the process runs; its exit is watched
	stateExited                       // reaped; status is final
	stateDeleted                      // removed from its container
	numProcessStates
)

func (s processState) String() string {
	switch s {
	case stateCreated:
		return "created"
	case stateStarting:
		return "starting"
	case stateRunning:
		return "running"
	case stateExited:
		return "exited"
	case stateDeleted:
		return "deleted"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Status is a process's or container's state as callers see it.
type Status string

// The statuses a process or container can report.
const (
	StatusCreated Status = "created"
	StatusRunning Status = "running"
	StatusPaused  Status = "paused"
	StatusStopped Status = "stopped"
	StatusDeleted Status = "deleted"
)

// Process is a container's init process or one of its exec processes.
// Its methods are safe for concurrent use.
type Process struct {
	c    *Container
	id   string         // "" for init
	spec *specs.Process // exec only
	// stdio is the caller's streams; io is built from it at each start.
	stdio Stdio

	// Guarded by c.mu. The container's lock guards its processes because
	// every ordering decision (exec exits before init's) spans both.
	state     processState
	pid       int
	pidfd     *pidfdHandle // for signals; closed when the exit is handled
	io        *processIO
	status    ExitStatus
	startTime uint64      // clock ticks since boot, for the record (WithStateDir)
	heldExit  *ExitStatus // init's exit seen while runc start ran: published after the start event
	sigkilled bool        // runckit sent it SIGKILL: its exit needs no OOM kill to explain it

	// done is closed once the exit event is published and output drained;
	// status and waitErr are final then.
	done chan struct{}
	// startFailed is made by each exec start attempt and closed if runc
	// fails, so that a Wait begun during the attempt does not wait for an
	// exit that will never come. Guarded by c.mu.
	startFailed chan struct{}
	// leftCreated is closed when the exec leaves the created state (a
	// start begins, or it is deleted) and made anew when a failed start
	// returns it there: a Wait on a created exec blocks on it. Guarded by
	// c.mu.
	leftCreated chan struct{}
	waitErr     error
}

func newProcess(c *Container, id string, spec *specs.Process, stdio Stdio) *Process {
	return &Process{c: c, id: id, spec: spec, stdio: stdio, done: make(chan struct{}), leftCreated: make(chan struct{})}
}

// setStateLocked moves p to st, waking a Wait that blocks while it is
// created. c.mu is held.
func (p *Process) setStateLocked(st processState) {
	if p.state == stateCreated && st != stateCreated {
		close(p.leftCreated)
	} else if p.state != stateCreated && st == stateCreated {
		p.leftCreated = make(chan struct{})
	}
	p.state = st
}

// ID is the exec ID, or "" for the init process.
func (p *Process) ID() string { return p.id }

// Pid is the process's host pid, 0 before it has started.
func (p *Process) Pid() int {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.pid
}

// Status reports the process's state. Init reports running (or paused)
// after it died while its exit is held back for execs (DESIGN.md rule 2:
// execs' exits first), and stopped once its exit event is published: a
// caller who sees stopped can Wait for the exit without blocking.
func (p *Process) Status() Status {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	switch p.state {
	case stateCreated, stateStarting:
		return StatusCreated
	case stateRunning:
		if p.c.freeze == frozen || p.c.freeze == thawing {
			return StatusPaused
		}
		return StatusRunning
	case stateExited:
		if p == p.c.init && p.c.containerStateLocked() == ctrExiting {
			// Init has died but its exit is held back for execs still
			// starting or running: until its exit event, it is running to
			// callers (as to containerd's shim), so that a caller who sees
			// stopped can Wait for the exit at once.
			if p.c.freeze == frozen || p.c.freeze == thawing {
				return StatusPaused
			}
			return StatusRunning
		}
		return StatusStopped
	}
	return StatusDeleted
}

func (p *Process) name() string {
	if p.id == "" {
		return fmt.Sprintf("container %q init", p.c.id)
	}
	return fmt.Sprintf("container %q exec %q", p.c.id, p.id)
}

// Start runs the process. For init it is Container.Start; for an exec it
// runs runc exec. The exec's start event is published before its exit event,
// however quickly it exits.
//
// Context (exec): if ctx is already done, nothing is run or changed. If it
// ends while runc exec runs, runc and its helpers are killed, and so is the
// exec's process if runc got as far as starting it; Start returns an error
// wrapping ctx.Err() with no exec-started event, the exec is created again
// and may be started again under the same ID. A concurrent start of another
// exec of the container is never touched (see execStarts in cancel.go).
func (p *Process) Start(ctx context.Context) error {
	if p.id == "" {
		return p.c.Start(ctx)
	}
	return p.c.startExec(ctx, p)
}

// Wait waits for the process to exit and its output to be copied, and
// returns its exit status. For init, that is after every exec's exit. If the
// output is still held open when the drain timeout expires, Wait returns the
// status with ErrDrainTimeout.
//
// An exec may be waited for before it is started, as containerd's client
// does: Wait blocks until it is started and exits, or until a start attempt
// fails (ErrFailedPrecondition: the exec is created again and may be
// started again), or until it or its container is deleted (ErrNotFound).
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	var startFailed chan struct{}
	for p.id != "" {
		p.c.mu.Lock()
		err := p.checkProcessLocked(opWait, pWait)
		created, leftCreated := p.state == stateCreated, p.leftCreated
		startFailed = p.startFailed
		p.c.mu.Unlock()
		if err != nil {
			return ExitStatus{}, err
		}
		if !created {
			break
		}
		select {
		case <-leftCreated:
		case <-ctx.Done():
			return ExitStatus{}, fmt.Errorf("runckit: wait for %s: %w", p.name(), ctx.Err())
		}
	}
	select {
	case <-p.done:
		return p.status, p.waitErr
	case <-startFailed: // nil, and never ready, for init
		return ExitStatus{}, fmt.Errorf("runckit: wait for %s: its start failed: %w", p.name(), errdefs.ErrFailedPrecondition)
	case <-ctx.Done():
		return ExitStatus{}, fmt.Errorf("runckit: wait for %s: %w", p.name(), ctx.Err())
	}
}

// Kill sends sig to the process. An exec is signalled through its pidfd, so
// the signal can never reach a process that reused its pid.
func (p *Process) Kill(ctx context.Context, sig syscall.Signal) error {
	if p.id == "" {
		return p.c.Kill(ctx, sig)
	}
	if err := validateSignal(sig); err != nil {
		return err
	}
	p.c.mu.Lock()
	if err := p.checkProcessLocked(opExecProcess, pKill); err != nil {
		p.c.mu.Unlock()
		return err
	}
	h := p.pidfd
	if sig == syscall.SIGKILL {
		p.sigkilled = true
	}
	p.c.mu.Unlock()
	// Outside the lock: a SIGKILL wakes its target, and a sender preempted
	// there would hold up this container's exits. The handle keeps the
	// pidfd open for the call, and it names this process only.
	if err := h.signal(sig); err != nil {
		if err == syscall.ESRCH {
			return nil // exited, not yet reaped: the signal is moot
		}
		return fmt.Errorf("runckit: kill %s with %v: %w", p.name(), sig, err)
	}
	return nil
}

// CloseStdin closes the process's stdin, so a reader in it sees EOF; with a
// terminal it types the terminal's EOF character. It fails with
// ErrFailedPrecondition when runckit feeds no stdin (see Stdio).
func (p *Process) CloseStdin() error {
	p.c.mu.Lock()
	pio := p.io
	p.c.mu.Unlock()
	if pio == nil {
		return fmt.Errorf("runckit: close stdin of %s: not started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	if err := pio.closeStdin(); err != nil {
		return fmt.Errorf("runckit: close stdin of %s: %w", p.name(), err)
	}
	return nil
}

// Resize sets the size of the process's terminal.
func (p *Process) Resize(width, height uint16) error {
	p.c.mu.Lock()
	pio := p.io
	p.c.mu.Unlock()
	if pio == nil {
		return fmt.Errorf("runckit: resize %s: not started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
	return pio.resize(width, height)
}

// Delete removes an exited exec from its container, freeing its ID. An exec
// that was reserved but never started (or whose start failed) may be
// deleted too: nothing runs, so nothing is published. A starting or running
// exec is refused with ErrFailedPrecondition. For init it is
// Container.Delete.
func (p *Process) Delete(ctx context.Context) error {
	if p.id == "" {
		return p.c.Delete(ctx)
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := p.checkProcessLocked(opExecProcess, pDelete); err != nil {
		return err
	}
	if p.state == stateExited {
		// The exit is published, but Wait may still be draining output.
		select {
		case <-p.done:
		default:
			return fmt.Errorf("runckit: delete %s: output still draining: %w", p.name(), errdefs.ErrFailedPrecondition)
		}
	}
	p.setStateLocked(stateDeleted)
	delete(c.execs, p.id)
	return nil
}

// onExit is the ExitWatcher callback for the process: the events its exit
// publishes go to the sink from the queue's own goroutine.
func (p *Process) onExit(st ExitStatus) { p.exited(st, false) }

// onExitInline is onExit for runckit's own watcher, which guards its
// callbacks against stalls: when the container's queue is idle, the exit's
// events are handed to the sink on the calling goroutine, with no goroutine
// to start and schedule between the reap and the sink.
func (p *Process) onExitInline(st ExitStatus) { p.exited(st, true) }

func (p *Process) exited(st ExitStatus, inline bool) {
	defer phase.End(phase.Exit, phase.Begin())
	c := p.c
	c.mu.Lock()
	if p.exitAccountedLocked() {
		c.mu.Unlock()
		return
	}
	if p == c.init && c.sharedPID {
		// Rule 7: init's death ends the processes left in its shared PID
		// namespace, before its exit is published. killCgroup reads
		// cgroup files and signals each process, so not under c.mu.
		c.mu.Unlock()
		killCgroup(c.killScope)
		c.mu.Lock()
		if p.exitAccountedLocked() {
			c.mu.Unlock()
			return
		}
	}
	if p.state == stateStarting {
		// runc start has not returned: the start event is not out yet.
		p.heldExit = &st
		c.mu.Unlock()
		return
	}
	if inline {
		c.events.hold()
	}
	c.handleExitLocked(p, st)
	c.mu.Unlock()
	if inline {
		c.events.release() // the sink runs here, after c.mu is let go
	}
	c.saveRecord()
}

// exitAccountedLocked reports whether p's exit has been handled already
// (an adoption that found the pid reused reports it too): an exit is never
// delivered twice.
func (p *Process) exitAccountedLocked() bool {
	return p.state == stateExited || p.state == stateDeleted
}

// finish waits for the process's output, then releases Wait. It runs in its
// own goroutine once the exit event has been published.
func (p *Process) finish(pio *processIO) {
	var err error
	if pio != nil {
		err = pio.wait(p.c.cfg.drainTimeout)
	}
	p.waitErr = err
	close(p.done)
}

// startExec runs runc exec for p. The container lock is held only to check
// and record state, never across runc.
func (c *Container) startExec(ctx context.Context, p *Process) error {
	c.mu.Lock()
	if err := p.checkProcessLocked(opExecStart, pStart); err != nil {
		c.mu.Unlock()
		return err
	}
	p.setStateLocked(stateStarting)
	p.startFailed = make(chan struct{})
	c.activeExecs++
	c.mu.Unlock()

	// Until the exec's pid is watched: hold the zombies of the namespace it
	// runs in, which may be another container's (a pod's) or the host's.
	release := sync.OnceFunc(holdReaping(c.execNS))
	defer release()
	c.starts.begin()
	pid, pio, err := c.runExec(ctx, p)
	if err != nil {
		c.starts.end()
		// No pid to watch: let orphans be reaped again, for a dying init
		// waits for the zombies of its PID namespace (runc's helper for this
		// exec among them). Outside the lock: it may wait a moment.
		release()
		initGone := c.initGone(execRaceWait(err))
		c.mu.Lock()
		p.setStateLocked(stateCreated)
		close(p.startFailed)
		c.execDoneLocked()
		// The exec could not start because init is gone: that is the
		// caller's precondition failing, whatever runc said about it.
		switch {
		case initGone || c.initExited:
			err = fmt.Errorf("runckit: start %s: init exited meanwhile: %w", p.name(), withKind(err, errdefs.ErrFailedPrecondition))
		case c.deleting || c.deleted:
			err = fmt.Errorf("runckit: start %s: container deleted meanwhile: %w", p.name(), withKind(err, errdefs.ErrFailedPrecondition))
		}
		c.mu.Unlock()
		c.saveRecord() // init's exit may have been waiting for this exec
		return err
	}
	awaitExecve(pid, func() bool { return isZombie(pid) }) // unreaped: the pid is its own
	pidfd, perr := openPidfd(pid)

	c.mu.Lock()
	p.pid, p.pidfd, p.io = pid, pidfd, pio
	p.state = stateRunning
	c.publishLocked(Event{Kind: EventExecStarted, ExecID: p.id, Pid: pid})
	if c.initExited && c.sharedPID && pidfd != nil {
		// Init died while runc exec ran, and in a shared PID namespace
		// nothing else will end this process: init's exit waits for it.
		pidfd.signal(syscall.SIGKILL)
	}
	c.mu.Unlock()
	c.starts.end() // the pid is tracked: no stray sweep may take it now

	recordStartTime(p)
	c.saveRecord()
	if perr != nil {
		// Can not happen short of fd exhaustion: the process is our unreaped
		// child, so its pid is still its own. Kill and reap it here so that
		// its exit is still accounted for.
		syscall.Kill(pid, syscall.SIGKILL)
		p.onExit(reapPid(pid))
		return fmt.Errorf("runckit: start %s: %w", p.name(), perr)
	}
	if err := watchProcess(c.watcher, p, pid); err != nil {
		pidfd.signal(syscall.SIGKILL)
		p.onExit(reapPid(pid))
		return fmt.Errorf("runckit: start %s: watch exit: %w", p.name(), err)
	}
	return nil
}

// execRaceWait is how long a failed runc exec waits for init to be seen
// dead: runc's words when init dies under it (setns fails, the namespace
// files or init's pid are gone, the container is stopped) come a moment
// before init's pidfd says it has exited. Other failures only look.
func execRaceWait(err error) time.Duration {
	m := strings.ToLower(errString(err))
	for _, w := range []string{"setns", "namespace path", "/ns/", "no such process", "not running", "stopped"} {
		if strings.Contains(m, w) {
			return 500 * time.Millisecond
		}
	}
	return 0
}

// initGone reports whether init has exited or is exiting, looking for up
// to wait: its exit has been seen, its pidfd says it has exited, or it is
// alive but has let go of its namespaces, as a dying init does first (it
// may stay so a while, until the other processes of its PID namespace are
// reaped). The pidfd is duplicated under the lock, so that the exit handler
// can not close it, and its number be reused, while this polls.
func (c *Container) initGone(wait time.Duration) bool {
	c.mu.Lock()
	if c.initExited {
		c.mu.Unlock()
		return true
	}
	fd := -1
	if h := c.init.pidfd; h.open() {
		fd, _ = unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	}
	ipcNS := "/proc/" + strconv.Itoa(c.init.pid) + "/ns/ipc"
	c.mu.Unlock()
	if fd < 0 {
		return false
	}
	defer unix.Close(fd)
	exited := func(timeout time.Duration) (bool, error) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(timeout/time.Millisecond))
		return err == nil && n > 0, err
	}
	for deadline := time.Now().Add(wait); ; {
		_, nsErr := os.Readlink(ipcNS)
		done, err := exited(0)
		if done {
			return true
		}
		if err == nil && nsErr != nil {
			// init was alive when its namespaces were found gone: the pid
			// was still its own.
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		if done, _ := exited(min(left, 10*time.Millisecond)); done {
			return true
		}
	}
}

// runExec invokes runc exec --detach and returns the new process's pid with
// its IO started.
func (c *Container) runExec(ctx context.Context, p *Process) (int, *processIO, error) {
	if ctx.Err() != nil {
		return 0, nil, canceledError(ctx, "exec", c.id, p.id)
	}
	pio, err := newProcessIO(ctx, p.stdio, c.id, c.cfg.runtimeOpts.IOUid, c.cfg.runtimeOpts.IOGid)
	if err != nil {
		return 0, nil, err
	}
	pidFile := c.execPidFile(p.id)
	logFile := c.stateFile("exec-" + p.id + ".log.json")
	removePidFiles(pidFile) // a stale pid must never be taken for this exec's
	defer removePidFiles(pidFile)
	defer os.Remove(logFile)
	spec := *p.spec
	spec.Terminal = p.stdio.Terminal
	since := nowTicks()
	runCtx, g := guardRunc(ctx, c.cfg.runtimeRoot, "exec", pidFile, c.id)
	runcPid := make(chan int, 1)
	g.started(runcPid)
	err = c.runtime.Exec(runCtx, c.id, spec, &runc.ExecOpts{
		IO:            pio.runcIO(),
		PidFile:       pidFile,
		LogFile:       logFile,
		ConsoleSocket: pio.consoleSocket(),
		Detach:        true,
		Started:       runcPid,
	})
	if g.finish() {
		if err == nil {
			err = fmt.Errorf("killed as it finished: %w", context.Cause(ctx))
		}
		pio.abort()
		rerr := newRuntimeError(ctx, "exec", c.id, p.id, logFile, err)
		c.undoExec(ctx, g, pidFile, since)
		return 0, nil, rerr
	}
	if err != nil {
		pio.abort()
		rerr := newRuntimeError(ctx, "exec", c.id, p.id, logFile, err)
		// runc may have started the process before it failed (or was
		// killed): end it, or it would run untracked.
		reapStray(pidFile, true)
		return 0, nil, rerr
	}
	pid, err := readPidFile(pidFile)
	if err == nil {
		err = pio.started(ctx)
	}
	if err != nil {
		// runc started something we can not track: kill it by pid, which is
		// safe because the process is our unreaped child, then reap it.
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
			reapPid(pid)
		}
		pio.abort()
		return 0, nil, fmt.Errorf("runckit: start %s: %w", p.name(), err)
	}
	return pid, pio, nil
}

// execPidFile is where runc exec writes the pid of exec execID.
func (c *Container) execPidFile(execID string) string {
	return c.stateFile("exec-" + execID + ".pid")
}

func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", path, data)
	}
	return pid, nil
}

func validateSignal(sig syscall.Signal) error {
	if sig <= 0 || sig > 64 {
		return fmt.Errorf("runckit: signal %d out of range 1..64: %w", int(sig), errdefs.ErrInvalidArgument)
	}
	return nil
}

// reapStray ends a process that runc started but runckit will not track,
// named by a pid file runc wrote during a failed invocation. Such a process
// is an unreaped child of ours (runc has exited), so its pid is still its
// own: it is killed if kill is set, then reaped. A pid that is not our
// child is left alone.
func reapStray(pidFile string, kill bool) {
	pid := pidFromFiles(pidFile) // runc's temporary pid file too
	if pid <= 0 || !isChild(pid) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if kill {
		killAndReap(ctx, pid)
	} else {
		awaitReap(ctx, pid)
	}
}

// awaitExecve waits, briefly, until pid runs the user's program. runc exec
// and runc start can return while the process is still runc:[2:INIT],
// which does not act on most signals yet: a Kill right after Start would be
// lost. exited tells whether the process is gone; what was read of pid
// counts only if exited still says no after the read.
func awaitExecve(pid int, exited func() bool) {
	comm := "/proc/" + strconv.Itoa(pid) + "/comm"
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		name, err := os.ReadFile(comm)
		// Asked after the read: the name read was the process's own.
		if exited() || err != nil || !strings.HasPrefix(string(name), "runc:[") {
			return
		}
		time.Sleep(200 * time.Microsecond)
	}
}

package runckit

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/internal/phase"
)

// Files runckit keeps in the bundle directory while the container exists.
// The options file is the bundle's claim (see claimBundle); the others name
// the container, so that a file left by another container can never be
// taken for this one's.
const optionsFile = "runckit.json" // RuntimeOptions, mode 0600

// initPidFile is the file runc create writes init's pid to.
func initPidFile(id string) string { return "init-" + id + ".pid" }

// createLog is runc's JSON log for create and the container's later steps.
func createLog(id string) string { return "runckit-log-" + id + ".json" }

// Container is an OCI container created with runc. Its methods are safe for
// concurrent use; operations on different processes run in parallel.
type Container struct {
	id      string
	bundle  string
	cfg     containerConfig
	runtime *runc.Runc
	watcher ExitWatcher
	events  *eventQueue
	// sharedPID is true when init does not own its PID namespace (the
	// host's, or one joined by path), so that init's exit does not end the
	// other processes: runckit kills them (DESIGN.md rule 7).
	sharedPID bool
	// pidNS is the inode of init's PID namespace when it is the
	// container's own, else 0. Set before the container is shared.
	pidNS uint64
	// execNS is the inode of init's PID namespace whoever owns it (the
	// container, another container it joined, the host), 0 if unknown:
	// where its execs' processes live, for the orphan reaper's holds. Set
	// before the container is shared.
	execNS uint64
	// killScope is the container's cgroup when it shares a PID namespace:
	// what is left in it is killed when init exits (killCgroup). Set before
	// the container is shared.
	killScope  []cgroupDir
	stopSignal syscall.Signal // what Stop sends first
	mounts     []string       // rootfs mount targets, for the record
	// undo reverses what NewContainer did outside runc (mounts, files).
	undo []func()
	// procTemplate is the spec's process, for ProcessSpec; nil for an
	// adopted container, which reads it from the bundle instead.
	procTemplate *specs.Process

	init *Process

	// mu guards the fields below and the state fields of every Process of
	// this container. It is never held across a runtime invocation.
	mu          sync.Mutex
	execs       map[string]*Process
	activeExecs int  // execs starting or running: init's exit waits for them
	initExited  bool // init has been reaped (its event may be deferred)
	initPending bool // init's exit is held back until activeExecs reaches 0
	freeze      freezeState
	oom         *oomWatch // set before the container is shared; nil without a memory cgroup
	// rec writes the container's record when WithStateDir is set; its
	// snapshots are numbered by recordVersion. recordAsks counts calls to
	// saveRecord, each made after the change it must persist.
	rec           *recorder
	recordVersion uint64
	recordAsks    uint64
	deleting      bool
	deleted       bool
	// execvePending is set when runc start released init, which may not
	// have left runc init yet; a signal to init waits for it first
	// (settleExecve), so Start itself does not.
	execvePending bool

	cgroups []cgroupDir // the container's cgroup in each hierarchy (cancel.go)
	starts  execStarts  // exec starts in flight, for stray clean-up (cancel.go)
}

// registry reserves container IDs per runtime root, so two NewContainer
// calls with one ID can not both get as far as runc. Roots are normalised
// (normalizeRoot) before they get here, so that every spelling of one
// directory is one key.
var registry = struct {
	sync.Mutex
	ids map[string]struct{}
}{ids: make(map[string]struct{})}

func registryKey(root, id string) string { return root + "\x00" + id }

func reserveID(root, id string) error {
	key := registryKey(root, id)
	registry.Lock()
	defer registry.Unlock()
	if _, ok := registry.ids[key]; ok {
		return fmt.Errorf("runckit: container %q already exists in %s: %w", id, root, errdefs.ErrAlreadyExists)
	}
	if _, err := os.Stat(filepath.Join(root, id)); err == nil {
		return fmt.Errorf("runckit: container %q already exists in runtime root %s: %w", id, root, errdefs.ErrAlreadyExists)
	}
	registry.ids[key] = struct{}{}
	return nil
}

// claimID reserves an ID for a container that runc already has (adoption):
// only a second claim within this program is a conflict.
func claimID(root, id string) error {
	key := registryKey(root, id)
	registry.Lock()
	defer registry.Unlock()
	if _, ok := registry.ids[key]; ok {
		return fmt.Errorf("runckit: container %q is already loaded in this program: %w", id, errdefs.ErrAlreadyExists)
	}
	registry.ids[key] = struct{}{}
	return nil
}

func releaseID(root, id string) {
	registry.Lock()
	delete(registry.ids, registryKey(root, id))
	registry.Unlock()
}

// normalizeRoot makes a runtime root absolute and clean, with the symlinks
// of its existing part resolved: runc's state for a container lives in one
// directory however the root is spelled ("/r", "/r/", "r", a link to /r),
// and the registry must see one key for it.
func normalizeRoot(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("runckit: runtime root %q: %v: %w", dir, err, errdefs.ErrInvalidArgument)
	}
	// Resolve the longest prefix that exists; the rest (a root runc has not
	// made yet) is kept as written, already clean.
	rest := ""
	for p := abs; ; {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// NewContainer creates container id from the OCI bundle in bundleDir with
// runc create. When it returns, init exists but does not run the user's
// program until Start. On failure nothing is left behind: no mount, file,
// fd, goroutine (but the program-wide one below) or runtime state.
//
// The first container (with the default or a ReapingExitWatcher) changes
// the program for the rest of its life, as a shim is changed:
//   - it becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so that init
//     and execs are re-parented to it when runc exits. So are orphans of
//     the program's other descendants: what an os/exec child leaves
//     running in the background (sh -c 'sleep 1 &') becomes the
//     program's child.
//   - SIGCHLD is delivered to a runckit channel too (signal.Notify), and a
//     goroutine that reaps orphans runs until the program exits.
//   - That goroutine reaps zombie children nobody can wait for: runc's
//     helpers, the orphans of runckit's containers and, unless
//     ReapProgramOrphans(false) is called, the orphans of the program's own
//     descendants. It never takes a child that a pidfd of the program names,
//     so os/exec and os.StartProcess children keep their exits exactly;
//     a child forked without them (syscall.ForkExec, cgo) may be taken.
//   - A ReapingExitWatcher also replaces go-runc's global Monitor.
//
// runckittest.IgnoreRunckitGoroutines tells goleak about the goroutine.
//
// Context: if ctx is already done, runc is not run. If it ends while runc
// create runs (or as it finishes), runc and its helpers are killed and
// everything they made is removed before NewContainer returns an error
// wrapping ctx.Err(): runtime state, init, every process and directory of
// the cgroups runc made for the container (cgroupfs driver; with the
// systemd driver runc delete --force is all the clean-up, see cancel.go),
// runc's pid files, and runckit's own files and mounts. The same ID and
// bundle can be used again at once.
func NewContainer(ctx context.Context, id, bundleDir string, opts ...Option) (*Container, error) {
	return newContainer(ctx, id, bundleDir, nil, opts)
}

// newContainer is NewContainer, or Restore when restore is set: then init
// comes back running from a checkpoint, and create and start are published
// together.
func newContainer(ctx context.Context, id, bundleDir string, restore *RestoreOptions, opts []Option) (_ *Container, retErr error) {
	t := phase.Begin()
	if err := validateID("container", id); err != nil {
		return nil, err
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := cfg.stdio.validate(); err != nil {
		return nil, err
	}
	bundle, err := checkBundle(bundleDir, cfg.spec == nil)
	if err != nil {
		return nil, err
	}
	runtimePath, err := exec.LookPath(cfg.runtime)
	if err != nil {
		return nil, fmt.Errorf("runckit: runtime %q not found (%v); install runc, e.g. \"apt-get install runc\", or name it with WithRuntime: %w",
			cfg.runtime, err, errdefs.ErrUnavailable)
	}
	watcher, err := cfg.exitWatcher()
	if err != nil {
		return nil, err
	}
	if err := reserveID(cfg.runtimeRoot, id); err != nil {
		return nil, err
	}
	phase.End(phase.Checks, t)

	c := makeContainer(id, bundle, runtimePath, cfg, watcher)
	defer func() {
		if retErr != nil {
			c.runUndo()
			releaseID(cfg.runtimeRoot, id)
		}
	}()
	if cfg.stateDir != "" {
		if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
			return nil, fmt.Errorf("runckit: state directory: %w", err)
		}
		c.rec = &recorder{path: recordPath(cfg.stateDir, cfg.runtimeRoot, id)}
		c.undo = append(c.undo, c.rec.remove)
	}
	t = phase.Begin()
	spec, err := c.prepareBundle()
	if err != nil {
		return nil, err
	}
	phase.End(phase.Bundle, t)
	c.sharedPID = sharesPIDNamespace(spec)
	c.procTemplate = spec.Process
	t = phase.Begin()
	c.cgroups = containerCgroups(spec, id, cfg.runtimeOpts.SystemdCgroup)
	phase.End(phase.Cgroups, t)
	if c.stopSignal, err = parseStopSignal(spec); err != nil {
		return nil, err
	}

	c.init = newProcess(c, "", nil, cfg.stdio)
	release := holdReaping(0) // until init's pid is watched: it is in a namespace not known yet
	defer release()
	step := "create"
	if restore != nil {
		step = "restore"
	}
	pid, pio, err := c.runCreate(ctx, restore)
	if err != nil {
		return nil, err
	}
	t = phase.Begin()
	pidfd, err := openPidfd(pid)
	phase.End(phase.Pidfd, t)
	if err != nil {
		c.forceDelete()
		reapPid(pid)
		pio.release()
		return nil, fmt.Errorf("runckit: %s container %q: %w", step, id, err)
	}
	c.init.pid, c.init.pidfd, c.init.io = pid, pidfd, pio
	if c.sharedPID {
		// init is our unreaped child: its pid is its own while read.
		c.killScope = c.cgroups
		if len(c.killScope) == 0 {
			c.killScope = processCgroups(pid)
		}
	}
	c.events = newEventQueue(cfg.sink)
	t = phase.Begin()
	oom := c.newOOMWatch(pid)
	phase.End(phase.OOMSetup, t)
	t = phase.Begin()
	if ino, err := pidNamespaceOf(pid); err == nil {
		c.execNS = ino
		if !c.sharedPID {
			c.pidNS = ino
			c.undo = append(c.undo, manageNamespaceInode(ino))
		}
	}
	phase.End(phase.Namespace, t)
	c.mu.Lock()
	c.oom = oom
	c.publishLocked(Event{Kind: EventCreate, Pid: pid})
	if restore != nil {
		// Before the watch: a restored init may exit at once.
		c.init.state = stateRunning
		c.publishLocked(Event{Kind: EventStart, Pid: pid})
	}
	c.mu.Unlock()
	t = phase.Begin()
	oom.start()
	phase.End(phase.OOMSetup, t)
	t = phase.Begin()
	recordStartTime(c.init)
	c.saveRecord()
	phase.End(phase.Records, t)
	t = phase.Begin()
	err = watchProcess(watcher, c.init, pid)
	phase.End(phase.Watch, t)
	if err != nil {
		// The create event is out; keep the stream whole: exit, then delete.
		c.forceDelete()
		c.init.onExit(reapPid(pid))
		c.oom.close()
		c.mu.Lock()
		c.deleted = true
		c.publishLocked(Event{Kind: EventDelete, Pid: pid, Status: c.init.status})
		c.events.close()
		c.mu.Unlock()
		return nil, fmt.Errorf("runckit: %s container %q: watch init: %w", step, id, err)
	}
	return c, nil
}

// makeContainer builds the Container that NewContainer, Restore and
// LoadContainer each go on to fill in: the one place its fields are set up.
func makeContainer(id, bundle, runtimePath string, cfg containerConfig, watcher ExitWatcher) *Container {
	return &Container{
		id:      id,
		bundle:  bundle,
		cfg:     cfg,
		watcher: watcher,
		execs:   make(map[string]*Process),
		runtime: &runc.Runc{
			Command:       runtimePath,
			Root:          cfg.runtimeRoot,
			Log:           filepath.Join(bundle, createLog(id)),
			LogFormat:     runc.JSON,
			SystemdCgroup: cfg.runtimeOpts.SystemdCgroup,
			Setpgid:       true, // a group per invocation: see cancel.go
		},
	}
}

// runCreate runs runc create (or runc restore --detach) and returns init's
// pid with its IO started. On failure, or when ctx ends before it is done,
// it leaves no runtime state, cgroup, helper process, pid file or open IO.
func (c *Container) runCreate(ctx context.Context, restore *RestoreOptions) (int, *processIO, error) {
	step := "create"
	if restore != nil {
		step = "restore"
	}
	if ctx.Err() != nil {
		return 0, nil, canceledError(ctx, step, c.id, "")
	}
	t := phase.Begin()
	pio, err := newProcessIO(ctx, c.cfg.stdio, c.id, c.cfg.runtimeOpts.IOUid, c.cfg.runtimeOpts.IOGid)
	if err != nil {
		return 0, nil, err
	}
	os.Remove(c.runtime.Log) // the log must hold this create's messages only
	pidFile := filepath.Join(c.bundle, initPidFile(c.id))
	removePidFiles(pidFile) // a stale pid must never be taken for this init's
	runCtx, g := guardRunc(ctx, c.cfg.runtimeRoot, step, pidFile, c.id)
	phase.End(phase.CreateIO, t)
	t = phase.Begin()
	if restore == nil {
		err = c.runtime.Create(runCtx, c.id, c.bundle, &runc.CreateOpts{
			IO:            pio.runcIO(),
			PidFile:       pidFile,
			ConsoleSocket: pio.consoleSocket(), // create always detaches
			NoPivot:       c.cfg.runtimeOpts.NoPivotRoot,
			NoNewKeyring:  c.cfg.runtimeOpts.NoNewKeyring,
		})
	} else {
		_, err = c.runtime.Restore(runCtx, c.id, c.bundle, &runc.RestoreOpts{
			CheckpointOpts: restore.criuOptions(),
			IO:             pio.runcIO(),
			Detach:         true,
			PidFile:        pidFile,
			NoSubreaper:    true, // init must be re-parented to us
			NoPivot:        c.cfg.runtimeOpts.NoPivotRoot,
			ConsoleSocket:  pio.consoleSocket(),
		})
	}
	phase.End(phase.RuncCreate, t)
	if g.finish() && err == nil {
		// runc finished as the context ended, and its helpers (init among
		// them, until it calls setsid) were killed with it: void.
		err = fmt.Errorf("runckit: %s container %q: killed as it finished: %w", step, c.id, context.Cause(ctx))
	}
	if err != nil {
		pio.abort()
		rerr := newRuntimeError(ctx, step, c.id, "", c.runtime.Log, err)
		// runc may leave a half-made container behind: state, cgroups,
		// helpers, init. But one that "already exists" is another's, made
		// since reserveID looked: its state and cgroups are not ours.
		if errdefs.IsAlreadyExists(rerr) {
			rctx, cancel := cleanupContext(ctx)
			g.reap(rctx)
			cancel()
			removePidFiles(pidFile)
		} else {
			c.undoCreate(ctx, g, c.cgroups, pidFile)
		}
		return 0, nil, rerr
	}
	t = phase.Begin()
	pid, err := readPidFile(pidFile)
	if err == nil {
		err = pio.started(ctx)
	}
	phase.End(phase.CreateAfter, t)
	if err != nil {
		pio.abort()
		c.undoCreate(ctx, g, c.cgroups, pidFile) // kills and reaps init too
		return 0, nil, fmt.Errorf("runckit: %s container %q: %w", step, c.id, err)
	}
	return pid, pio, nil
}

// forceDelete removes runc's state for the container, killing init, with a
// context of its own: it runs on cleanup paths whose context may be done.
func (c *Container) forceDelete() {
	if _, err := os.Stat(filepath.Join(c.cfg.runtimeRoot, c.id)); err != nil {
		return
	}
	c.runtime.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true})
}

// settleExecve waits, briefly, until init runs the user's program, if runc
// start released it and nobody has looked since: a signal sent while it is
// still runc:[2:INIT] would be lost (see awaitExecve). Waiting here rather
// than in Start keeps the look off every lifecycle that never signals. The
// pid is read through a duplicate of init's pidfd, taken under the lock,
// so that a reaped init's pid, reused, is never looked at.
func (c *Container) settleExecve() {
	c.mu.Lock()
	if !c.execvePending || c.initExited {
		c.mu.Unlock()
		return
	}
	pid, fd := c.init.pid, -1
	if h := c.init.pidfd; h.open() {
		fd, _ = unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	}
	c.mu.Unlock()
	if fd < 0 {
		return
	}
	t := phase.Begin()
	awaitExecve(pid, func() bool {
		// Exited (or the pidfd can not tell): its pid may be another's now.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err != nil || n > 0
	})
	phase.End(phase.AwaitExecve, t)
	unix.Close(fd)
	c.mu.Lock()
	c.execvePending = false
	c.mu.Unlock()
}

// ID returns the container's ID.
func (c *Container) ID() string { return c.id }

// Bundle returns the absolute path of the container's bundle.
func (c *Container) Bundle() string { return c.bundle }

// Init returns the container's init process.
func (c *Container) Init() *Process { return c.init }

// publishLocked queues e for the sink. Callers hold c.mu (or, in
// NewContainer, own c exclusively), which is what orders events.
func (c *Container) publishLocked(e Event) {
	e.ContainerID = c.id
	c.events.publish(e)
}

// Start starts the container's init process with runc start.
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc start runs, runc start is given half a second to finish
// (killing it while it releases init would kill init), then killed, and
// Start settles what happened from runc's state and init before it returns
// an error wrapping ctx.Err(): if init was released the container is
// running (start event published; the error says it started anyway);
// otherwise it is still created and Start may be called again, unless runc
// was killed at the very moment of release and init died of it (the error
// says init is stopped; its exit is published as usual).
func (c *Container) Start(ctx context.Context) error {
	c.mu.Lock()
	if err := c.checkLocked(opStart); err != nil {
		c.mu.Unlock()
		return err
	}
	c.init.state = stateStarting
	c.mu.Unlock()

	t := phase.Begin()
	started, err := c.runStart(ctx)
	phase.End(phase.RuncStart, t)

	defer c.saveRecord() // after the unlock below: a held exit may be handled
	c.mu.Lock()
	defer c.mu.Unlock()
	if !started {
		c.init.state = stateCreated
	} else {
		c.init.state = stateRunning
		c.execvePending = true
		c.publishLocked(Event{Kind: EventStart, Pid: c.init.pid})
	}
	if held := c.init.heldExit; held != nil {
		c.init.heldExit = nil
		c.handleExitLocked(c.init, *held)
	}
	return err
}

// Exec reserves an exec process with the given ID and spec; Start runs it.
// A duplicate ID is ErrAlreadyExists; a container whose init has exited
// takes no new execs (ErrFailedPrecondition), nor does a paused one.
//
// An exec may still be reserved once init has exited while init's exit is
// held back for other execs (not yet published); starting it fails with
// ErrFailedPrecondition.
//
// A created container, not yet started, takes execs too, as runc and
// containerd allow: the exec joins init's namespaces and cgroup while init
// still waits for Start, which is how a caller prepares a container (writes
// files, waits for a dependency) before its program runs. Its exit comes
// before init's like any exec's.
func (c *Container) Exec(ctx context.Context, execID string, spec *specs.Process, stdio Stdio) (*Process, error) {
	if err := validateID("exec", execID); err != nil {
		return nil, err
	}
	if spec == nil || len(spec.Args) == 0 {
		return nil, fmt.Errorf("runckit: exec %q in container %q: process spec has no args: %w", execID, c.id, errdefs.ErrInvalidArgument)
	}
	if spec.Cwd == "" {
		return nil, fmt.Errorf("runckit: exec %q in container %q: process spec has no cwd: %w", execID, c.id, errdefs.ErrInvalidArgument)
	}
	if err := stdio.validate(); err != nil {
		return nil, err
	}
	defer c.saveRecord() // after the unlock: the record keeps the last event's Seq
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked(opExec); err != nil {
		return nil, err
	}
	if _, ok := c.execs[execID]; ok {
		return nil, fmt.Errorf("runckit: exec %q in container %q already exists: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	specCopy := *spec
	p := newProcess(c, execID, &specCopy, stdio)
	c.execs[execID] = p
	c.publishLocked(Event{Kind: EventExecAdded, ExecID: execID})
	return p, nil
}

// Process returns the exec process with the given ID; "" returns init.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked(opState); err != nil {
		return nil, err
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("runckit: container %q has no exec %q: %w", c.id, execID, errdefs.ErrNotFound)
	}
	return p, nil
}

// Processes returns the container's exec processes, sorted by ID.
func (c *Container) Processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := make([]*Process, 0, len(c.execs))
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	return ps
}

// Kill sends sig to init with runc kill, or to every process of the
// container with KillAll.
//
// Context: if ctx is already done, no signal is sent. If it ends while runc
// kill runs, runc is killed and Kill returns an error wrapping ctx.Err():
// the signal may or may not have been delivered (with KillAll, to some of
// the processes only). Nothing else is left to undo.
func (c *Container) Kill(ctx context.Context, sig syscall.Signal, opts ...KillOption) error {
	if err := validateSignal(sig); err != nil {
		return err
	}
	var kc killConfig
	for _, o := range opts {
		o(&kc)
	}
	c.mu.Lock()
	err := c.checkLocked(opKill)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return canceledError(ctx, "kill", c.id, "")
	}
	c.settleExecve()
	if err := c.runtime.Kill(ctx, c.id, int(sig), &runc.KillOpts{All: kc.all}); err != nil {
		return newRuntimeError(ctx, "kill", c.id, "", "", err)
	}
	return nil
}

// Wait waits for init to exit, after every exec, and returns its status.
func (c *Container) Wait(ctx context.Context) (ExitStatus, error) {
	return c.init.Wait(ctx)
}

// ContainerState is a snapshot of a container.
type ContainerState struct {
	ID     string
	Bundle string
	Pid    int // init's host pid
	Status Status
	// Execs are the IDs of the container's exec processes.
	Execs []string
}

// State reports the container's state as runckit tracks it; it does not
// call the runtime.
func (c *Container) State(ctx context.Context) (ContainerState, error) {
	st := ContainerState{ID: c.id, Bundle: c.bundle, Status: c.init.Status()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked(opState); err != nil {
		return ContainerState{}, err
	}
	st.Pid = c.init.pid
	for id := range c.execs {
		st.Execs = append(st.Execs, id)
	}
	sort.Strings(st.Execs)
	return st, nil
}

// Delete removes the container with runc delete, unmounts its rootfs mounts
// and removes runckit's files from the bundle. A running container is
// refused unless DeleteForce is given. The delete event is the container's
// last; Delete returns once the sink has received it or ctx is done.
//
// Context: if ctx is already done, nothing is run or changed. If it ends
// while runc delete runs, runc is killed and Delete asks runc's state: if
// the container is gone, Delete finishes (init's exit, delete event, ID
// freed) before it returns an error wrapping ctx.Err() that says it was
// deleted anyway; otherwise the container stays and Delete may be retried.
func (c *Container) Delete(ctx context.Context, opts ...DeleteOption) error {
	var dc deleteConfig
	for _, o := range opts {
		o(&dc)
	}
	op := opDelete
	if dc.force {
		op = opForceDelete
	}
	c.mu.Lock()
	if err := c.checkLocked(op); err != nil {
		c.mu.Unlock()
		return err
	}
	c.deleting = true
	c.mu.Unlock()

	gone, err := c.runDelete(ctx, dc.force || c.init.Status() == StatusCreated)
	if !gone {
		c.mu.Lock()
		c.deleting = false
		c.mu.Unlock()
		return err
	}
	// runc delete killed init if it was alive; its exit event must precede
	// the delete event.
	select {
	case <-c.init.done: // already exited: ctx does not matter
	case <-orNever(c.init.done, ctx.Done()):
		// runc has deleted the container, so init's exit is coming: wait
		// for it privately, so that the ID is free when Delete returns.
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		select {
		case <-c.init.done:
		case <-cctx.Done():
			// The delete event must follow init's exit, so the rest
			// happens then.
			go func() {
				<-c.init.done
				c.finishDelete()
			}()
			return fmt.Errorf("runckit: delete container %q: waiting for init to exit: %w", c.id, ctx.Err())
		}
		if err == nil {
			err = fmt.Errorf("runckit: delete container %q: %w", c.id, context.Cause(ctx))
		}
	}
	t := phase.Begin()
	c.finishDelete()
	phase.End(phase.Undo, t)
	if err != nil {
		return settledError(err, "deleted anyway")
	}
	t = phase.Begin()
	c.events.flush(ctx)
	phase.End(phase.Flush, t)
	return nil
}

// finishDelete undoes the bundle preparation and publishes the delete event.
func (c *Container) finishDelete() {
	c.oom.close()
	c.runUndo()
	releaseID(c.cfg.runtimeRoot, c.id)
	c.mu.Lock()
	c.deleted = true
	c.init.state = stateDeleted
	for _, p := range c.execs {
		if p.state == stateCreated {
			// Never started, gone with the container: a Wait on it
			// ends (ErrNotFound).
			p.setStateLocked(stateDeleted)
		}
	}
	c.publishLocked(Event{Kind: EventDelete, Pid: c.init.pid, Status: c.init.status})
	c.events.close()
	c.mu.Unlock()
}

// Flush waits until every event published so far has reached the sink.
func (c *Container) Flush(ctx context.Context) error {
	return c.events.flush(ctx)
}

// stateFile is a path for runckit's per-process runtime files.
func (c *Container) stateFile(name string) string {
	return filepath.Join(c.bundle, name)
}

package runckit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// WithStateDir makes runckit keep a record of the container in dir: its
// identity, the pids and stdio paths of its processes, every exit and the
// Seq of its last event, written atomically (temporary file and rename,
// mode 0600) as they happen. LoadContainer uses it to re-attach to the
// container from a later run of the program. The record is
// dir/<id>@<root>.json, where <root> is a short hash of the absolute
// runtime root: one ID in two runtime roots has two records.
func WithStateDir(dir string) Option {
	return func(c *containerConfig) error {
		if dir == "" || !filepath.IsAbs(dir) {
			return fmt.Errorf("runckit: WithStateDir(%q): want an absolute path: %w", dir, errdefs.ErrInvalidArgument)
		}
		c.stateDir = dir
		return nil
	}
}

// record is what the state directory holds for one container.
type record struct {
	ID          string                   `json:"id"`
	Bundle      string                   `json:"bundle"`
	Runtime     string                   `json:"runtime"`
	RuntimeRoot string                   `json:"runtime_root"`
	Options     RuntimeOptions           `json:"runtime_options"`
	HostPID     bool                     `json:"host_pid"` // init does not own its PID namespace (Container.sharedPID)
	StopSignal  int                      `json:"stop_signal"`
	Mounts      []string                 `json:"mounts,omitempty"` // rootfs mount targets, unmounted by Delete
	Processes   map[string]processRecord `json:"processes"`        // by exec ID; "" is init
	// Seq is that of the last event handed to the sink, so that the events
	// of a later run continue the numbering.
	Seq uint64 `json:"seq"`
	// Version orders snapshots: a slower writer never overwrites a newer one.
	Version uint64 `json:"version"`
}

type processRecord struct {
	Pid int `json:"pid"`
	// StartTime is the process's start time in clock ticks since boot
	// (/proc/<pid>/stat field 22): with the pid, it names the process
	// uniquely, so a reused pid is never taken for it.
	StartTime uint64       `json:"start_time"`
	Exit      *exitRecord  `json:"exit,omitempty"`
	Stdio     *stdioRecord `json:"stdio,omitempty"`
}

// stdioRecord is what a shim needs to re-attach to a process's streams:
// their paths. Readers and writers die with the program that gave them.
type stdioRecord struct {
	StdinPath  string `json:"stdin,omitempty"`
	StdoutPath string `json:"stdout,omitempty"`
	StderrPath string `json:"stderr,omitempty"`
	Terminal   bool   `json:"terminal,omitempty"`
}

func stdioRecordOf(s Stdio) *stdioRecord {
	r := stdioRecord{StdinPath: s.StdinPath, StdoutPath: s.StdoutPath, StderrPath: s.StderrPath, Terminal: s.Terminal}
	if r == (stdioRecord{}) {
		return nil
	}
	return &r
}

func (r *stdioRecord) stdio() Stdio {
	if r == nil {
		return Stdio{}
	}
	return Stdio{StdinPath: r.StdinPath, StdoutPath: r.StdoutPath, StderrPath: r.StderrPath, Terminal: r.Terminal}
}

type exitRecord struct {
	Code     int       `json:"code"`
	Signal   int       `json:"signal,omitempty"`
	Unknown  bool      `json:"unknown,omitempty"`
	ExitedAt time.Time `json:"exited_at"`
}

func (e *exitRecord) status() ExitStatus {
	return ExitStatus{Code: e.Code, Signal: syscall.Signal(e.Signal), Unknown: e.Unknown, ExitedAt: e.ExitedAt}
}

func exitRecordOf(st ExitStatus) *exitRecord {
	return &exitRecord{Code: st.Code, Signal: int(st.Signal), Unknown: st.Unknown, ExitedAt: st.ExitedAt}
}

// recorder writes a container's record. Snapshots are taken under c.mu;
// writing happens outside it, under mu, newest version only.
type recorder struct {
	path string

	// mu serialises writes and guards written and covered. It is taken
	// before c.mu, never while c.mu is held.
	mu      sync.Mutex
	written uint64 // Version of the record on disk; ^0 once removed
	covered uint64 // the container's recordAsks that the record on disk reflects
}

// recordPath names the record of container id in runtime root. An ID is
// unique only within a root, so the name carries the root too, hashed to
// keep it short; '@' never occurs in an ID, so names can not collide.
func recordPath(dir, root, id string) string {
	sum := sha256.Sum256([]byte(normalRoot(root)))
	return filepath.Join(dir, id+"@"+hex.EncodeToString(sum[:6])+".json")
}

// normalRoot is normalizeRoot for a root that must name something even
// when it can not be resolved, so that two spellings of one root share a
// record name.
func normalRoot(root string) string {
	if n, err := normalizeRoot(root); err == nil {
		return n
	}
	return filepath.Clean(root)
}

// snapshotLocked captures the container's record; c.mu is held.
func (c *Container) snapshotLocked() *record {
	c.recordVersion++
	r := &record{
		ID: c.id, Bundle: c.bundle, Runtime: c.runtime.Command, RuntimeRoot: c.cfg.runtimeRoot,
		Options: c.cfg.runtimeOpts, HostPID: c.sharedPID, StopSignal: int(c.stopSignal), Mounts: c.mounts,
		Processes: make(map[string]processRecord, len(c.execs)+1),
		// Events are published under c.mu too: this is the last one queued.
		Seq:     c.events.lastSeq(),
		Version: c.recordVersion,
	}
	add := func(p *Process) {
		if p.pid == 0 {
			return
		}
		pr := processRecord{Pid: p.pid, StartTime: p.startTime, Stdio: stdioRecordOf(p.stdio)}
		if p.state == stateExited || p.state == stateDeleted {
			pr.Exit = exitRecordOf(p.status)
		}
		r.Processes[p.id] = pr
	}
	add(c.init)
	for _, p := range c.execs {
		add(p)
	}
	return r
}

// saveRecord writes the container's current record, if it keeps one, and
// returns once a record holding every change made before the call is on
// disk. Concurrent callers share writes (a group commit): a caller whose
// change a write already took in returns without writing, so a burst of
// exec starts and exits costs a few writes, not one each in a queue.
func (c *Container) saveRecord() {
	if c.rec == nil {
		return
	}
	c.mu.Lock()
	if c.deleted {
		c.mu.Unlock()
		return
	}
	c.recordAsks++
	ask := c.recordAsks
	c.mu.Unlock()

	rc := c.rec
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.covered >= ask {
		return // a snapshot taken after this call's change is on disk
	}
	c.mu.Lock()
	if c.deleted {
		c.mu.Unlock()
		return
	}
	r := c.snapshotLocked()
	covered := c.recordAsks // every ask so far changed state before this snapshot
	c.mu.Unlock()
	if rc.writeLocked(r) {
		rc.covered = covered
	}
}

// recordWriteHook, set only by tests, runs before each record write.
var recordWriteHook func()

// writeLocked writes r unless a newer record is on disk; rc.mu is held.
func (rc *recorder) writeLocked(r *record) bool {
	if r.Version <= rc.written {
		return false
	}
	data, err := json.Marshal(r)
	if err != nil {
		return false
	}
	if recordWriteHook != nil {
		recordWriteHook()
	}
	if writeFileAtomic(rc.path, data, 0o600) != nil {
		return false
	}
	rc.written = r.Version
	return true
}

// remove deletes the record, for Delete.
func (rc *recorder) remove() {
	if rc == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.written, rc.covered = ^uint64(0), ^uint64(0) // nothing may be written after this
	os.Remove(rc.path)
}

// processStartTime reads field 22 of /proc/<pid>/stat.
func processStartTime(pid int) (uint64, error) {
	f := procStat(pid) // f[0] is field 3 (state); field 22 is f[19]
	if len(f) < 20 {
		return 0, fmt.Errorf("no stat for pid %d", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// LoadContainer re-attaches to container id, made by an earlier run of the
// program with WithStateDir; pass the same WithStateDir, and the same
// WithRuntimeRoot if one was given. Kill, Pause, Exec, Stats, Delete and
// the rest work as on a container made by this run.
//
// The container comes back in the state runc and the record agree on:
// created (Start runs it), running, paused (Resume thaws it) or stopped.
// Exits recorded earlier are what Wait returns for those processes.
// Processes still alive are watched again; as they are no longer this
// program's children, their exit status can not be collected and is
// reported with Unknown set, never as a clean exit; so is the exit of a
// process that ended while no run of the program watched it. Events
// continue the earlier run's Seq numbering with what happens from
// LoadContainer on. Each process's Stdio holds the stream paths it was
// given, for a shim to re-attach to; readers and writers do not survive a
// restart.
func LoadContainer(ctx context.Context, id string, opts ...Option) (*Container, error) {
	return loadContainer(ctx, id, opts)
}

func loadContainer(ctx context.Context, id string, opts []Option) (_ *Container, retErr error) {
	if err := validateID("container", id); err != nil {
		return nil, err
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.stateDir == "" {
		return nil, fmt.Errorf("runckit: load container %q: no state directory (WithStateDir): %w", id, errdefs.ErrInvalidArgument)
	}
	path := recordPath(cfg.stateDir, cfg.runtimeRoot, id)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("runckit: load container %q: no record of it in runtime root %s (%s): %w",
			id, cfg.runtimeRoot, path, errdefs.ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("runckit: load container %q: %w", id, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil || r.ID != id || normalRoot(r.RuntimeRoot) != normalRoot(cfg.runtimeRoot) {
		return nil, fmt.Errorf("runckit: load container %q: record %s is corrupt or not of runtime root %s: %v: %w",
			id, path, cfg.runtimeRoot, err, errdefs.ErrDataLoss)
	}
	initRec, ok := r.Processes[""]
	if !ok {
		return nil, fmt.Errorf("runckit: load container %q: record has no init process: %w", id, errdefs.ErrDataLoss)
	}
	watcher, err := cfg.exitWatcher()
	if err != nil {
		return nil, err
	}
	r.RuntimeRoot = normalRoot(r.RuntimeRoot) // one registry key per directory, as in NewContainer
	if err := claimID(r.RuntimeRoot, id); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			releaseID(r.RuntimeRoot, id)
		}
	}()
	cfg.runtimeRoot, cfg.runtimeOpts = r.RuntimeRoot, r.Options
	c := makeContainer(id, r.Bundle, r.Runtime, cfg, watcher)
	c.sharedPID, c.stopSignal = r.HostPID, syscall.Signal(r.StopSignal)
	c.rec, c.recordVersion = &recorder{path: path, written: r.Version}, r.Version

	state, err := c.runtime.State(ctx, id)
	if err != nil {
		return nil, newRuntimeError(ctx, "state", id, "", "", err)
	}
	initState, freeze, err := adoptedInitState(state.Status)
	if err != nil {
		return nil, fmt.Errorf("runckit: load container %q: %w", id, err)
	}
	// Delete undoes what the earlier run's NewContainer did.
	c.mounts = r.Mounts
	c.undo = []func(){func() {
		os.Remove(filepath.Join(r.Bundle, optionsFile))
		os.Remove(filepath.Join(r.Bundle, initPidFile(id)))
		os.Remove(filepath.Join(r.Bundle, createLog(id)))
	}}
	for _, m := range r.Mounts {
		c.undo = append(c.undo, func() { unmountRecorded(r.Bundle, m) })
	}
	c.undo = append(c.undo, c.rec.remove)
	c.events = newEventQueueAfter(cfg.sink, r.Seq)

	c.init = newProcess(c, "", nil, initRec.Stdio.stdio())
	var watch []*Process
	for execID, pr := range r.Processes {
		p := c.init
		if execID != "" {
			p = newProcess(c, execID, nil, pr.Stdio.stdio())
			c.execs[execID] = p
		}
		p.pid, p.startTime = pr.Pid, pr.StartTime
		if pr.Exit != nil {
			p.state = stateExited
			p.status = pr.Exit.status()
			close(p.done)
			continue
		}
		p.state = stateRunning
		if execID != "" {
			c.activeExecs++
		}
		watch = append(watch, p)
	}
	if initRec.Exit != nil {
		c.initExited = true
	} else {
		c.init.state, c.freeze = initState, freeze
	}
	for _, p := range watch {
		// A process gone, or whose pid now names another, has its exit
		// handled at once, as unknown.
		h, err := checkedPidfd(p)
		if err == nil && p == c.init {
			c.attachInit(h)
		}
		c.adopt(p, h, err)
	}
	c.saveRecord()
	return c, nil
}

// adoptedInitState is init's state and the container's freeze state for
// runc's status of it, when the record holds no exit of init. A stopped
// container's init is taken as running: its watch reports the exit.
func adoptedInitState(status string) (processState, freezeState, error) {
	switch status {
	case "created":
		return stateCreated, thawed, nil
	case "running", "stopped":
		return stateRunning, thawed, nil
	case "paused", "pausing":
		// "pausing" is a freeze runc did not finish; runc resume thaws it.
		return stateRunning, frozen, nil
	}
	return 0, 0, fmt.Errorf("runc reports status %q, which runckit does not know: %w", status, errdefs.ErrFailedPrecondition)
}

// checkedPidfd opens a pidfd for p's recorded pid and checks, by its start
// time, that the pid still names p: a process started after the pidfd was
// opened can not have p's start time, so the pidfd is p's.
func checkedPidfd(p *Process) (*pidfdHandle, error) {
	h, err := openPidfd(p.pid)
	if err != nil {
		return nil, err
	}
	if st, err := processStartTime(p.pid); err != nil || st != p.startTime {
		h.close()
		return nil, fmt.Errorf("pid %d was reused", p.pid)
	}
	return h, nil
}

// attachInit marks init's PID namespace as runckit's and arms the OOM watch
// on init's cgroup, both read through /proc by pid. h is init's checked
// pidfd: while it says init has not exited, the pid is init's, so what was
// read is trusted only if h says so before and after. An init that exited
// meanwhile needs neither: its namespace and cgroup are done.
func (c *Container) attachInit(h *pidfdHandle) {
	pid := c.init.pid
	if !h.alive() {
		return
	}
	ns, nsErr := pidNamespaceOf(pid)
	cg, cgErr := oomSourceFor(pid)
	var scope []cgroupDir
	if c.sharedPID {
		scope = processCgroups(pid)
	}
	if !h.alive() {
		return
	}
	c.killScope = scope
	if nsErr == nil {
		c.execNS = ns
		if !c.sharedPID {
			c.pidNS = ns
			c.undo = append(c.undo, manageNamespaceInode(ns))
		}
	}
	if cgErr == nil {
		oom := c.newOOMWatchOn(cg)
		c.mu.Lock()
		c.oom = oom
		c.mu.Unlock()
		oom.start()
	}
}

// alive reports whether the process behind the pidfd has not exited: a
// pidfd becomes readable when its process exits.
func (h *pidfdHandle) alive() bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n == 0
	}
}

// adopt watches a process recorded as running through h, its checked
// pidfd; checkErr says why there is none, and the exit is handled at once
// as unknown.
func (c *Container) adopt(p *Process, h *pidfdHandle, checkErr error) {
	unknown := ExitStatus{Code: 255, Unknown: true, ExitedAt: time.Now()}
	if checkErr != nil {
		p.onExit(unknown)
		return
	}
	c.mu.Lock()
	p.pidfd = h
	c.mu.Unlock()
	// Watch through the checked pidfd where the watcher allows it: an
	// adopted process is not our child, so its pid is free for reuse the
	// moment its real parent reaps it.
	if pw, ok := c.watcher.(interface {
		watchPidfd(fd, pid int, onExit func(ExitStatus)) error
	}); ok {
		fd, derr := unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
		if derr == nil {
			derr = pw.watchPidfd(fd, p.pid, p.onExit)
		}
		if derr != nil {
			p.onExit(unknown)
		}
		return
	}
	err := c.watcher.Watch(p.pid, p.onExit)
	if err == nil {
		// A custom watcher opened its own handle by number: make sure it
		// still names the process checked above.
		if st, serr := processStartTime(p.pid); serr != nil || st != p.startTime {
			err = fmt.Errorf("pid %d was reused", p.pid)
		}
	}
	if err != nil {
		p.onExit(unknown)
	}
}

// recordStartTime notes a new process's start time for the record.
func recordStartTime(p *Process) {
	if p.c.rec == nil {
		return
	}
	if st, err := processStartTime(p.pid); err == nil {
		p.c.mu.Lock()
		p.startTime = st
		p.c.mu.Unlock()
	}
}

// Stdio returns the streams the process was given. For a process of a
// container adopted with LoadContainer it holds the stream paths and
// Terminal as the earlier run gave them, for a shim to re-attach to; the
// readers and writers of the earlier run are gone.
func (p *Process) Stdio() Stdio { return p.stdio }

package runckit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// WithStateDir makes runckit keep a record of the container in dir: its
// identity, the pids of its processes and every exit, written atomically
// (temporary file and rename, mode 0600) as they happen. LoadContainer
// uses it to re-attach to the container from a later run of the program.
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
	HostPID     bool                     `json:"host_pid"`
	StopSignal  int                      `json:"stop_signal"`
	Mounts      []string                 `json:"mounts,omitempty"` // rootfs mount targets, unmounted by Delete
	Processes   map[string]processRecord `json:"processes"`        // by exec ID; "" is init
	// Version orders snapshots: a slower writer never overwrites a newer one.
	Version uint64 `json:"version"`
}

type processRecord struct {
	Pid int `json:"pid"`
	// StartTime is the process's start time in clock ticks since boot
	// (/proc/<pid>/stat field 22): with the pid, it names the process
	// uniquely, so a reused pid is never taken for it.
	StartTime uint64      `json:"start_time"`
	Exit      *exitRecord `json:"exit,omitempty"`
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

	mu      sync.Mutex // serialises writes; guards written
	written uint64
}

func recordPath(dir, id string) string { return filepath.Join(dir, id+".json") }

// snapshotLocked captures the container's record; c.mu is held.
func (c *Container) snapshotLocked() *record {
	c.recordVersion++
	r := &record{
		ID: c.id, Bundle: c.bundle, Runtime: c.runtime.Command, RuntimeRoot: c.cfg.runtimeRoot,
		Options: c.cfg.runtimeOpts, HostPID: c.hostPID, StopSignal: int(c.stopSignal), Mounts: c.mounts,
		Processes: make(map[string]processRecord, len(c.execs)+1),
		Version:   c.recordVersion,
	}
	add := func(p *Process) {
		if p.pid == 0 {
			return
		}
		pr := processRecord{Pid: p.pid, StartTime: p.startTime}
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

// saveRecord writes the container's current record, if it keeps one.
// Errors are not fatal to the operation that changed the state: they are
// kept and returned by the next LoadContainer that finds the record stale.
func (c *Container) saveRecord() {
	if c.rec == nil {
		return
	}
	c.mu.Lock()
	if c.deleted {
		c.mu.Unlock()
		return
	}
	r := c.snapshotLocked()
	c.mu.Unlock()
	c.rec.write(r)
}

func (rc *recorder) write(r *record) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if r.Version <= rc.written {
		return
	}
	data, err := json.Marshal(r)
	if err != nil {
		return
	}
	if writeFileAtomic(rc.path, data, 0o600) == nil {
		rc.written = r.Version
	}
}

// remove deletes the record, for Delete.
func (rc *recorder) remove() {
	if rc == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.written = ^uint64(0) // nothing may be written after this
	os.Remove(rc.path)
}

// processStartTime reads field 22 of /proc/<pid>/stat.
func processStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// LoadContainer re-attaches to container id, made by an earlier run of the
// program with WithStateDir; pass the same WithStateDir. Kill, Pause, Exec,
// Stats, Delete and the rest work as on a container made by this run.
// Exits recorded earlier are what Wait returns for those processes.
// Processes still alive are watched again; as they are no longer this
// program's children, their exit status can not be collected and is
// reported with Unknown set, never as a clean exit. The event stream of an
// adopted container starts afresh with what happens after LoadContainer.
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
	path := recordPath(cfg.stateDir, id)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("runckit: load container %q: no record at %s: %w", id, path, errdefs.ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("runckit: load container %q: %w", id, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil || r.ID != id {
		return nil, fmt.Errorf("runckit: load container %q: record %s is corrupt: %v: %w", id, path, err, errdefs.ErrDataLoss)
	}
	watcher, err := cfg.exitWatcher()
	if err != nil {
		return nil, err
	}
	if err := claimID(r.RuntimeRoot, id); err != nil {
		return nil, err
	}
	cfg.runtimeRoot, cfg.runtimeOpts = r.RuntimeRoot, r.Options
	c := &Container{
		id: id, bundle: r.Bundle, cfg: cfg, watcher: watcher,
		execs:      make(map[string]*Process),
		hostPID:    r.HostPID,
		stopSignal: syscall.Signal(r.StopSignal),
		runtime: &runc.Runc{
			Command: r.Runtime, Root: r.RuntimeRoot,
			Log: filepath.Join(r.Bundle, createLog), LogFormat: runc.JSON,
			SystemdCgroup: r.Options.SystemdCgroup,
			Setpgid:       true, // a group per invocation: see cancel.go
		},
		rec:           &recorder{path: path, written: r.Version},
		recordVersion: r.Version,
	}
	defer func() {
		if retErr != nil {
			releaseID(r.RuntimeRoot, id)
		}
	}()
	if _, err := c.runtime.State(ctx, id); err != nil {
		return nil, newRuntimeError(ctx, "state", id, "", "", err)
	}
	// Delete undoes what the earlier run's NewContainer did.
	c.mounts = r.Mounts
	c.undo = []func(){func() {
		os.Remove(filepath.Join(r.Bundle, optionsFile))
		os.Remove(filepath.Join(r.Bundle, initPidFile))
		os.Remove(filepath.Join(r.Bundle, createLog))
	}}
	for _, m := range r.Mounts {
		c.undo = append(c.undo, func() { unmount(m) })
	}
	c.undo = append(c.undo, c.rec.remove)
	c.events = newEventQueue(cfg.sink)

	initRec, ok := r.Processes[""]
	if !ok {
		return nil, fmt.Errorf("runckit: load container %q: record has no init process: %w", id, errdefs.ErrDataLoss)
	}
	c.init = newProcess(c, "", nil, Stdio{})
	c.init.state = stateRunning
	var watch []*Process
	for execID, pr := range r.Processes {
		p := c.init
		if execID != "" {
			p = newProcess(c, execID, nil, Stdio{})
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
	}
	if !c.hostPID && initRec.Exit == nil {
		c.undo = append(c.undo, manageNamespace(c.init.pid))
	}
	oom := c.newOOMWatch(c.init.pid)
	c.mu.Lock()
	c.oom = oom
	c.mu.Unlock()
	oom.start()
	for _, p := range watch {
		c.adopt(p)
	}
	c.saveRecord()
	return c, nil
}

// adopt watches a process recorded as running. If it is gone, or its pid
// now names another process, its exit is handled at once as unknown.
func (c *Container) adopt(p *Process) {
	unknown := ExitStatus{Code: 255, Unknown: true, ExitedAt: time.Now()}
	h, err := openPidfd(p.pid)
	if err == nil {
		if st, serr := processStartTime(p.pid); serr != nil || st != p.startTime {
			h.close()
			err = fmt.Errorf("pid %d was reused", p.pid)
		}
	}
	if err != nil {
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
	err = c.watcher.Watch(p.pid, p.onExit)
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

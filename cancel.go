package runckit

// The cancellation contract (DESIGN.md, "Lifecycle and contexts"): a
// context bounds how long the caller waits, never what runckit leaves
// behind. When the caller's ctx ends before, during or right after a runc
// invocation, the operation returns an error wrapping ctx.Err(), and before
// it returns runckit has finished or undone what runc did, under a private
// context bounded by cleanupTimeout: no cgroup, helper process, zombie,
// runtime state, pid file or untracked process is left, and the container
// and exec IDs can be used again at once.
//
// Every runc invocation leads a process group of its own (runc.Runc's
// Setpgid), and runc's helpers (runc init in all its stages, CRIU) stay in
// that group until the container's or exec's process calls setsid. Killing
// the group therefore ends every helper of one invocation, and only those.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit/internal/phase"
)

// cleanupTimeout bounds the clean-up or settling that follows a runc
// invocation cut short by the caller's context.
const cleanupTimeout = 10 * time.Second

// cleanupContext is the private context for that clean-up: it keeps the
// caller's values but not its cancellation.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// canceledError is the error of an operation whose context ended before
// runc ran: nothing was changed.
func canceledError(ctx context.Context, step, containerID, execID string) error {
	if execID != "" {
		return fmt.Errorf("runckit: %s container %q exec %q: not run: %w", step, containerID, execID, context.Cause(ctx))
	}
	return fmt.Errorf("runckit: %s container %q: not run: %w", step, containerID, context.Cause(ctx))
}

// settledError wraps err (which wraps ctx.Err()) with what the operation
// nevertheless achieved, so the caller knows the outcome despite the error.
func settledError(err error, what string) error {
	return fmt.Errorf("%w; %s", err, what)
}

// runcGroup is the process group of one runc invocation that may leave
// helpers behind (create, restore, exec, checkpoint). When the caller's
// context ends, the whole group is killed, not just runc, so that go-runc
// returns at once and no helper lives on.
type runcGroup struct {
	pid    atomic.Int64 // runc's pid, which is its group's id; 0 until known
	match  []string     // arguments that find runc among our children, if pid is not reported
	killed atomic.Bool  // the group was killed for the caller's context
	stop   func() bool
	done   chan struct{} // closed when the kill has run (if it ran)
	cancel context.CancelFunc
}

// guardRunc returns the context to hand go-runc for an invocation whose
// process group g stands for. When ctx ends, g is killed, then the runc
// context is cancelled. Call g.finish when runc has returned.
func guardRunc(ctx context.Context, match ...string) (context.Context, *runcGroup) {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g := &runcGroup{match: match, done: make(chan struct{}), cancel: cancel}
	g.stop = context.AfterFunc(ctx, func() {
		defer close(g.done)
		pid := int(g.pid.Load())
		if pid == 0 {
			pid = findChild(g.match)
			g.pid.Store(int64(pid))
		}
		if pid > 0 && processGroup(pid) == pid {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
		g.killed.Store(true)
		cancel()
	})
	return runCtx, g
}

// started records runc's pid as go-runc reports it (ExecOpts.Started).
func (g *runcGroup) started(ch <-chan int) {
	go func() {
		if pid, ok := <-ch; ok {
			g.pid.CompareAndSwap(0, int64(pid))
		}
	}()
}

// finish ends the guard once runc has returned and reports whether the
// invocation was cut short by the caller's context: then its outcome,
// success included, is void and must be undone.
func (g *runcGroup) finish() bool {
	if g.stop() {
		g.cancel()
		return false
	}
	<-g.done
	return g.killed.Load()
}

// reap kills what is left of the group and reaps those of its members that
// were re-parented to this program (a child subreaper), until the group is
// empty or ctx ends.
func (g *runcGroup) reap(ctx context.Context) {
	pid := int(g.pid.Load())
	if pid <= 0 {
		return
	}
	for {
		if err := syscall.Kill(-pid, syscall.SIGKILL); err == syscall.ESRCH {
			return
		}
		for _, child := range childPids() {
			if processGroup(child) == pid && isZombie(child) {
				reapZombie(child)
			}
		}
		if !sleepCtx(ctx, time.Millisecond) {
			return
		}
	}
}

// findChild returns the pid of this program's child whose command line
// holds every string of match, or 0. It finds a runc invocation whose pid
// go-runc does not report.
func findChild(match []string) int {
	if len(match) == 0 {
		return 0
	}
	for _, pid := range childPids() {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if holdsAll(args, match) {
			return pid
		}
	}
	return 0
}

func holdsAll(args, match []string) bool {
	for _, m := range match {
		found := false
		for _, a := range args {
			if a == m {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// childPids lists this program's children, zombies included.
func childPids() []int {
	var pids []int
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// procStat returns the fields of /proc/pid/stat after the command name:
// state is [0], ppid [1], pgrp [2], session [3], starttime [19].
func procStat(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 || i+2 > len(data) {
		return nil
	}
	return strings.Fields(string(data[i+2:]))
}

func processGroup(pid int) int {
	f := procStat(pid)
	if len(f) < 3 {
		return -1
	}
	pgrp, _ := strconv.Atoi(f[2])
	return pgrp
}

// nowTicks is the time since boot in clock ticks (USER_HZ, 100 on Linux),
// the unit of processStartTime.
func nowTicks() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Sec)*100 + uint64(ts.Nsec)/10_000_000
}

// reapZombie reaps pid, a zombie child of this program.
func reapZombie(pid int) {
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, unix.WNOHANG, nil)
}

// killAndReap kills pid, a child of this program (so its pid can not have
// been reused), and reaps it, waiting until ctx ends at most.
func killAndReap(ctx context.Context, pid int) {
	syscall.Kill(pid, syscall.SIGKILL)
	awaitReap(ctx, pid)
}

// awaitReap reaps pid, a child of this program, once it has exited,
// waiting until ctx ends at most.
func awaitReap(ctx context.Context, pid int) {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid || (err != nil && err != unix.EINTR) {
			return
		}
		if !sleepCtx(ctx, time.Millisecond) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func isChild(pid int) bool {
	f := procStat(pid)
	return len(f) > 1 && f[1] == strconv.Itoa(os.Getpid())
}

// removePidFiles removes a pid file runc was asked to write and the
// temporary file runc writes first (".<name>", opened with O_EXCL: left
// behind, it fails the next invocation with "file exists").
func removePidFiles(pidFile string) {
	os.Remove(pidFile)
	os.Remove(runcTempPidFile(pidFile))
}

func runcTempPidFile(pidFile string) string {
	return filepath.Join(filepath.Dir(pidFile), "."+filepath.Base(pidFile))
}

// pidFromFiles reads the pid runc wrote to pidFile, or to its temporary
// file if runc was killed before the rename.
func pidFromFiles(pidFile string) int {
	for _, f := range []string{pidFile, runcTempPidFile(pidFile)} {
		if pid, err := readPidFile(f); err == nil {
			return pid
		}
	}
	return 0
}

// ---- cgroups ----

// cgroupDir is the container's cgroup in one hierarchy.
type cgroupDir struct {
	hierarchy string // /proc/pid/cgroup key: "0" for v2, else the controllers ("cpu,cpuacct", "name=systemd")
	procPath  string // the cgroup as /proc/pid/cgroup names it
	path      string // its directory
	made      string // the topmost directory of path that did not exist before runc ran; "" if path existed
}

// containerCgroups computes the container's cgroup in every cgroup v1 and
// v2 hierarchy mounted here, the way runc's cgroupfs driver does: the
// spec's Linux.CgroupsPath, or the container ID when it is empty; an
// absolute path is below each hierarchy's root, a relative one below the
// cgroup of the program (runc's own) in that hierarchy. It also records
// which directories do not exist yet, so that only what runc makes is
// removed. With the systemd driver runc's cgroups are systemd's units:
// nil is returned and runc delete is all the clean-up there is.
func containerCgroups(spec *specs.Spec, id string, systemd bool) []cgroupDir {
	if systemd {
		return nil
	}
	inner := ""
	if spec != nil && spec.Linux != nil {
		inner = spec.Linux.CgroupsPath
	}
	if inner != "" {
		inner = filepath.Clean("/" + inner) // runc's CleanPath: no escaping the root
		if !filepath.IsAbs(spec.Linux.CgroupsPath) {
			inner = strings.TrimPrefix(inner, "/")
		}
	} else {
		inner = id
	}
	own := ownCgroups()
	var dirs []cgroupDir
	for _, m := range cgroupMounts() {
		base, ok := own[m.hierarchy]
		if !ok {
			continue
		}
		procPath := inner
		if !filepath.IsAbs(inner) {
			procPath = filepath.Join(base, inner)
		}
		rel, err := filepath.Rel(m.root, procPath)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // outside what this mount shows
		}
		d := cgroupDir{hierarchy: m.hierarchy, procPath: procPath, path: filepath.Join(m.point, rel)}
		// The topmost missing directory on the way down from the mount.
		cur := m.point
		for _, part := range strings.Split(rel, "/") {
			if part == "" || part == "." {
				continue
			}
			cur = filepath.Join(cur, part)
			if _, err := os.Stat(cur); err != nil {
				d.made = cur
				break
			}
		}
		dirs = append(dirs, d)
	}
	return dirs
}

type cgroupMount struct {
	hierarchy string // as in /proc/self/cgroup
	root      string // the mount's root within the hierarchy
	point     string // where it is mounted
}

// cgroupMounts lists the cgroup v1 and v2 mounts from /proc/self/mountinfo,
// one per hierarchy.
func cgroupMounts() []cgroupMount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	seen := make(map[string]bool)
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 {
			continue
		}
		fstype, superOpts := fields[sep+1], fields[sep+3]
		var h string
		switch fstype {
		case "cgroup2":
			h = "0"
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(superOpts, ",") {
				if o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent=") || o == "clone_children" ||
					o == "noprefix" || o == "xattr" || o == "cpuset_v2_mode" {
					continue
				}
				ctrls = append(ctrls, o)
			}
			h = strings.Join(ctrls, ",")
		default:
			continue
		}
		if seen[h] {
			continue
		}
		seen[h] = true
		out = append(out, cgroupMount{hierarchy: h, root: unescapeMountinfo(fields[3]), point: unescapeMountinfo(fields[4])})
	}
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroups maps each hierarchy to this program's cgroup in it.
func ownCgroups() map[string]string {
	return pidCgroups("self")
}

// pidCgroups maps each hierarchy to pid's cgroup in it; it works for
// zombies too, which keep their cgroup until reaped.
func pidCgroups(pid string) map[string]string {
	data, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return nil
	}
	out := make(map[string]string)
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out["0"] = parts[2]
		} else {
			out[parts[1]] = parts[2]
		}
	}
	return out
}

// inCgroups reports whether pid is in (or below) one of dirs.
func inCgroups(pid int, dirs []cgroupDir) bool {
	if len(dirs) == 0 {
		return false
	}
	cgs := pidCgroups(strconv.Itoa(pid))
	for _, d := range dirs {
		p, ok := cgs[d.hierarchy]
		if ok && (p == d.procPath || strings.HasPrefix(p, d.procPath+"/")) {
			return true
		}
	}
	return false
}

// removeMadeCgroups ends every process in the cgroups runc made for the
// container (dirs whose made is set), reaps those that are this program's
// children, and removes the directories, deepest first.
func removeMadeCgroups(ctx context.Context, dirs []cgroupDir) {
	var made []cgroupDir
	for _, d := range dirs {
		if d.made != "" {
			made = append(made, d)
		}
	}
	if len(made) == 0 {
		return
	}
	// A frozen cgroup's tasks do not die of SIGKILL until thawed.
	for _, d := range made {
		os.WriteFile(filepath.Join(d.path, "freezer.state"), []byte("THAWED"), 0)
		os.WriteFile(filepath.Join(d.path, "cgroup.freeze"), []byte("0"), 0)
	}
	for {
		live := 0
		for _, d := range made {
			for _, pid := range cgroupTreePids(d.path) {
				live++
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for _, pid := range childPids() {
			if isZombie(pid) && inCgroups(pid, made) {
				reapZombie(pid)
			}
		}
		if live == 0 || !sleepCtx(ctx, time.Millisecond) {
			break
		}
	}
	for _, d := range made {
		for {
			err := removeCgroupTree(d.path, d.made)
			if err == nil || !errors.Is(err, syscall.EBUSY) || !sleepCtx(ctx, 2*time.Millisecond) {
				break
			}
		}
	}
}

// cgroupTreePids lists the processes in dir and its descendants.
func cgroupTreePids(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupTree removes dir's subtree, deepest first, and then dir and
// its parents up to and including top.
func removeCgroupTree(dir, top string) error {
	var subdirs []string
	filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() && path != dir {
			subdirs = append(subdirs, path)
		}
		return nil
	})
	for i := len(subdirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(subdirs[i]); err != nil && err != syscall.ENOENT {
			return err
		}
	}
	for cur := dir; ; cur = filepath.Dir(cur) {
		if err := syscall.Rmdir(cur); err != nil && err != syscall.ENOENT {
			return err
		}
		if cur == top || len(cur) <= len(top) {
			return nil
		}
	}
}

// ---- create and restore ----

// undoCreate removes everything a runc create or restore that did not
// complete may have made: the runtime state (runc delete --force, or the
// state directory if runc never wrote its state), the helpers of the
// invocation, every process in the cgroups runc made and those cgroups, and
// runc's pid files. The ID is free again when it returns.
func (c *Container) undoCreate(ctx context.Context, g *runcGroup, cgroups []cgroupDir, pidFile string) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if g != nil {
		g.reap(cctx)
	}
	stateDir := filepath.Join(c.cfg.runtimeRoot, c.id)
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); err == nil {
		c.runtime.Delete(cctx, c.id, &runc.DeleteOpts{Force: true})
	}
	removeMadeCgroups(cctx, cgroups)
	// Init and its helpers may have left the cgroup's view (zombies) or
	// never joined it: a pid file names init.
	if pid := pidFromFiles(pidFile); pid > 0 && isChild(pid) {
		killAndReap(cctx, pid)
	}
	// The ID was free when this create began (reserveID), so whatever is
	// left under it is this create's: an exec.fifo without state.json.
	os.RemoveAll(stateDir)
	removePidFiles(pidFile)
}

// ---- exec ----

// execStarts counts a container's exec starts whose new process is not
// recorded yet, so that a cancelled start can tell its own stray process
// from a sibling's: both are unwatched children of this program in the
// container. A sweep for strays waits until no other start is in flight,
// and new starts wait (before runc) for a sweep under way; no lock is held
// across runc.
type execStarts struct {
	mu       sync.Mutex
	inFlight int
	sweeping int
	changed  chan struct{} // closed and renewed whenever the counts drop
}

func (s *execStarts) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

func (s *execStarts) waitLocked() <-chan struct{} {
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// begin registers a start about to run runc exec.
func (s *execStarts) begin() {
	s.mu.Lock()
	for s.sweeping > 0 {
		ch := s.waitLocked()
		s.mu.Unlock()
		<-ch // a sweep takes milliseconds, bounded by cleanupTimeout
		s.mu.Lock()
	}
	s.inFlight++
	s.mu.Unlock()
}

// end unregisters a start whose process is recorded (or that failed).
func (s *execStarts) end() {
	s.mu.Lock()
	s.inFlight--
	s.notifyLocked()
	s.mu.Unlock()
}

// sweep runs fn once no exec start other than the caller's is in flight,
// keeping new starts out meanwhile. The caller, a start in flight, counts
// as not in flight while it sweeps, so that two cancelled starts do not
// wait for each other. It gives up if ctx ends first.
func (s *execStarts) sweep(ctx context.Context, fn func()) bool {
	s.mu.Lock()
	s.inFlight--
	s.sweeping++
	s.notifyLocked()
	defer func() {
		s.mu.Lock()
		s.sweeping--
		s.inFlight++
		s.notifyLocked()
		s.mu.Unlock()
	}()
	for s.inFlight > 0 {
		ch := s.waitLocked()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
		s.mu.Lock()
	}
	s.mu.Unlock()
	fn()
	return true
}

// undoExec ends whatever a runc exec cut short by the caller's context
// started: the invocation's helpers, the process named by the pid file if
// runc got that far, and otherwise any unwatched child of this program in
// the container that started during the call. since is when the call began.
func (c *Container) undoExec(ctx context.Context, g *runcGroup, pidFile string, since uint64) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	g.reap(cctx)
	defer removePidFiles(pidFile)
	if pid := pidFromFiles(pidFile); pid > 0 && isChild(pid) {
		killAndReap(cctx, pid)
		return
	}
	c.starts.sweep(cctx, func() {
		for _, pid := range c.strayChildren(since) {
			killAndReap(cctx, pid)
		}
	})
}

// strayChildren lists this program's children that are in the container
// (its PID namespace, or its cgroup when it shares the host's), started at
// or after since, and that runckit does not track.
func (c *Container) strayChildren(since uint64) []int {
	tracked := make(map[int]bool)
	c.mu.Lock()
	tracked[c.init.pid] = true
	for _, p := range c.execs {
		if p.pid > 0 {
			tracked[p.pid] = true
		}
	}
	c.mu.Unlock()
	ns := c.pidNS // 0 in a shared PID namespace: the cgroup tells then
	var strays []int
	for _, pid := range childPids() {
		if tracked[pid] {
			continue
		}
		if st, err := processStartTime(pid); err != nil || st+1 < since {
			continue
		}
		if c.sharedPID {
			if !inCgroups(pid, c.cgroups) {
				continue
			}
		} else if ino, err := pidNamespaceOf(pid); err != nil || ino != ns {
			continue
		}
		strays = append(strays, pid)
	}
	return strays
}

// ---- settling ----

// runtimeStatus asks runc for the container's status under a private
// context: "" with an error if it can not tell, "gone" if runc has no such
// container.
func (c *Container) runtimeStatus(ctx context.Context) (string, error) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	st, err := c.runtime.State(cctx, c.id)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(c.cfg.runtimeRoot, c.id)); errors.Is(serr, os.ErrNotExist) {
			return "gone", nil
		}
		return "", err
	}
	return st.Status, nil
}

// initReleased reports, after a runc start was killed, whether init was
// released to run the user's program: runc's own state can still say
// "created" when runc start was killed between releasing init and removing
// its exec fifo. A released init leaves runc:[2:INIT] within moments (it
// execs the program); an unreleased one stays blocked opening the fifo. An
// init that is dead counts as not released.
func (c *Container) initReleased(ctx context.Context) bool {
	pid := c.init.pid
	comm := "/proc/" + strconv.Itoa(pid) + "/comm"
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		name, err := os.ReadFile(comm)
		if err != nil || isZombie(pid) {
			return false // dead: whether it ever ran its program can not be told
		}
		if !strings.HasPrefix(string(name), "runc:[2:INIT]") {
			return true
		}
		// Blocked opening the exec fifo until a runc start reads it.
		if wchan, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/wchan"); string(wchan) == "wait_for_partner" {
			return false
		}
		if time.Now().After(deadline) || !sleepCtx(ctx, time.Millisecond) {
			return false
		}
	}
}

// ---- start ----

// startGrace is how long runc start may go on after the caller's context
// ended. Killing runc start while it releases init kills init too (init's
// write to its exec fifo fails once runc's end is closed, and init exits),
// so runc start is given the moment it normally takes to finish.
const startGrace = 500 * time.Millisecond

// runStart runs runc start and reports whether init was released. When ctx
// ends during the call, runc start has startGrace to finish, then it is
// killed and the answer comes from runc's state and init itself (see
// initReleased); the error wraps ctx.Err() and says which way it settled.
func (c *Container) runStart(ctx context.Context) (started bool, err error) {
	if ctx.Err() != nil {
		return false, canceledError(ctx, "start", c.id, "")
	}
	runCtx, kill := context.WithCancel(context.WithoutCancel(ctx))
	defer kill()
	returned := make(chan struct{})
	defer close(returned)
	defer context.AfterFunc(ctx, func() {
		select {
		case <-returned:
		case <-time.After(startGrace):
			kill()
		}
	})()
	err = c.runtime.Start(runCtx, c.id)
	if err == nil {
		if ctx.Err() != nil {
			return true, settledError(fmt.Errorf("runckit: start container %q: %w", c.id, context.Cause(ctx)), "init started anyway")
		}
		return true, nil
	}
	err = newRuntimeError(ctx, "start", c.id, "", "", err)
	if ctx.Err() == nil {
		return false, err
	}
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	status, serr := c.runtimeStatus(cctx)
	switch {
	case status == "running" || status == "paused":
		started = true
	case status == "created" && c.initReleased(cctx):
		// runc start was killed between releasing init and removing its
		// exec fifo: finish its work, or runc would go on saying created.
		os.Remove(filepath.Join(c.cfg.runtimeRoot, c.id, "exec.fifo"))
		started = true
	}
	if started {
		return true, settledError(err, "init started anyway")
	}
	if serr != nil {
		return false, settledError(err, fmt.Sprintf("init's state unknown (%v)", serr))
	}
	return false, settledError(err, "init is "+status+"; not started")
}

// ---- delete ----

// runDelete runs runc delete and reports whether the container is gone
// from runc. If it is not, err says why. If ctx ended during the call, the
// answer comes from runc's state and err (non-nil even when gone) wraps
// ctx.Err().
func (c *Container) runDelete(ctx context.Context, force bool) (gone bool, err error) {
	if ctx.Err() != nil {
		return false, canceledError(ctx, "delete", c.id, "")
	}
	t := phase.Begin()
	err = c.runtime.Delete(ctx, c.id, &runc.DeleteOpts{Force: force})
	phase.End(phase.RuncDelete, t)
	if err == nil {
		return true, nil
	}
	rerr := newRuntimeError(ctx, "delete", c.id, "", "", err)
	if ctx.Err() == nil {
		if errdefs.IsNotFound(rerr) {
			return true, nil
		}
		return false, rerr
	}
	status, serr := c.runtimeStatus(ctx)
	switch {
	case status == "gone":
		return true, rerr
	case serr != nil:
		return false, settledError(rerr, fmt.Sprintf("state unknown (%v); not deleted", serr))
	}
	return false, settledError(rerr, "container is "+status+"; not deleted")
}

// orNever returns done unless first is already closed, then nil (a channel
// that is never ready): a select over both then prefers first.
func orNever(first <-chan struct{}, done <-chan struct{}) <-chan struct{} {
	select {
	case <-first:
		return nil
	default:
		return done
	}
}

// ---- pause, resume ----

// runFreeze runs runc pause or resume and returns the freeze state the
// container settled in. When ctx ends during the call, a half-done pause is
// undone with runc resume, and the state comes from runc's.
func (c *Container) runFreeze(ctx context.Context, step string, from, to freezeState,
	run func(context.Context, string) error) (freezeState, error) {
	if ctx.Err() != nil {
		return from, canceledError(ctx, step, c.id, "")
	}
	err := run(ctx, c.id)
	if err == nil {
		return to, nil
	}
	err = newRuntimeError(ctx, step, c.id, "", "", err)
	if ctx.Err() == nil {
		return from, err
	}
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	var undoErr error
	if to == frozen {
		undoErr = c.runtime.Resume(cctx, c.id)
	}
	status, serr := c.runtimeStatus(cctx)
	switch {
	case status == "paused":
		if to == frozen {
			return frozen, settledError(err, fmt.Sprintf("the freeze could not be undone (%v): paused",
				newRuntimeError(cctx, "resume", c.id, "", "", undoErr)))
		}
		return frozen, settledError(err, "still paused")
	case status == "running":
		if to == thawed {
			return thawed, settledError(err, "resumed anyway")
		}
		return thawed, settledError(err, "freeze undone: running")
	case serr != nil:
		return from, settledError(err, fmt.Sprintf("state unknown (%v)", serr))
	}
	return from, settledError(err, "container is "+status)
}

// ---- checkpoint ----

// runCheckpoint runs runc checkpoint. When ctx ends during the call, runc
// and CRIU (its child, in its process group) are killed, and a container
// CRIU left frozen is thawed.
func (c *Container) runCheckpoint(ctx context.Context, opts *runc.CheckpointOpts, actions []runc.CheckpointAction) error {
	if ctx.Err() != nil {
		return canceledError(ctx, "checkpoint", c.id, "")
	}
	runCtx, g := guardRunc(ctx, c.cfg.runtimeRoot, "checkpoint", c.id)
	err := c.runtime.Checkpoint(runCtx, c.id, opts, actions...)
	if !g.finish() {
		if err != nil {
			return newRuntimeError(ctx, "checkpoint", c.id, "", "", err)
		}
		return nil
	}
	if err == nil {
		err = fmt.Errorf("killed as it finished: %w", context.Cause(ctx))
	}
	err = newRuntimeError(ctx, "checkpoint", c.id, "", "", err)
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	g.reap(cctx)
	c.mu.Lock()
	wantFrozen := c.freeze == frozen
	c.mu.Unlock()
	if status, _ := c.runtimeStatus(cctx); status == "paused" && !wantFrozen {
		if rerr := c.runtime.Resume(cctx, c.id); rerr != nil {
			return settledError(err, fmt.Sprintf("left frozen by CRIU, and resuming it failed: %v",
				newRuntimeError(cctx, "resume", c.id, "", "", rerr)))
		}
	}
	return err
}

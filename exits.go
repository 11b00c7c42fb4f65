package runckit

import (
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
	"unsafe"

	"golang.org/x/sys/unix"
)

// ExitStatus says how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128+signal when the process was killed by a
	// signal, as a shell reports it.
	Code int
	// Signal is the signal that killed the process, 0 if it exited.
	Signal syscall.Signal
	// ExitedAt is when runckit reaped the process.
	ExitedAt time.Time
	// Unknown is true when the process was seen to exit but its status could
	// not be collected (it was not this program's child). Code is then 255;
	// it is never reported as a clean exit.
	Unknown bool
}

// Success reports whether the process exited with code 0.
func (s ExitStatus) Success() bool { return !s.Unknown && s.Signal == 0 && s.Code == 0 }

func (s ExitStatus) String() string {
	switch {
	case s.Unknown:
		return "exit status unknown"
	case s.Signal != 0:
		if name := unix.SignalName(s.Signal); name != "" {
			return "killed by " + name
		}
		return fmt.Sprintf("killed by signal %d", int(s.Signal))
	}
	return fmt.Sprintf("exit code %d", s.Code)
}

// ExitWatcher reports process exits. Runckit calls Watch as soon as it knows
// the host pid of a container process; the watcher calls onExit exactly once,
// after the process has exited, from a goroutine of its choosing. onExit must
// not be called from inside Watch.
//
// The ordering rules of runckit (start before exit, execs before init) are
// enforced above the watcher, so a custom watcher only has to be exact: never
// lose an exit, never report one twice, never report a pid's exit for another
// process that reused the pid.
type ExitWatcher interface {
	Watch(pid int, onExit func(ExitStatus)) error
}

// pidfdWatcher is the default ExitWatcher. It opens a pidfd per process and
// waits on all of them in one epoll loop, reaping each exited process with
// waitid(P_PIDFD). Because a zombie keeps its pid until it is reaped, and only
// the watcher reaps, a pid can not be reused while it is watched.
//
// The loop goroutine and its epoll fd exist only while something is watched.
type pidfdWatcher struct {
	mu      sync.Mutex // guards the fields below
	epfd    int        // -1 while the loop is not running
	watches map[int32]*watch
	pids    map[int]int // watched pid -> watches, for the orphan reaper's look-ups
}

type watch struct {
	pid    int
	pidfd  int
	onExit func(ExitStatus)
	// handle is set when the pidfd is a Process's pidfdHandle (watchHandle):
	// the watch holds a reference to it instead of owning the fd.
	handle *pidfdHandle
}

// release lets go of the watch's reference to a shared pidfd, once the
// process is reaped and the fd is out of the epoll set.
func (wt *watch) release() {
	if wt.handle != nil {
		wt.handle.release()
	}
}

var (
	subreaperOnce sync.Once
	subreaperErr  error

	defaultWatcherOnce sync.Once
	defaultWatcher     atomic.Pointer[pidfdWatcher]
)

// becomeSubreaper makes this program the child subreaper, so that container
// processes are re-parented to it when runc exits and can be reaped here.
// It first checks the kernel has the pidfd calls every watcher relies on.
func becomeSubreaper() error {
	if err := checkKernel(); err != nil {
		return err
	}
	subreaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			subreaperErr = fmt.Errorf("runckit: prctl(PR_SET_CHILD_SUBREAPER): %w", err)
		}
	})
	return subreaperErr
}

// NewExitWatcher returns the pidfd-based watcher runckit uses by default. It
// makes the program a child subreaper and starts the orphan reaper, with
// the process-wide effects NewContainer describes. It never calls
// wait(-1): the program's own exec.Command children keep their exits.
// Containers share one watcher unless WithExitWatcher says otherwise; a
// separate one is useful only to isolate tests.
func NewExitWatcher() (ExitWatcher, error) {
	if err := becomeSubreaper(); err != nil {
		return nil, err
	}
	return newPidfdWatcher(), nil
}

// newPidfdWatcher makes a watcher and registers it with the orphan reaper,
// which must never reap what it watches.
func newPidfdWatcher() *pidfdWatcher {
	w := &pidfdWatcher{epfd: -1, watches: make(map[int32]*watch), pids: make(map[int]int)}
	orphans.register(w)
	return w
}

// sharedExitWatcher is the watcher of containers given none. Once the
// program has a ReapingExitWatcher, that is the one: a second watcher would
// see its pids reaped as orphans.
func sharedExitWatcher() (ExitWatcher, error) {
	if rw := activeReaper.Load(); rw != nil {
		return rw, nil
	}
	if err := becomeSubreaper(); err != nil {
		return nil, err
	}
	defaultWatcherOnce.Do(func() {
		defaultWatcher.Store(newPidfdWatcher())
	})
	return defaultWatcher.Load(), nil
}

// Watch opens a pidfd for pid and adds it to the epoll loop, starting the
// loop if it was idle.
func (w *pidfdWatcher) Watch(pid int, onExit func(ExitStatus)) error {
	if pid <= 0 {
		return fmt.Errorf("runckit: watch pid %d: invalid pid", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("runckit: pidfd_open(%d): %w", pid, err)
	}
	return w.watchPidfd(fd, pid, onExit)
}

// watchHandle watches the process behind h, a Process's own pidfd, without
// a second pidfd: one fd per process serves both signals and the watch. The
// pidfd names the process whatever becomes of its pid, so PID-reuse safety
// is the same as with a pidfd of the watcher's own; it stays open until
// both the watcher (once it has reaped) and the handle (closed by the exit
// handler) have let go.
func (w *pidfdWatcher) watchHandle(h *pidfdHandle, pid int, onExit func(ExitStatus)) error {
	h.share()
	orphans.trackSession(pid)
	if err := w.addWatchShared(h.fd, pid, onExit, h); err != nil {
		orphans.endSession(pid)
		h.release()
		return err
	}
	return nil
}

// handleWatcher is implemented by the default watchers, which can watch
// through a Process's own pidfd.
type handleWatcher interface {
	watchHandle(h *pidfdHandle, pid int, onExit func(ExitStatus)) error
}

// watchProcess has watcher watch p, whose pid is pid, through p's own pidfd
// when the watcher can. runckit's own watcher runs exit callbacks under a
// stall guard (loopGuard), so p's exit may be handed to the sink on its
// goroutine; any other watcher's goroutine is never lent to the sink.
func watchProcess(watcher ExitWatcher, p *Process, pid int) error {
	if hw, ok := watcher.(handleWatcher); ok && p.pidfd.open() {
		return hw.watchHandle(p.pidfd, pid, p.onExitInline)
	}
	return watcher.Watch(pid, p.onExit)
}

// watchPidfd watches the process behind pidfd, which it owns from then on.
// Adoption uses it directly: its pidfd was checked to name the right
// process, which a second pidfd_open by number could not promise.
func (w *pidfdWatcher) watchPidfd(fd, pid int, onExit func(ExitStatus)) error {
	// A host-PID container's process leads a session that its background
	// children stay in: the reaper takes them by it once they are orphans.
	// It is noted before the watch, while nothing can reap pid, so that its
	// end is always noted after it; and outside w.mu, as the reaper takes
	// its own lock before w.mu.
	orphans.trackSession(pid)
	if err := w.addWatch(fd, pid, onExit); err != nil {
		orphans.endSession(pid)
		return err
	}
	return nil
}

// addWatch registers the pidfd with the epoll loop.
func (w *pidfdWatcher) addWatch(fd, pid int, onExit func(ExitStatus)) error {
	return w.addWatchShared(fd, pid, onExit, nil)
}

// addWatchShared is addWatch for a pidfd the watcher owns (handle nil) or
// shares. A shared pidfd is never closed here on failure: its handle keeps it.
func (w *pidfdWatcher) addWatchShared(fd, pid int, onExit func(ExitStatus), handle *pidfdHandle) error {
	closeFd := func() {
		if handle == nil {
			unix.Close(fd)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// The loop is started only once its first pidfd is registered, so a loop
	// never blocks on an empty epoll set that nobody will close.
	startLoop := false
	if w.epfd < 0 {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			closeFd()
			return fmt.Errorf("runckit: epoll_create1: %w", err)
		}
		w.epfd = epfd
		startLoop = true
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		closeFd()
		if startLoop {
			unix.Close(w.epfd)
			w.epfd = -1
		}
		return fmt.Errorf("runckit: epoll_ctl add pidfd of %d: %w", pid, err)
	}
	w.watches[int32(fd)] = &watch{pid: pid, pidfd: fd, onExit: onExit, handle: handle}
	w.pids[pid]++
	if startLoop {
		go w.loop(w.epfd)
	}
	return nil
}

// watching reports whether pid is being watched.
func (w *pidfdWatcher) watching(pid int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return watchesPid(w, pid)
}

// drop filters xs, in place, down to those known does not report, under
// w.mu.
func (w *pidfdWatcher) drop(xs []int, known func(w *pidfdWatcher, x int) bool) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := xs[:0]
	for _, x := range xs {
		if !known(w, x) {
			kept = append(kept, x)
		}
	}
	return kept
}

// watchesPid and watchesFd tell drop what w watches; w.mu is held.
func watchesPid(w *pidfdWatcher, pid int) bool { return w.pids[pid] > 0 }
func watchesFd(w *pidfdWatcher, fd int) bool   { return w.watches[int32(fd)] != nil }

func (w *pidfdWatcher) loop(epfd int) {
	g := newLoopGuard(w, epfd)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			panic(fmt.Sprintf("runckit: epoll_wait: %v", err))
		}
		var ready []*watch
		w.mu.Lock()
		for _, ev := range events[:n] {
			if wt, ok := w.watches[ev.Fd]; ok {
				ready = append(ready, wt)
			}
		}
		w.mu.Unlock()
		for _, wt := range ready {
			// Reap before forgetting: a reaping watcher must see a pid as
			// watched until it has been reaped here. Report each exit as
			// soon as it is reaped, outside the lock (onExit takes
			// container locks).
			st := reapPidfd(wt.pidfd)
			orphans.endSession(wt.pid)
			idle := w.forget(epfd, wt)
			// The watcher is done with the pidfd: let go of it before the
			// callback, whose exit handler closes the process's own
			// reference, so that the fd is closed when Wait returns.
			wt.release()
			if idle {
				// Nothing is left to watch and this loop ends: the
				// callback holds up nothing else.
				wt.onExit(st)
				return
			}
			if !g.run(func() { wt.onExit(st) }) {
				return // a new loop took over; the rest of ready is still in epfd
			}
		}
	}
}

// callbackStall is how long an exit callback may run before the watcher's
// loop is handed to a new goroutine. Callbacks deliver events to the sink
// (onExitInline), and a sink may be slow: other processes' exits must not
// wait behind it (DESIGN.md rule 5).
const callbackStall = time.Millisecond

// loopGuard hands a watcher's epoll loop to a new goroutine when an exit
// callback outlasts callbackStall. The stalled goroutine finishes its
// callback and then leaves the loop; the exits it had yet to handle are
// still registered (level-triggered), so the new loop finds them.
type loopGuard struct {
	w     *pidfdWatcher
	epfd  int
	timer *time.Timer
	// inCallback is set while this loop's goroutine runs a callback;
	// whoever clears it first, the goroutine on return or the timer,
	// decides whether the loop stays or moves.
	inCallback atomic.Bool
}

func newLoopGuard(w *pidfdWatcher, epfd int) *loopGuard {
	g := &loopGuard{w: w, epfd: epfd}
	g.timer = time.AfterFunc(time.Hour, g.takeOver)
	g.timer.Stop()
	return g
}

// run runs fn and reports whether this goroutine still owns the loop.
func (g *loopGuard) run(fn func()) (stayed bool) {
	g.inCallback.Store(true)
	g.timer.Reset(callbackStall)
	fn()
	g.timer.Stop()
	return g.inCallback.CompareAndSwap(true, false)
}

// takeOver runs in the timer's goroutine: if the callback is still running,
// this goroutine becomes the loop.
func (g *loopGuard) takeOver() {
	if g.inCallback.CompareAndSwap(true, false) {
		g.w.loop(g.epfd)
	}
}

// forget removes a reaped watch. When nothing is left to watch it closes
// epfd and reports true: the loop owns epfd and ends; a later Watch starts
// a new loop.
func (w *pidfdWatcher) forget(epfd int, wt *watch) (idle bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.watches, int32(wt.pidfd))
	if w.pids[wt.pid]--; w.pids[wt.pid] <= 0 {
		delete(w.pids, wt.pid)
	}
	unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, wt.pidfd, nil)
	if wt.handle == nil {
		unix.Close(wt.pidfd)
	}
	if len(w.watches) == 0 {
		unix.Close(epfd)
		w.epfd = -1
		return true
	}
	return false
}

// The causality rules: how an observed exit becomes an exit event.

// handleExitLocked records p's exit and publishes it in causal order: an
// exec's exit at once; init's only once no exec is starting or running.
func (c *Container) handleExitLocked(p *Process, st ExitStatus) {
	p.state = stateExited
	p.status = st
	p.pidfd.close()
	if p != c.init {
		c.publishExitLocked(p)
		c.execDoneLocked()
		return
	}
	c.initExited = true
	if c.sharedPID {
		// The rest of the cgroup was killed before c.mu was taken
		// (Process.exited); these are the execs runckit tracks.
		c.killExecsLocked()
	}
	if c.activeExecs > 0 {
		c.initPending = true
		return
	}
	c.publishExitLocked(p)
}

// execDoneLocked accounts for an exec that exited or failed to start, and
// releases init's exit if it was waiting for the last one.
func (c *Container) execDoneLocked() {
	c.activeExecs--
	if c.activeExecs == 0 && c.initPending {
		c.initPending = false
		c.publishExitLocked(c.init)
	}
}

// killExecsLocked SIGKILLs every running exec: in a shared PID namespace
// (the host's, or one joined by path) they outlive init, and init's exit is published only after theirs.
// Execs still inside runc exec are killed by the kernel or fail to start.
func (c *Container) killExecsLocked() {
	for _, p := range c.execs {
		if p.state == stateRunning {
			p.sigkilled = true
			p.pidfd.signal(syscall.SIGKILL)
		}
	}
}

// killCgroup SIGKILLs every process left in dirs, the container's cgroup,
// as runc kill --all does: in a shared PID namespace init's children and
// the execs' background children outlive init, and containerd's clients
// expect a container's processes gone once init's exit is reported. Each
// process is signalled through a pidfd opened before its cgroup is checked,
// so a pid reused meanwhile is never signalled. It makes passes until one
// finds nothing new, for a child forked while the first pass ran.
func killCgroup(dirs []cgroupDir) {
	if len(dirs) == 0 {
		return
	}
	seen := make(map[int]bool)
	for pass := 0; pass < 10; pass++ {
		found := false
		for _, d := range dirs {
			for _, pid := range cgroupTreePids(d.path) {
				if seen[pid] {
					continue
				}
				seen[pid], found = true, true
				fd, err := unix.PidfdOpen(pid, 0)
				if err != nil {
					continue // gone already
				}
				if inCgroups(pid, dirs) {
					unix.PidfdSendSignal(fd, syscall.SIGKILL, nil, 0)
				}
				unix.Close(fd)
			}
		}
		if !found {
			return
		}
	}
}

// processCgroups is pid's cgroup in each hierarchy mounted here, leaving
// out the hierarchies where it shares this program's cgroup (or the root):
// what a container's processes alone are in, when runckit did not compute
// it from the spec (systemd driver, adoption).
func processCgroups(pid int) []cgroupDir {
	cgs := pidCgroups(strconv.Itoa(pid))
	own := ownCgroups()
	var dirs []cgroupDir
	for _, m := range cgroupMounts() {
		p, ok := cgs[m.hierarchy]
		if !ok || p == "/" || p == own[m.hierarchy] {
			continue
		}
		rel, err := filepath.Rel(m.root, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		dirs = append(dirs, cgroupDir{hierarchy: m.hierarchy, procPath: p, path: filepath.Join(m.point, rel)})
	}
	return dirs
}

func (c *Container) publishExitLocked(p *Process) {
	if c.oomMayExplainLocked(p) {
		// The kernel counts an OOM kill before the victim dies: an OOM
		// that killed this process is always seen here, and published
		// before its exit.
		c.checkOOMLocked()
	}
	c.publishLocked(Event{Kind: EventExit, ExecID: p.id, Pid: p.pid, Status: p.status})
	if p.io.hasOutputCopies() {
		go p.finish(p.io)
	} else {
		p.finish(p.io) // nothing to wait for: no goroutine per exit
	}
}

// oomMayExplainLocked reports whether p's exit must wait for a look at the
// OOM kill counter. Init's always does, for kills of processes runckit
// does not track. An exec's does when it died of SIGKILL, unless runckit
// sent that SIGKILL itself and no OOM notice is pending: a burst of
// Kill(SIGKILL) then costs no read of a cgroup file per exit, which takes
// milliseconds while the cgroup's processes die.
func (c *Container) oomMayExplainLocked(p *Process) bool {
	if p == c.init {
		return true
	}
	if p.status.Signal != syscall.SIGKILL {
		return false
	}
	return !p.sigkilled || c.oom.mayHaveKilled()
}

// siginfoChild is the SIGCHLD view of siginfo_t on Linux (64-bit layout):
// after signo, errno, code and padding come si_pid, si_uid and si_status.
type siginfoChild struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	UID    uint32
	Status int32
	_      [100]byte
}

// reapPidfd collects the exit status of the process behind pidfd. A process
// that is not our child (adopted from an earlier run) can be seen to exit but
// not reaped; its status is reported as unknown.
func reapPidfd(pidfd int) ExitStatus {
	var info siginfoChild
	for {
		err := unix.Waitid(unix.P_PIDFD, pidfd, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		now := time.Now()
		if err != nil {
			return ExitStatus{Code: 255, ExitedAt: now, Unknown: true}
		}
		return statusFromSiginfo(info.Code, info.Status, now)
	}
}

func statusFromSiginfo(code, status int32, at time.Time) ExitStatus {
	switch code {
	case cldExited:
		return ExitStatus{Code: int(status), ExitedAt: at}
	case cldKilled, cldDumped:
		return ExitStatus{Code: 128 + int(status), Signal: syscall.Signal(status), ExitedAt: at}
	}
	return ExitStatus{Code: 255, ExitedAt: at, Unknown: true}
}

// pidfdHandle is a pidfd held by a Process for signalling: a signal sent
// through it can only reach that process, never a later user of its pid.
//
// The fd is reference counted, so that a signal need not hold the container
// lock across pidfd_send_signal (a SIGKILL wakes its target, and the
// sender's thread may be preempted there): the handle itself, a watcher
// that watches through it (share) and each signal in flight hold a
// reference, and the last to let go closes fd.
type pidfdHandle struct {
	fd       int          // set once, valid while refs > 0
	refs     atomic.Int32 // references to fd
	released atomic.Bool  // close has dropped the handle's own reference
}

func openPidfd(pid int) (*pidfdHandle, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("runckit: pidfd_open(%d): %w", pid, os.NewSyscallError("pidfd_open", err))
	}
	h := &pidfdHandle{fd: fd}
	h.refs.Store(1)
	return h, nil
}

// share gives a watcher its own reference to the pidfd, dropped with
// release once the watch is over.
func (h *pidfdHandle) share() { h.refs.Add(1) }

// acquire takes a reference unless the fd is already closed.
func (h *pidfdHandle) acquire() bool {
	for {
		n := h.refs.Load()
		if n <= 0 {
			return false
		}
		if h.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference; the last one closes the fd.
func (h *pidfdHandle) release() {
	if h.refs.Add(-1) == 0 {
		unix.Close(h.fd)
	}
}

// open reports whether the handle has not been closed: its fd may then be
// used (duplicated, polled) by a caller that holds the lock close is called
// under.
func (h *pidfdHandle) open() bool { return h != nil && !h.released.Load() }

// signal sends sig through the pidfd; once the handle is closed (the exit
// was handled) the process is gone: ESRCH. It needs no lock.
func (h *pidfdHandle) signal(sig syscall.Signal) error {
	if !h.open() || !h.acquire() {
		return syscall.ESRCH
	}
	defer h.release()
	return unix.PidfdSendSignal(h.fd, sig, nil, 0)
}

// close drops the handle's own reference; safe on nil and more than once.
func (h *pidfdHandle) close() {
	if h != nil && h.released.CompareAndSwap(false, true) {
		h.release()
	}
}

// reapPid waits for our child pid by pid. It is the fallback for when no
// pidfd could be had; the pid is safe to use because the child is unreaped.
func reapPid(pid int) ExitStatus {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		now := time.Now()
		switch {
		case err != nil:
			return ExitStatus{Code: 255, ExitedAt: now, Unknown: true}
		case ws.Signaled():
			return ExitStatus{Code: 128 + int(ws.Signal()), Signal: ws.Signal(), ExitedAt: now}
		}
		return ExitStatus{Code: ws.ExitStatus(), ExitedAt: now}
	}
}

// si_code values for SIGCHLD (include/uapi/asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

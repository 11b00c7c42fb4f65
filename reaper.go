package runckit

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// ReapingExitWatcher is the ExitWatcher for a program dedicated to running
// containers, such as a shim. Besides watching container processes through
// pidfds as the default watcher does, it reaps every other child that
// exits: orphans re-parented to the program, which is a subreaper, would
// otherwise stay zombies.
//
// It reaps only children nobody has claimed: processes being watched, runc
// invocations (it installs a go-runc monitor that claims them) and, while a
// runc create or exec is under way, everything, because the new process is
// not claimed until runc has reported its pid. A program that also starts
// children with os/exec directly must not use it: their exits could be
// reaped before exec.Cmd.Wait sees them.
type ReapingExitWatcher struct {
	*pidfdWatcher

	mu      sync.Mutex  // guards the fields below
	claimed map[int]int // pid -> number of claims (runc commands)
	holds   int         // runc create/exec invocations in flight

	signals chan os.Signal
	stop    chan struct{}
	done    chan struct{}
}

var (
	reapingOnce    sync.Once
	reapingWatcher *ReapingExitWatcher
	reapingErr     error
	// activeReaper is reapingWatcher once it runs, for sharedExitWatcher.
	activeReaper atomic.Pointer[ReapingExitWatcher]
)

// NewReapingExitWatcher returns the program's ReapingExitWatcher, starting it
// on first use, and makes go-runc use its monitor. There is one per program:
// reaping is a property of the process, not of a container. Call it before
// any runc invocation (go-runc's monitor is a global), and from then on
// containers given no watcher use it too.
func NewReapingExitWatcher() (*ReapingExitWatcher, error) {
	reapingOnce.Do(func() {
		if err := becomeSubreaper(); err != nil {
			reapingErr = err
			return
		}
		w := &ReapingExitWatcher{
			pidfdWatcher: &pidfdWatcher{epfd: -1, watches: make(map[int32]*watch)},
			claimed:      make(map[int]int),
			signals:      make(chan os.Signal, 1),
			stop:         make(chan struct{}),
			done:         make(chan struct{}),
		}
		signal.Notify(w.signals, syscall.SIGCHLD)
		runc.Monitor = &claimingMonitor{w: w}
		go w.loop()
		reapingWatcher = w
		activeReaper.Store(w)
	})
	return reapingWatcher, reapingErr
}

// holdReaping stops orphan reaping until the returned func is called. The
// container code holds it from a runc create or exec until the new
// process's pid is watched.
func (w *ReapingExitWatcher) holdReaping() (release func()) {
	w.mu.Lock()
	w.holds++
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		w.holds--
		w.mu.Unlock()
		w.kick() // orphans may have been skipped meanwhile
	}
}

func (w *ReapingExitWatcher) claim(pid int) {
	w.mu.Lock()
	w.claimed[pid]++
	w.mu.Unlock()
}

func (w *ReapingExitWatcher) unclaim(pid int) {
	w.mu.Lock()
	if w.claimed[pid]--; w.claimed[pid] <= 0 {
		delete(w.claimed, pid)
	}
	w.mu.Unlock()
}

func (w *ReapingExitWatcher) kick() {
	select {
	case w.signals <- syscall.SIGCHLD:
	default:
	}
}

func (w *ReapingExitWatcher) loop() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case <-w.signals:
			w.reapOrphans()
		}
	}
}

// reapOrphans reaps every zombie child that no one has claimed. It looks
// before it reaps (through /proc) so that it never takes a claimed exit.
func (w *ReapingExitWatcher) reapOrphans() {
	for _, pid := range zombieChildPids() {
		if !w.unclaimed(pid) {
			continue
		}
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
}

// unclaimed reports whether pid may be reaped as an orphan.
func (w *ReapingExitWatcher) unclaimed(pid int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.holds > 0 || w.claimed[pid] > 0 {
		return false
	}
	// Containers made before the reaper existed use the default watcher.
	if dw := defaultWatcher.Load(); dw != nil && dw.watching(pid) {
		return false
	}
	return !w.pidfdWatcher.watching(pid)
}

// zombieChildPids lists this process's children that have exited and not
// been reaped.
func zombieChildPids() []int {
	var pids []int
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(f)
			if err == nil && isZombie(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func isZombie(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// contain parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] == 'Z'
}

// claimingMonitor is the go-runc ProcessMonitor installed by the reaping
// watcher: each runc invocation's pid is claimed from fork until
// exec.Cmd.Wait has reaped it.
type claimingMonitor struct{ w *ReapingExitWatcher }

func (m *claimingMonitor) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	return m.start(cmd, false)
}

func (m *claimingMonitor) StartLocked(cmd *exec.Cmd) (chan runc.Exit, error) {
	return m.start(cmd, true)
}

func (m *claimingMonitor) start(cmd *exec.Cmd, lockThread bool) (chan runc.Exit, error) {
	// Hold reaping across the fork: the pid is unknown until Start returns.
	release := m.w.holdReaping()
	started := make(chan error, 1)
	ec := make(chan runc.Exit, 1)
	go func() {
		if lockThread {
			// Pdeathsig is tied to the forking thread.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		m.w.claim(cmd.Process.Pid)
		started <- nil
		status := 0
		if err := cmd.Wait(); err != nil {
			status = 255
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			}
		}
		m.w.unclaim(cmd.Process.Pid)
		ec <- runc.Exit{Timestamp: time.Now(), Pid: cmd.Process.Pid, Status: status}
		close(ec)
	}()
	err := <-started
	release()
	if err != nil {
		return nil, err
	}
	return ec, nil
}

func (m *claimingMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

// reapHolder is implemented by watchers that reap orphans and so must be
// told when a runc invocation may leave an unwatched child behind.
type reapHolder interface {
	holdReaping() (release func())
}

// holdReaping holds w's orphan reaping if it does any.
func holdReaping(w ExitWatcher) func() {
	if h, ok := w.(reapHolder); ok {
		return h.holdReaping()
	}
	return func() {}
}

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

// orphanReaper reaps zombie children that nobody watches. As a child
// subreaper the program inherits more than the container processes it
// watches: when runc create or exec fails (a kill or delete raced it),
// runc's own helpers (runc:[1:CHILD], runc:[2:INIT]) are re-parented here.
// Left unreaped, a helper that was in the container's PID namespace keeps
// the namespace's init from ever finishing its exit.
//
// By default it reaps only such runc helpers and processes of runckit's own
// containers' PID namespaces that nobody watches, so the program's own
// exec.Command children are never touched. A ReapingExitWatcher switches
// it to reaping every unclaimed child.
//
// A zombie is reaped only if no watcher watches its pid, no go-runc command
// claims it, and no runc create or exec is in flight (its new process is
// not watched until runc has reported the pid).
type orphanReaper struct {
	mu       sync.Mutex  // guards the fields below
	claimed  map[int]int // pid -> claims by go-runc commands (shim mode)
	holds    int         // runc create/exec invocations in flight
	reapAll  bool        // shim mode: reap every unclaimed zombie
	watchers []*pidfdWatcher
	started  bool

	signals chan os.Signal
}

// orphans is the program's one orphan reaper: SIGCHLD and subreaping are
// properties of the process.
var orphans = &orphanReaper{claimed: make(map[int]int), signals: make(chan os.Signal, 1)}

// register adds a watcher whose pids must never be reaped as orphans, and
// starts the reaper on first use.
func (r *orphanReaper) register(w *pidfdWatcher) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watchers = append(r.watchers, w)
	if !r.started {
		r.started = true
		signal.Notify(r.signals, syscall.SIGCHLD)
		go r.loop()
	}
}

// holdReaping stops orphan reaping until the returned func is called.
func (r *orphanReaper) holdReaping() (release func()) {
	r.mu.Lock()
	r.holds++
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		r.holds--
		r.mu.Unlock()
		r.kick() // zombies may have been skipped meanwhile
	}
}

func (r *orphanReaper) claim(pid int) {
	r.mu.Lock()
	r.claimed[pid]++
	r.mu.Unlock()
}

func (r *orphanReaper) unclaim(pid int) {
	r.mu.Lock()
	if r.claimed[pid]--; r.claimed[pid] <= 0 {
		delete(r.claimed, pid)
	}
	r.mu.Unlock()
}

func (r *orphanReaper) kick() {
	select {
	case r.signals <- syscall.SIGCHLD:
	default:
	}
}

// loop runs for the life of the program, like the SIGCHLD handler it is.
func (r *orphanReaper) loop() {
	for range r.signals {
		deferred := false
		for _, pid := range zombieChildPids() {
			ok, held := r.reapable(pid)
			if ok {
				var ws unix.WaitStatus
				unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			}
			deferred = deferred || held
		}
		if deferred {
			// A zombie waits only for runc invocations in flight; their
			// release kicks the loop, and this looks again regardless, so
			// no interleaving of kicks can strand it.
			time.AfterFunc(orphanRescanDelay, r.kick)
		}
	}
}

// orphanRescanDelay is how soon a zombie skipped while reaping was held is
// looked at again.
const orphanRescanDelay = 50 * time.Millisecond

// reapable reports whether zombie pid may be reaped as an orphan, and
// whether the answer was no only because reaping is held. It looks before
// it reaps, through /proc, so it never takes a claimed exit.
func (r *orphanReaper) reapable(pid int) (ok, held bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holds > 0 {
		return false, true
	}
	if r.claimed[pid] > 0 {
		return false, false
	}
	for _, w := range r.watchers {
		if w.watching(pid) {
			return false, false
		}
	}
	return r.reapAll || isRuncHelper(pid) || inManagedPIDNamespace(pid), false
}

// managedPIDNamespaces holds the PID namespaces of runckit's containers
// (by inode), so that the reaper takes only their processes: a container
// the program runs some other way (go-runc directly) stays its own.
var managedPIDNamespaces = struct {
	sync.Mutex
	inodes map[uint64]int
}{inodes: make(map[uint64]int)}

// pidNamespaceOf returns the inode of pid's PID namespace.
func pidNamespaceOf(pid int) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/pid", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// manageNamespace marks the PID namespace of init pid as a runckit
// container's; the returned func unmarks it.
func manageNamespace(pid int) (release func()) {
	ino, err := pidNamespaceOf(pid)
	if err != nil {
		return func() {}
	}
	return manageNamespaceInode(ino)
}

// manageNamespaceInode marks the PID namespace with inode ino, found by a
// caller that made sure whose it is (adoption, where init is not our child).
func manageNamespaceInode(ino uint64) (release func()) {
	managedPIDNamespaces.Lock()
	managedPIDNamespaces.inodes[ino]++
	managedPIDNamespaces.Unlock()
	return func() {
		managedPIDNamespaces.Lock()
		if managedPIDNamespaces.inodes[ino]--; managedPIDNamespaces.inodes[ino] <= 0 {
			delete(managedPIDNamespaces.inodes, ino)
		}
		managedPIDNamespaces.Unlock()
	}
}

// inManagedPIDNamespace reports whether pid lives in the private PID
// namespace of one of runckit's containers. Such a process started behind
// runckit's back (runc exec --detach from a shell) is re-parented here and,
// unreaped, would keep the namespace's init from ever finishing its exit.
func inManagedPIDNamespace(pid int) bool {
	ino, err := pidNamespaceOf(pid)
	if err != nil {
		return false
	}
	managedPIDNamespaces.Lock()
	defer managedPIDNamespaces.Unlock()
	return managedPIDNamespaces.inodes[ino] > 0
}

// isRuncHelper reports whether pid is one of runc's internal processes,
// which rename themselves runc:[0:PARENT], runc:[1:CHILD], runc:[2:INIT].
func isRuncHelper(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.HasPrefix(string(comm), "runc:[")
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

// holdReaping holds orphan reaping across a runc invocation whose new
// process is not watched yet. Every watcher needs it: the reaper runs
// whatever watcher a container uses.
func holdReaping(ExitWatcher) func() {
	return orphans.holdReaping()
}

// ReapingExitWatcher is the ExitWatcher for a program dedicated to running
// containers, such as a shim. Besides watching container processes through
// pidfds as the default watcher does, it makes the program reap every
// other child that exits: orphans re-parented to it, as a subreaper, would
// otherwise stay zombies.
//
// It reaps only children nobody has claimed: processes being watched, runc
// invocations (it installs a go-runc monitor that claims them) and, while a
// runc create or exec is under way, everything. A program that also starts
// children with os/exec directly must not use it: their exits could be
// reaped before exec.Cmd.Wait sees them.
type ReapingExitWatcher struct {
	*pidfdWatcher
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
		w := &ReapingExitWatcher{pidfdWatcher: newPidfdWatcher()}
		orphans.mu.Lock()
		orphans.reapAll = true
		orphans.mu.Unlock()
		runc.Monitor = claimingMonitor{}
		reapingWatcher = w
		activeReaper.Store(w)
		orphans.kick()
	})
	return reapingWatcher, reapingErr
}

// claimingMonitor is the go-runc ProcessMonitor installed by the reaping
// watcher: each runc invocation's pid is claimed from fork until
// exec.Cmd.Wait has reaped it.
type claimingMonitor struct{}

func (m claimingMonitor) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	return m.start(cmd, false)
}

func (m claimingMonitor) StartLocked(cmd *exec.Cmd) (chan runc.Exit, error) {
	return m.start(cmd, true)
}

func (claimingMonitor) start(cmd *exec.Cmd, lockThread bool) (chan runc.Exit, error) {
	// Hold reaping across the fork: the pid is unknown until Start returns.
	release := orphans.holdReaping()
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
		orphans.claim(cmd.Process.Pid)
		started <- nil
		status := 0
		if err := cmd.Wait(); err != nil {
			status = 255
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			}
		}
		orphans.unclaim(cmd.Process.Pid)
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

func (claimingMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

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
	"unsafe"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// orphanReaper reaps zombie children that nobody can wait for. As a child
// subreaper the program inherits more than the container processes it
// watches: runc's helpers when runc create or exec fails or is cancelled,
// the background children of a host-PID container's processes, and the
// background children of the program's own os/exec children. Left
// unreaped they pile up as zombies; a helper that was in a container's PID
// namespace keeps the namespace's init from ever finishing its exit.
//
// By default it reaps a zombie child that no watcher watches, no go-runc
// command claims and no pidfd of this process names (os/exec holds one for
// each child until Wait), when it is
//   - one of runc's helpers: named runc:[...] at any stage, or plain runc
//     before it renames itself, in the program's session;
//   - in the private PID namespace of one of runckit's containers;
//   - in the session of a process runckit watched in the host PID
//     namespace: runc makes every container process a session leader, and
//     its background children stay in its session;
//   - an orphan of the program's own descendants: in the program's session
//     and PID namespace (ReapProgramOrphans turns this off).
//
// A container the program runs some other way is left alone: runc made its
// processes session leaders of sessions runckit never watched.
//
// A cgroup would name a container's processes better than a session, but a
// zombie has left its cgroups: /proc/<pid>/cgroup shows the root for it.
//
// A ReapingExitWatcher switches it to reaping every zombie child that is
// not watched, claimed or named by a pidfd.
//
// The one process a runc create or exec in flight is about to report is
// not reaped until it is watched (holdScope).
type orphanReaper struct {
	mu      sync.Mutex  // guards the fields below
	claimed map[int]int // pid -> claims by go-runc commands (shim mode)
	// holds counts the runc create/exec invocations in flight whose new
	// process is not watched yet, by where that process may be (holdScope).
	holds    map[uint64]int
	reapAll  bool // shim mode: reap every unclaimed zombie
	watchers []*pidfdWatcher
	started  bool
	// keepProgramOrphans is set by ReapProgramOrphans(false).
	keepProgramOrphans bool
	// sessions are those led by processes runckit watched in the program's
	// PID namespace: true while the leader is watched, false once it has
	// exited, until no process of the session is left (so that a reused
	// session id is never taken for runckit's).
	sessions   map[int]bool
	draining   int           // sessions whose leader has exited
	pruneDelay time.Duration // until the next look for empty sessions
	pruneArmed bool          // a timer will kick the loop to prune

	signals chan os.Signal
}

// orphans is the program's one orphan reaper: SIGCHLD and subreaping are
// properties of the process.
var orphans = &orphanReaper{
	claimed:  make(map[int]int),
	holds:    make(map[uint64]int),
	sessions: make(map[int]bool),
	signals:  make(chan os.Signal, 1),
}

// ReapProgramOrphans sets whether runckit reaps the orphans of the
// program's own descendants. Once a container exists the program is a
// child subreaper, so what its os/exec children leave running in the
// background (sh -c 'sleep 1 &') is re-parented to it when they exit, and
// stays a zombie unless someone reaps it. runckit does, by default: a
// zombie in the program's session and PID namespace that no pidfd of the
// program names. That is exact for children started with os/exec or
// os.StartProcess, whose os.Process holds a pidfd until Wait: their exits
// are never taken. It is not exact for children forked some other way
// (syscall.ForkExec, cgo) or whose os.Process was Released, which a reaper
// can not tell from orphans; a program that waits for such children by pid
// should call ReapProgramOrphans(false) before its first container, and
// reap its own orphans.
func ReapProgramOrphans(on bool) {
	orphans.mu.Lock()
	orphans.keepProgramOrphans = !on
	orphans.mu.Unlock()
	if on {
		orphans.kick()
	}
}

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

// holdScope keeps the zombies that may be the new process of a runc create
// or exec in flight from being reaped as orphans, until the returned func
// is called (once that process is watched). runc's new process becomes this
// program's child early, before runc has written its pid file: its parent,
// runc's helper, exits while runc still runs. So what may be it is told by
// where it lives: an exec's process is in its container's init's PID
// namespace, whoever owns it (scope is that namespace's inode: the
// container's own, another container's it joined, or the host's); a
// create's init is in a namespace runckit does not know yet (scope 0 holds
// every namespace that is not a known container's). Zombies elsewhere, runc's helpers that never become the new
// process among them, are reaped at once: a dying init may be waiting for
// them, however many other runc calls are in flight.
func (r *orphanReaper) holdScope(scope uint64) (release func()) {
	r.mu.Lock()
	r.holds[scope]++
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		if r.holds[scope]--; r.holds[scope] <= 0 {
			delete(r.holds, scope)
		}
		r.mu.Unlock()
		r.kick() // a zombie may have been skipped meanwhile
	}
}

// heldZombie reports whether zombie pid may be the new process of a runc
// create or exec in flight.
func (r *orphanReaper) heldZombie(pid int) bool {
	r.mu.Lock()
	n := len(r.holds)
	r.mu.Unlock()
	if n == 0 {
		return false
	}
	// runc's first two helpers never become the new process.
	switch commOf(pid) {
	case "runc:[0:PARENT]", "runc:[1:CHILD]":
		return false
	}
	ns, err := pidNamespaceOf(pid)
	if err != nil {
		return true
	}
	managed := isManagedPIDNamespace(ns)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.holds[ns] > 0 || (r.holds[0] > 0 && !managed)
}

// unwatched filters xs (pids, or fds with watchesFd) down to those no
// watcher knows of, taking each lock once for the whole list: a lock per
// pid, contended by the watchers in a burst of exits, made one pass over a
// thousand children cost a hundred milliseconds.
func (r *orphanReaper) unwatched(xs []int, known func(w *pidfdWatcher, x int) bool) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.watchers {
		xs = w.drop(xs, known)
	}
	return xs
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
		if !anyZombieChild() {
			// Most SIGCHLDs are a watched child's, reaped by its watcher
			// by now: no need to list every child.
			r.pruneSessions()
			continue
		}
		t0 := time.Now()
		deferred := false
		var self selfView
		// A watched child is its watcher's to reap: drop it before reading
		// /proc, which for thousands of live containers would cost a file
		// read each on every SIGCHLD.
		for _, pid := range r.unwatched(childPids(), watchesPid) {
			if !isZombie(pid) {
				continue
			}
			ok, held := r.reapable(pid, &self)
			if ok {
				reapZombie(pid)
			}
			deferred = deferred || held
		}
		if deferred {
			// A zombie waits only for runc invocations in flight; their
			// release kicks the loop, and this looks again regardless, so
			// no interleaving of kicks can strand it.
			time.AfterFunc(orphanRescanDelay, r.kick)
		}
		r.pruneSessions()
		// Listing the children costs the kernel time in their number, and
		// a burst of exits kicks the loop again at once: rest as long as
		// the pass took (at most orphanPassRest), so that with thousands of
		// children the reaper takes at most half a CPU from the watchers.
		// Kicks meanwhile make one pass.
		time.Sleep(min(time.Since(t0), orphanPassRest))
	}
}

// orphanPassRest bounds the reaper's rest after a pass.
const orphanPassRest = 50 * time.Millisecond

// anyZombieChild reports whether some child of this process has exited and
// not been reaped, without reaping it. An error counts as yes.
func anyZombieChild() bool {
	var info siginfoChild
	for {
		err := unix.Waitid(unix.P_ALL, 0, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			return false
		}
		return err != nil || info.Pid != 0
	}
}

// orphanRescanDelay is how soon a zombie skipped while reaping was held is
// looked at again.
const orphanRescanDelay = 50 * time.Millisecond

// reapable reports whether zombie pid may be reaped as an orphan, and
// whether the answer was no only because reaping is held. It looks before
// it reaps, through /proc, so it never takes a claimed exit.
func (r *orphanReaper) reapable(pid int, self *selfView) (ok, held bool) {
	if r.heldZombie(pid) {
		return false, true
	}
	r.mu.Lock()
	if r.claimed[pid] > 0 {
		r.mu.Unlock()
		return false, false
	}
	for _, w := range r.watchers {
		if w.watching(pid) {
			r.mu.Unlock()
			return false, false
		}
	}
	reapAll, keepProgram := r.reapAll, r.keepProgramOrphans
	r.mu.Unlock()

	// The zombie was listed before the fds are read, and a pidfd made by
	// clone exists before its child runs: a child that os/exec still waits
	// for is always seen here.
	if self.pidfdNames(r, pid) {
		return false, false
	}
	if reapAll || isRuncHelper(pid) || inManagedPIDNamespace(pid) {
		return true, false
	}
	sid, err := sessionOf(pid)
	if err != nil {
		return false, false
	}
	if sid != pid && r.inRunckitSession(sid) {
		return true, false
	}
	if sid != self.session() || !self.sameNamespace(pid) {
		return false, false
	}
	// runc's helper is plain "runc" until it renames itself runc:[0:PARENT]
	// (a create cancelled that early leaves it so); a runc the program ran
	// itself with os/exec holds a pidfd and was ruled out above.
	return !keepProgram || commOf(pid) == "runc", false
}

// selfView is what one pass of the reaper learns about this process, read
// once and only when needed.
type selfView struct {
	sid     int
	ns      uint64
	nsRead  bool
	pidfds  map[int]bool
	fdsRead bool
	fdsOK   bool
}

func (s *selfView) session() int {
	if s.sid == 0 {
		s.sid, _ = unix.Getsid(0)
	}
	return s.sid
}

// sameNamespace reports whether pid shares this process's PID namespace.
func (s *selfView) sameNamespace(pid int) bool {
	if !s.nsRead {
		s.nsRead = true
		s.ns, _ = pidNamespaceOf(os.Getpid())
	}
	ino, err := pidNamespaceOf(pid)
	return err == nil && s.ns != 0 && ino == s.ns
}

// pidfdNames reports whether a pidfd open in this process names pid: an
// os/exec child not yet waited for. When the fds can not be read every
// pid counts as named, so nothing is taken on a guess. The callers have
// dropped watched pids: the watchers' own pidfds name none of them and are
// not read.
func (s *selfView) pidfdNames(r *orphanReaper, pid int) bool {
	if !s.fdsRead {
		s.fdsRead = true
		s.pidfds, s.fdsOK = pidfdPids(r)
	}
	return !s.fdsOK || s.pidfds[pid]
}

// pidfdPids returns the pids named by the pidfds open in this process,
// leaving out the pidfds r's watchers watch through: with a thousand live
// containers, reading each of theirs cost a hundred milliseconds a pass.
func pidfdPids(r *orphanReaper) (map[int]bool, bool) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, false
	}
	fds := make([]int, 0, len(entries))
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, fd)
		}
	}
	pids := make(map[int]bool)
	// A watched fd is closed only after its watch is forgotten: one still
	// in a watcher names a watched process.
	for _, fd := range r.unwatched(fds, watchesFd) {
		name := strconv.Itoa(fd)
		if link, err := os.Readlink("/proc/self/fd/" + name); err != nil || link != "anon_inode:[pidfd]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + name)
		if err != nil {
			continue // closed since the listing
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "Pid:"); ok {
				if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && pid > 0 {
					pids[pid] = true
				}
			}
		}
	}
	return pids, true
}

// trackSession notes, when pid is a session leader in this program's PID
// namespace (a host-PID container's process: runc made it one), that its
// session is runckit's. A watcher calls it when it starts watching pid.
func (r *orphanReaper) trackSession(pid int) {
	if sid, err := sessionOf(pid); err != nil || sid != pid {
		return
	}
	ns, err := pidNamespaceOf(pid)
	if self, err2 := pidNamespaceOf(os.Getpid()); err != nil || err2 != nil || ns != self {
		return // a private namespace is recognised as a whole
	}
	r.mu.Lock()
	if watched, ok := r.sessions[pid]; ok && !watched {
		r.draining--
	}
	r.sessions[pid] = true
	r.mu.Unlock()
}

// endSession notes that the leader of session pid has exited: the session
// stays runckit's until none of its processes is left.
func (r *orphanReaper) endSession(pid int) {
	r.mu.Lock()
	if watched, ok := r.sessions[pid]; ok && watched {
		r.sessions[pid] = false
		r.draining++
		r.pruneDelay = 0 // look soon
	}
	r.mu.Unlock()
}

func (r *orphanReaper) inRunckitSession(sid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.sessions[sid]
	return ok
}

// Bounds of the delay between looks for sessions with no process left.
const (
	minPruneDelay = 100 * time.Millisecond
	maxPruneDelay = 5 * time.Second
)

// pruneSessions forgets the sessions whose leader has exited and which no
// process is left in. It runs after the pass that reaped their zombies; a
// session with processes left is looked at again later, less and less
// often. Until a session is forgotten its id can not be reused: a zombie
// still holds it.
func (r *orphanReaper) pruneSessions() {
	r.mu.Lock()
	if r.draining == 0 || r.pruneArmed {
		r.mu.Unlock()
		return
	}
	ended := make(map[int]bool)
	for sid, watched := range r.sessions {
		if !watched {
			ended[sid] = true
		}
	}
	r.mu.Unlock()

	inUse := sessionsInUse(ended)
	r.mu.Lock()
	defer r.mu.Unlock()
	for sid := range ended {
		if watched, ok := r.sessions[sid]; ok && !watched && !inUse[sid] {
			delete(r.sessions, sid)
			r.draining--
		}
	}
	if r.draining == 0 {
		r.pruneDelay = 0
		return
	}
	r.pruneDelay = min(max(2*r.pruneDelay, minPruneDelay), maxPruneDelay)
	r.pruneArmed = true
	time.AfterFunc(r.pruneDelay, func() {
		r.mu.Lock()
		r.pruneArmed = false
		r.mu.Unlock()
		r.kick()
	})
}

// sessionsInUse reports which of sids some process, zombies included, is
// still in. If /proc can not be read, all of them are.
func sessionsInUse(sids map[int]bool) map[int]bool {
	inUse := make(map[int]bool)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return sids
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if sid, err := sessionOf(pid); err == nil && sids[sid] {
			inUse[sid] = true
		}
	}
	return inUse
}

// sessionOf reads pid's session id from /proc/<pid>/stat; a zombie still
// has one.
func sessionOf(pid int) (int, error) {
	f := procStat(pid)
	if len(f) < 4 {
		return 0, errors.New("no stat for pid " + strconv.Itoa(pid))
	}
	return strconv.Atoi(f[3])
}

func commOf(pid int) string {
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSuffix(string(comm), "\n")
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

// manageNamespaceInode marks the PID namespace with inode ino as a runckit
// container's; the returned func unmarks it. The caller made sure whose it
// is (init is its unreaped child, or adoption checked it through a pidfd).
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
	return err == nil && isManagedPIDNamespace(ino)
}

// isManagedPIDNamespace reports whether the PID namespace with inode ino is
// one of runckit's containers'.
func isManagedPIDNamespace(ino uint64) bool {
	managedPIDNamespaces.Lock()
	defer managedPIDNamespaces.Unlock()
	return managedPIDNamespaces.inodes[ino] > 0
}

// isRuncHelper reports whether pid is one of runc's internal processes,
// which rename themselves runc:[0:PARENT], runc:[1:CHILD], runc:[2:INIT].
func isRuncHelper(pid int) bool {
	return strings.HasPrefix(commOf(pid), "runc:[")
}

func isZombie(pid int) bool {
	f := procStat(pid)
	return len(f) > 0 && f[0] == "Z"
}

// holdReaping keeps what may be the new process of a runc create or exec
// from being reaped as an orphan until it is watched; scope is as for
// holdScope. Every watcher needs it: the reaper runs whatever watcher a
// container uses.
func holdReaping(scope uint64) func() {
	return orphans.holdScope(scope)
}

// ReapingExitWatcher is the ExitWatcher for a program dedicated to running
// containers, such as a shim. Besides watching container processes through
// pidfds as the default watcher does, it makes the program reap every
// other child that exits: orphans re-parented to it, as a subreaper, would
// otherwise stay zombies.
//
// It reaps only children nobody has claimed: processes being watched, runc
// invocations (it installs a go-runc monitor that claims them), children a
// pidfd of the program names (os/exec holds one until Wait) and, while a
// runc create or exec is under way, everything. Children the program
// forks without os/exec (syscall.ForkExec, cgo) hold no pidfd: their exits
// could be reaped before the program waits for them.
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
	// No hold is needed across the fork: exec.Cmd holds a pidfd for the
	// child from clone on, and the reaper never takes a child a pidfd names.
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
	if err != nil {
		return nil, err
	}
	return ec, nil
}

func (claimingMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

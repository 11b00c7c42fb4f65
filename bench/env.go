package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/phase"
	"github.com/runckit/runckit/runckittest"
)

// env is the run's private world: a work directory holding the bundles and
// the runtime root, and every container made so far, so that close can
// delete whatever an error or interrupt left behind.
type env struct {
	work   string
	root   string // runc --root for runckit and the floor alike
	rootfs string
	floor  *runc.Runc

	mu sync.Mutex
	rk map[string]*runckit.Container
	fl map[string]int // floor container ID -> unreaped init pid, 0 when none
}

func newEnv() (*env, error) {
	rootfs, err := runckittest.SharedRootfs()
	if err != nil {
		return nil, fmt.Errorf("busybox rootfs: %w", err)
	}
	work, err := os.MkdirTemp("", "runckit-bench-")
	if err != nil {
		runckittest.Cleanup()
		return nil, err
	}
	runcPath, err := exec.LookPath("runc")
	if err != nil {
		os.RemoveAll(work)
		runckittest.Cleanup()
		return nil, err
	}
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		os.RemoveAll(work)
		runckittest.Cleanup()
		return nil, err
	}
	return &env{
		work:   work,
		root:   root,
		rootfs: rootfs,
		floor:  &runc.Runc{Command: runcPath, Root: root},
		rk:     make(map[string]*runckit.Container),
		fl:     make(map[string]int),
	}, nil
}

// close deletes every container still tracked, then anything runc still
// has in the root, and removes the work directory and the shared rootfs.
func (e *env) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var errs []error

	e.mu.Lock()
	var rks []*runckit.Container
	for _, c := range e.rk {
		rks = append(rks, c)
	}
	type fc struct {
		id  string
		pid int
	}
	var fls []fc
	for id, pid := range e.fl {
		fls = append(fls, fc{id, pid})
	}
	e.mu.Unlock()
	if len(rks)+len(fls) > 0 {
		fmt.Fprintf(os.Stderr, "bench: cleaning up %d runckit and %d floor containers\n", len(rks), len(fls))
	}
	parallelDo(ctx, len(rks), 8, func(i int) error {
		if err := e.deleteRunckit(ctx, rks[i], true); err != nil {
			errs = appendLocked(&e.mu, errs, err)
		}
		return nil
	})
	parallelDo(ctx, len(fls), 8, func(i int) error {
		if err := e.deleteFloor(ctx, fls[i].id, true); err != nil {
			errs = appendLocked(&e.mu, errs, err)
		}
		return nil
	})

	// Whatever is still in the root escaped the bookkeeping: a bug here or
	// in runckit. Delete it and say so.
	entries, _ := os.ReadDir(e.root)
	for _, ent := range entries {
		errs = append(errs, fmt.Errorf("runc state left in %s: %s", e.root, ent.Name()))
		e.floor.Delete(ctx, ent.Name(), &runc.DeleteOpts{Force: true})
	}
	reapZombies()
	if err := os.RemoveAll(e.work); err != nil {
		errs = append(errs, err)
	}
	runckittest.Cleanup()
	return errors.Join(errs...)
}

func appendLocked(mu *sync.Mutex, errs []error, err error) []error {
	mu.Lock()
	defer mu.Unlock()
	return append(errs, err)
}

// bundleDir is where container id's bundle lives.
func (e *env) bundleDir(id string) string { return filepath.Join(e.work, "bundles", id) }

// writeBundles writes one busybox bundle running args per ID. Each
// container has a bundle of its own: runckit keeps per-container files
// (pid file, log, options) in it.
func (e *env) writeBundles(ids []string, args ...string) error {
	spec := runckittest.NewSpec(e.rootfs, args...)
	for _, id := range ids {
		if err := runckittest.WriteBundle(e.bundleDir(id), spec); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) removeBundles(ids []string) {
	for _, id := range ids {
		os.RemoveAll(e.bundleDir(id))
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i)
	}
	return out
}

// newRunckit creates container id from its bundle with runckit.
func (e *env) newRunckit(ctx context.Context, id string, opts ...runckit.Option) (*runckit.Container, error) {
	opts = append([]runckit.Option{runckit.WithRuntimeRoot(e.root)}, opts...)
	c, err := runckit.NewContainer(ctx, id, e.bundleDir(id), opts...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.rk[id] = c
	e.mu.Unlock()
	return c, nil
}

// deleteRunckit deletes c, killing it first when force is set.
func (e *env) deleteRunckit(ctx context.Context, c *runckit.Container, force bool) error {
	var opts []runckit.DeleteOption
	if force {
		opts = append(opts, runckit.DeleteForce())
	}
	if err := c.Delete(ctx, opts...); err != nil {
		return fmt.Errorf("delete %s: %w", c.ID(), err)
	}
	e.mu.Lock()
	delete(e.rk, c.ID())
	e.mu.Unlock()
	return nil
}

// createFloor runs `runc create` for id through go-runc, as runckit does
// (pid file, stdio on /dev/null), and returns init's pid.
func (e *env) createFloor(ctx context.Context, id string) (int, error) {
	return e.createFloorTimed(ctx, id, nil)
}

// createFloorTimed is createFloor, timing runc create (with its IO) and the
// pid file read into rec when it is not nil.
func (e *env) createFloorTimed(ctx context.Context, id string, rec *phaseRecorder) (int, error) {
	t := time.Now()
	nio, err := runc.NewNullIO()
	if err != nil {
		return 0, err
	}
	defer nio.Close()
	pidFile := filepath.Join(e.bundleDir(id), floorPidFile)
	e.mu.Lock()
	e.fl[id] = 0 // tracked from now on: a failed create may leave state
	e.mu.Unlock()
	if err := e.floor.Create(ctx, id, e.bundleDir(id), &runc.CreateOpts{IO: nio, PidFile: pidFile}); err != nil {
		return 0, fmt.Errorf("runc create %s: %w", id, err)
	}
	if rec != nil {
		rec.since(flCreate, t)
		t = time.Now()
		defer rec.since(flPidFile, t)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", pidFile, err)
	}
	e.mu.Lock()
	e.fl[id] = pid
	e.mu.Unlock()
	return pid, nil
}

// waitFloor waits for the floor container's init to exit. Init is this
// program's child (it is re-parented to the subreaper when runc create
// exits), so wait4 on its pid is the cheapest exact wait there is.
func (e *env) waitFloor(id string, pid int) error {
	err := waitPid(pid, 0)
	if err == nil {
		e.mu.Lock()
		if _, ok := e.fl[id]; ok {
			e.fl[id] = 0
		}
		e.mu.Unlock()
	}
	return err
}

// deleteFloor runs `runc delete` for id and reaps init if nobody did.
func (e *env) deleteFloor(ctx context.Context, id string, force bool) error {
	if err := e.floor.Delete(ctx, id, &runc.DeleteOpts{Force: force}); err != nil {
		if _, serr := os.Stat(filepath.Join(e.root, id)); serr == nil {
			return fmt.Errorf("runc delete %s: %w", id, err)
		}
		// Never made it to runc's state (a failed create): nothing to do.
	}
	// Leave the bundle as the lifecycle found it, as runckit's Delete does
	// with its own files: the pid file is the floor's.
	os.Remove(filepath.Join(e.bundleDir(id), floorPidFile))
	e.mu.Lock()
	pid := e.fl[id]
	delete(e.fl, id)
	e.mu.Unlock()
	if pid > 0 {
		// runc delete --force SIGKILLed init; collect it, but do not hang
		// if it somehow lives on.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := waitPid(pid, unix.WNOHANG)
			if !errors.Is(err, errNotExited) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

var errNotExited = errors.New("not exited")

// floorPidFile is the floor's runc create --pid-file, in the bundle.
const floorPidFile = "init.pid"

func waitPid(pid, flags int) error {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, flags, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait4(%d): %w", pid, err)
		}
		if got == 0 {
			return errNotExited
		}
		return nil
	}
}

// reapZombies collects floor init processes that exited without being
// waited for (only on error paths). runckit reaps its own processes.
func reapZombies() {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		for _, f := range strings.Fields(string(data)) {
			pid, _ := strconv.Atoi(f)
			stat, _ := os.ReadFile("/proc/" + f + "/stat")
			if i := strings.LastIndexByte(string(stat), ')'); pid > 0 && i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
				var ws unix.WaitStatus
				unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			}
		}
	}
}

// parallelDo calls f(0..n-1), width at a time, and returns the first error;
// after an error no new calls start.
func parallelDo(ctx context.Context, n, width int, f func(i int) error) error {
	if width < 1 {
		width = 1
	}
	next := make(chan int)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	failed := make(chan struct{})
	for w := 0; w < width && w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
						close(failed)
					}
					mu.Unlock()
				}
			}
		}()
	}
loop:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-failed:
			break loop
		case <-ctx.Done():
			mu.Lock()
			if first == nil {
				first = ctx.Err()
			}
			mu.Unlock()
			break loop
		}
	}
	close(next)
	wg.Wait()
	return first
}

// ---- exec burst ----

// newBurstContainer starts the container the exec bursts run in.
func (e *env) newBurstContainer(ctx context.Context) (*runckit.Container, error) {
	id := "burst"
	if err := e.writeBundles([]string{id}, "sleep", "100000"); err != nil {
		return nil, err
	}
	c, err := e.newRunckit(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (e *env) deleteBurstContainer(ctx context.Context, c *runckit.Container) error {
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		return err
	}
	if _, err := c.Wait(ctx); err != nil {
		return err
	}
	if err := e.deleteRunckit(ctx, c, false); err != nil {
		return err
	}
	e.removeBundles([]string{c.ID()})
	return nil
}

// burst runs n copies of one(i) at once and returns the wall time until
// the last returned. The goroutines are ready before the clock starts.
func burst(n int, one func(i int) error) (time.Duration, error) {
	gate := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			errs[i] = one(i)
		}()
	}
	t0 := time.Now()
	close(gate)
	wg.Wait()
	return time.Since(t0), errors.Join(errs...)
}

// burstRunckit: per exec, c.Exec + p.Start + p.Wait.
func (e *env) burstRunckit(ctx context.Context, c *runckit.Container, round, n int) (time.Duration, error) {
	spec := runckittest.ProcessSpec("true")
	procs := make([]*runckit.Process, n)
	d, err := burst(n, func(i int) error {
		p, err := c.Exec(ctx, fmt.Sprintf("b%d-%d-%d", round, n, i), spec, runckit.Stdio{})
		if err != nil {
			return err
		}
		procs[i] = p
		if err := p.Start(ctx); err != nil {
			return err
		}
		st, err := p.Wait(ctx)
		if err != nil {
			return err
		}
		if !st.Success() {
			return fmt.Errorf("exec %s: %v", p.ID(), st)
		}
		return nil
	})
	// Free the exec IDs (bookkeeping only, outside the timing).
	for _, p := range procs {
		if p != nil {
			if derr := p.Delete(ctx); derr != nil && err == nil {
				err = derr
			}
		}
	}
	return d, err
}

// burstFloor: per exec, go-runc's Exec in the foreground (runc exec without
// --detach), which returns when the process has exited.
func (e *env) burstFloor(ctx context.Context, c *runckit.Container, n int) (time.Duration, error) {
	spec := *runckittest.ProcessSpec("true")
	return burst(n, func(i int) error {
		return e.floor.Exec(ctx, c.ID(), spec, &runc.ExecOpts{})
	})
}

// ---- lifecycle ----

// lifecycleRunckit: per container NewContainer, Start, Wait, Delete. It
// returns the run's phase totals: the API calls, and runckit's phases
// inside them (internal/phase).
func (e *env) lifecycleRunckit(ctx context.Context, round, n, width int) (time.Duration, phaseTimes, error) {
	names := ids(fmt.Sprintf("lc%d-w%d-k", round, width), n)
	if err := e.writeBundles(names, "true"); err != nil {
		return 0, nil, err
	}
	defer e.removeBundles(names)
	rec := newRunckitRecorder()
	phase.SetHook(rec.hook)
	defer phase.SetHook(nil)
	t0 := time.Now()
	err := parallelDo(ctx, n, width, func(i int) error { return e.oneRunckit(ctx, names[i], rec) })
	return time.Since(t0), rec.times(), err
}

// lifecycleFloor: per container go-runc Create, Start, wait4 on init's pid,
// Delete.
func (e *env) lifecycleFloor(ctx context.Context, round, n, width int) (time.Duration, phaseTimes, error) {
	names := ids(fmt.Sprintf("lc%d-w%d-f", round, width), n)
	if err := e.writeBundles(names, "true"); err != nil {
		return 0, nil, err
	}
	defer e.removeBundles(names)
	rec := newFloorRecorder()
	t0 := time.Now()
	err := parallelDo(ctx, n, width, func(i int) error { return e.oneFloor(ctx, names[i], rec) })
	return time.Since(t0), rec.times(), err
}

// lifecycleSeq runs n lifecycles of each kind one at a time, alternating
// runckit's and the floor's one by one (which goes first alternates too),
// and returns each side's total. Run in two blocks of n, the two sides met
// different moments of the machine (a lifecycle is ~130 ms of runc, and the
// blocks' ratio swung 0.96x-1.13x from round to round while runckit's own
// work was 2% of a lifecycle); interleaved, drift lands on both sides.
func (e *env) lifecycleSeq(ctx context.Context, round, n int) (rk, fl time.Duration, phRK, phFL phaseTimes, err error) {
	rkNames := ids(fmt.Sprintf("lc%d-s-k", round), n)
	flNames := ids(fmt.Sprintf("lc%d-s-f", round), n)
	all := append(append([]string(nil), rkNames...), flNames...)
	if err := e.writeBundles(all, "true"); err != nil {
		return 0, 0, nil, nil, err
	}
	defer e.removeBundles(all)
	rkRec, flRec := newRunckitRecorder(), newFloorRecorder()
	phase.SetHook(rkRec.hook)
	defer phase.SetHook(nil)
	for i := 0; i < n; i++ {
		runRK := func() error {
			t := time.Now()
			err := e.oneRunckit(ctx, rkNames[i], rkRec)
			rk += time.Since(t)
			return err
		}
		runFL := func() error {
			t := time.Now()
			err := e.oneFloor(ctx, flNames[i], flRec)
			fl += time.Since(t)
			return err
		}
		first, second := runRK, runFL
		if (round+i)%2 == 1 {
			first, second = runFL, runRK
		}
		if err := first(); err != nil {
			return 0, 0, nil, nil, err
		}
		if err := second(); err != nil {
			return 0, 0, nil, nil, err
		}
	}
	return rk, fl, rkRec.times(), flRec.times(), nil
}

func newRunckitRecorder() *phaseRecorder {
	return newPhaseRecorder(apiNew, apiStart, apiWait, apiDelete)
}

func newFloorRecorder() *phaseRecorder {
	return newPhaseRecorder(flCreate, flPidFile, flStart, flWait, flDelete)
}

// oneRunckit is one runckit lifecycle: NewContainer, Start, Wait, Delete.
func (e *env) oneRunckit(ctx context.Context, name string, rec *phaseRecorder) error {
	t := time.Now()
	c, err := e.newRunckit(ctx, name)
	if err != nil {
		return err
	}
	rec.since(apiNew, t)
	t = time.Now()
	if err := c.Start(ctx); err != nil {
		return err
	}
	rec.since(apiStart, t)
	t = time.Now()
	st, err := c.Wait(ctx)
	if err != nil {
		return err
	}
	rec.since(apiWait, t)
	if !st.Success() {
		return fmt.Errorf("container %s: %v", c.ID(), st)
	}
	t = time.Now()
	err = e.deleteRunckit(ctx, c, false)
	rec.since(apiDelete, t)
	return err
}

// oneFloor is one floor lifecycle: go-runc Create, Start, wait4 on init's
// pid, Delete.
func (e *env) oneFloor(ctx context.Context, id string, rec *phaseRecorder) error {
	pid, err := e.createFloorTimed(ctx, id, rec)
	if err != nil {
		return err
	}
	t := time.Now()
	if err := e.floor.Start(ctx, id); err != nil {
		return fmt.Errorf("runc start %s: %w", id, err)
	}
	rec.since(flStart, t)
	t = time.Now()
	if err := e.waitFloor(id, pid); err != nil {
		return err
	}
	rec.since(flWait, t)
	t = time.Now()
	err = e.deleteFloor(ctx, id, false)
	rec.since(flDelete, t)
	return err
}

// ---- exit latency ----

// latencySink records, for every exec exit, how long after the reap the
// sink was called.
type latencySink struct {
	mu    sync.Mutex
	want  int
	lat   []time.Duration
	pre   []time.Duration // reap to publication: the exit handler's share of lat
	last  time.Time
	done  chan struct{}
	armed bool
}

func (s *latencySink) Send(ev runckit.Event) {
	if ev.Kind != runckit.EventExit || ev.ExecID == "" {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.armed {
		return
	}
	s.lat = append(s.lat, now.Sub(ev.Status.ExitedAt))
	s.pre = append(s.pre, ev.Time.Sub(ev.Status.ExitedAt))
	s.last = now
	if len(s.lat) == s.want {
		close(s.done)
	}
}

func (s *latencySink) arm(want int) {
	s.mu.Lock()
	s.want, s.lat, s.pre, s.done, s.armed = want, nil, nil, make(chan struct{}), true
	s.mu.Unlock()
}

// exitLatency starts procs `sleep` execs spread over conts containers,
// SIGKILLs them all in one burst (per process, through runckit's pidfds),
// and returns each exit's reap-to-sink latency and the time from the first
// kill to the last exit event.
func (e *env) exitLatency(ctx context.Context, round, procs, conts, width int) ([]time.Duration, time.Duration, error) {
	sink := &latencySink{}
	names := ids(fmt.Sprintf("lat%d-", round), conts)
	if err := e.writeBundles(names, "sleep", "100000"); err != nil {
		return nil, 0, err
	}
	defer e.removeBundles(names)
	cs := make([]*runckit.Container, conts)
	defer func() {
		for _, c := range cs {
			if c != nil {
				e.deleteRunckit(ctx, c, true)
			}
		}
	}()
	err := parallelDo(ctx, conts, width, func(i int) error {
		c, err := e.newRunckit(ctx, names[i], runckit.WithEventSink(sink))
		if err != nil {
			return err
		}
		cs[i] = c
		return c.Start(ctx)
	})
	if err != nil {
		return nil, 0, err
	}
	ps := make([]*runckit.Process, procs)
	spec := runckittest.ProcessSpec("sleep", "100000")
	err = parallelDo(ctx, procs, width, func(i int) error {
		p, err := cs[i%conts].Exec(ctx, fmt.Sprintf("s%d", i), spec, runckit.Stdio{})
		if err != nil {
			return err
		}
		ps[i] = p
		return p.Start(ctx)
	})
	if err != nil {
		return nil, 0, err
	}

	sink.arm(procs)
	if burstRealtime || burstNice != 0 || burstSlice != 0 {
		// Set back whatever happens: a failure part way leaves some
		// threads raised otherwise.
		defer setThreadsSched(false)
		if err := setThreadsSched(true); err != nil {
			return nil, 0, err
		}
	}
	stopTrace := startBurstTrace()
	t0 := time.Now()
	err = func() error {
		defer stopTrace() // on every path: a trace left running holds its file
		for _, p := range ps {
			if err := p.Kill(ctx, syscall.SIGKILL); err != nil {
				return err
			}
		}
		select {
		case <-sink.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}()
	if err != nil {
		return nil, 0, err
	}
	sink.mu.Lock()
	lat := append([]time.Duration(nil), sink.lat...)
	pre := append([]time.Duration(nil), sink.pre...)
	log.Printf("  exit latency split: reap->publish p50 %v p99 %v max %v", percentile(pre, 50), percentile(pre, 99), percentile(pre, 100))
	total := sink.last.Sub(t0)
	sink.mu.Unlock()
	for _, p := range ps {
		if _, err := p.Wait(ctx); err != nil {
			return nil, 0, err
		}
	}
	for i, c := range cs {
		if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
			return nil, 0, err
		}
		if _, err := c.Wait(ctx); err != nil {
			return nil, 0, err
		}
		if err := e.deleteRunckit(ctx, c, false); err != nil {
			return nil, 0, err
		}
		cs[i] = nil
	}
	return lat, total, nil
}

// burstRealtime is -rt, burstNice -nice.
var (
	burstRealtime bool
	burstNice     int
	burstSlice    time.Duration
)

// setThreadsSched moves every thread of this program to SCHED_FIFO
// (priority 10) for -rt or to the nice value of -nice, or back to
// SCHED_NORMAL at nice 0. Threads made meanwhile inherit the policy; the
// burst starts no runc, so no child does.
func setThreadsSched(on bool) error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
	switch {
	case on && burstRealtime:
		attr.Policy, attr.Priority = unix.SCHED_FIFO, 10
	case on:
		attr.Nice = int32(burstNice)
		attr.Runtime = uint64(burstSlice) // EEVDF: a shorter slice, an earlier deadline
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("sched_setattr(%d): %w", tid, err)
		}
	}
	return nil
}

// burstTrace is -trace: where the exit-latency burst's execution trace goes.
var burstTrace string

// startBurstTrace starts a runtime trace into burstTrace, if set, and
// returns what stops it.
func startBurstTrace() (stop func()) {
	if burstTrace == "" {
		return func() {}
	}
	f, err := os.Create(burstTrace)
	if err != nil {
		log.Printf("  -trace: %v", err)
		return func() {}
	}
	if err := trace.Start(f); err != nil {
		log.Printf("  -trace: %v", err)
		f.Close()
		return func() {}
	}
	return func() {
		trace.Stop()
		f.Close()
	}
}

// ---- scale ----

type usage struct{ heap, goroutines, fds float64 }

type snapshot struct {
	heap       uint64
	goroutines int
	fds        int
}

// scaleRunckit creates m containers with runckit, width at a time, timing
// the creation; starts them; and measures what each live container costs
// the program.
func (e *env) scaleRunckit(ctx context.Context, round, m, width int) (time.Duration, usage, error) {
	names := ids(fmt.Sprintf("sc%d-k", round), m)
	if err := e.writeBundles(names, "sleep", "100000"); err != nil {
		return 0, usage{}, err
	}
	defer e.removeBundles(names)
	cs := make([]*runckit.Container, m)
	defer func() {
		parallelDo(ctx, m, width, func(i int) error {
			if cs[i] != nil {
				e.deleteRunckit(ctx, cs[i], true)
			}
			return nil
		})
	}()

	before := takeSnapshot()
	t0 := time.Now()
	err := parallelDo(ctx, m, width, func(i int) error {
		c, err := e.newRunckit(ctx, names[i])
		cs[i] = c
		return err
	})
	d := time.Since(t0)
	if err != nil {
		return 0, usage{}, err
	}
	if err := parallelDo(ctx, m, width, func(i int) error { return cs[i].Start(ctx) }); err != nil {
		return 0, usage{}, err
	}
	for _, c := range cs {
		if err := c.Flush(ctx); err != nil {
			return 0, usage{}, err
		}
	}
	after := takeSnapshot()
	use := usage{
		heap:       (float64(after.heap) - float64(before.heap)) / float64(m),
		goroutines: float64(after.goroutines-before.goroutines) / float64(m),
		fds:        float64(after.fds-before.fds) / float64(m),
	}

	err = parallelDo(ctx, m, width, func(i int) error {
		if err := e.deleteRunckit(ctx, cs[i], true); err != nil {
			return err
		}
		cs[i] = nil
		return nil
	})
	return d, use, err
}

// scaleFloor creates m containers with go-runc, width at a time, timing the
// creation, then starts and deletes them.
func (e *env) scaleFloor(ctx context.Context, round, m, width int) (time.Duration, error) {
	names := ids(fmt.Sprintf("sc%d-f", round), m)
	if err := e.writeBundles(names, "sleep", "100000"); err != nil {
		return 0, err
	}
	defer e.removeBundles(names)
	created := make([]bool, m)
	defer func() {
		parallelDo(ctx, m, width, func(i int) error {
			if created[i] {
				e.deleteFloor(ctx, names[i], true)
			}
			return nil
		})
	}()
	t0 := time.Now()
	err := parallelDo(ctx, m, width, func(i int) error {
		created[i] = true // tracked even if create fails halfway
		_, err := e.createFloor(ctx, names[i])
		return err
	})
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if err := parallelDo(ctx, m, width, func(i int) error { return e.floor.Start(ctx, names[i]) }); err != nil {
		return 0, err
	}
	err = parallelDo(ctx, m, width, func(i int) error {
		if err := e.deleteFloor(ctx, names[i], true); err != nil {
			return err
		}
		created[i] = false
		return nil
	})
	return d, err
}

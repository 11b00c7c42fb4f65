package runckit_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// cancelTries is how many randomised cancel points each operation gets:
// RUNCKIT_CANCEL_N, or a default that keeps the whole test under about two
// minutes on a loaded two-core machine.
func cancelTries(t *testing.T) int {
	if v := os.Getenv("RUNCKIT_CANCEL_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("RUNCKIT_CANCEL_N=%q is not a positive number", v)
		}
		return n
	}
	return 12
}

// cancelLab runs one operation's tries and checks, after each, that the
// cancelled call left nothing behind. It counts only what the test made:
// its own container IDs' cgroups, its private runc root and its bundles.
type cancelLab struct {
	t    *testing.T
	root string
	rng  *rand.Rand
	rec  *runckittest.Recorder

	tries, canceled, completed, found int
	points                            []time.Duration
}

func newCancelLab(t *testing.T) *cancelLab {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return &cancelLab{t: t, root: runckittest.RuntimeRoot(t), rng: rand.New(rand.NewPCG(seed, 1)), rec: &runckittest.Recorder{}}
}

func (l *cancelLab) opts(extra ...runckit.Option) []runckit.Option {
	return append([]runckit.Option{runckit.WithRuntimeRoot(l.root), runckit.WithEventSink(l.rec)}, extra...)
}

// cancelID is a container ID unique to this test run, named for the topic
// so that parallel runs by others (runc's default cgroup is /<id>) can not
// collide with it.
func cancelID(op string) string {
	return fmt.Sprintf("cancel-%s-%d-%d", op, os.Getpid(), time.Now().UnixNano()%1e9)
}

// deadline returns a context whose deadline is a random point in
// [0, 1.5 × typical] from now; every tenth try it is already past.
func (l *cancelLab) deadline(typical time.Duration) (context.Context, context.CancelFunc) {
	l.tries++
	var d time.Duration
	if l.rng.IntN(10) != 0 {
		d = time.Duration(l.rng.Int64N(int64(typical)*3/2 + 1))
	}
	l.points = append(l.points, d)
	return context.WithTimeout(context.Background(), d)
}

// outcome counts a try's result; a failure must wrap the context's error.
func (l *cancelLab) outcome(op string, err error) bool {
	l.t.Helper()
	if err == nil {
		l.completed++
		return false
	}
	l.canceled++
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		l.t.Errorf("%s cut short: error %v does not wrap the context's error", op, err)
	}
	return true
}

// expect reports leftovers found after a try.
func (l *cancelLab) expect(what string, found []string) {
	l.t.Helper()
	if len(found) > 0 {
		l.found += len(found)
		l.t.Errorf("after %s: left behind: %s", what, strings.Join(found, "; "))
	}
}

func (l *cancelLab) report(op string) {
	sort.Slice(l.points, func(i, j int) bool { return l.points[i] < l.points[j] })
	var lo, hi time.Duration
	if len(l.points) > 0 {
		lo, hi = l.points[0], l.points[len(l.points)-1]
	}
	l.t.Logf("%s: %d tries (cancel points %v..%v), %d cut short, %d completed, %d leftovers",
		op, l.tries, lo, hi, l.canceled, l.completed, l.found)
}

// typical measures the median duration of op over three uncancelled runs.
func typical(t *testing.T, op func()) time.Duration {
	var ds []time.Duration
	for range 3 {
		start := time.Now()
		op()
		ds = append(ds, time.Since(start))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[1]
}

// testCgroupDirs computes, independently of runckit, the directories runc's
// cgroupfs driver uses for a container whose spec has no cgroupsPath: the
// ID below this program's own cgroup, in every cgroup v1 and v2 hierarchy
// mounted here.
func testCgroupDirs(t *testing.T, id string) map[string]string {
	own := map[string]string{}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			own[parts[0]+":"+parts[1]] = parts[2]
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
			}
		}
		if sep < 0 || len(f) < sep+4 || (f[sep+1] != "cgroup" && f[sep+1] != "cgroup2") {
			continue
		}
		for key, path := range own {
			hier := strings.SplitN(key, ":", 2)
			ok := f[sep+1] == "cgroup2" && hier[0] == "0" && hier[1] == ""
			if f[sep+1] == "cgroup" && hier[1] != "" {
				ok = true
				for _, ctrl := range strings.Split(hier[1], ",") {
					if !strings.Contains(","+f[sep+3]+",", ","+ctrl+",") {
						ok = false
					}
				}
			}
			if ok {
				rel := strings.TrimPrefix(path, f[3])
				dirs[f[4]] = filepath.Join(f[4], rel, id)
			}
		}
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy found in /proc/self/mountinfo")
	}
	return dirs
}

// zombies lists zombie children of the test process that stay zombies for
// a moment (the exit watcher or go-runc may be about to reap one).
func zombieNames() []string {
	var out []string
	for range 3 {
		z := zombieChildren()
		if len(z) == 0 {
			return nil
		}
		out = out[:0]
		for _, pid := range z {
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			out = append(out, fmt.Sprintf("zombie %s %q", pid, strings.TrimSpace(string(comm))))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return out
}

// leftovers checks what a container ID may have left: cgroup directories in
// every hierarchy, runc state, bundle files beyond config.json (and beyond
// runckit's own while the container exists), and zombies.
func (l *cancelLab) leftovers(id, bundle string, exists bool) []string {
	var found []string
	if !exists {
		for mount, dir := range testCgroupDirs(l.t, id) {
			if _, err := os.Stat(dir); err == nil {
				found = append(found, fmt.Sprintf("cgroup %s (in %s)", dir, mount))
			}
		}
		if _, err := os.Stat(filepath.Join(l.root, id)); err == nil {
			entries, _ := os.ReadDir(filepath.Join(l.root, id))
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			found = append(found, fmt.Sprintf("runc state %s %v", id, names))
		}
	}
	allowed := map[string]bool{"config.json": true}
	if exists {
		allowed["runckit.json"], allowed["init-"+id+".pid"], allowed["runckit-log-"+id+".json"] = true, true, true
	}
	entries, _ := os.ReadDir(bundle)
	for _, e := range entries {
		if !allowed[e.Name()] {
			found = append(found, "bundle file "+e.Name())
		}
	}
	return append(found, zombieNames()...)
}

// untracked lists the container's processes that runckit does not track:
// neither init nor a started exec.
func untracked(ctx context.Context, c *runckit.Container) ([]string, error) {
	procs, err := c.Pids(ctx)
	if err != nil {
		return nil, err
	}
	initPid := c.Init().Pid()
	var out []string
	for _, p := range procs {
		if p.Pid != initPid && p.ExecID == "" {
			cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/cmdline")
			out = append(out, fmt.Sprintf("untracked pid %d %q", p.Pid, strings.ReplaceAll(string(cmd), "\x00", " ")))
		}
	}
	return out, nil
}

// runcStatus asks runc itself, behind runckit's back.
func runcStatus(root, id string) string {
	out, err := exec.Command("runc", "--root", root, "state", id).Output()
	if err != nil {
		return "gone"
	}
	i := strings.Index(string(out), `"status": "`)
	if i < 0 {
		return "?"
	}
	rest := string(out[i+len(`"status": "`):])
	return rest[:strings.IndexByte(rest, '"')]
}

func countEvents(events []runckit.Event, kind runckit.EventKind, execID string) int {
	n := 0
	for _, e := range events {
		if e.Kind == kind && e.ExecID == execID {
			n++
		}
	}
	return n
}

// fdsSettle waits for the fd count to come back to at most base.
func fdsSettle(base int) []string {
	for deadline := time.Now().Add(2 * time.Second); ; {
		n := openFDs()
		if n <= base {
			return nil
		}
		if time.Now().After(deadline) {
			return []string{fmt.Sprintf("%d fds open, %d before", n, base)}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func goroutinesSettle(t *testing.T, base int) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); runtime.NumGoroutine() > base; {
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines, %d before", runtime.NumGoroutine(), base)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var bg = context.Background()

// TestCancelCreate cancels NewContainer at random points across runc create
// and checks that nothing is left (cgroups in every hierarchy, runc state,
// helpers and zombies, pid files) and that the same ID and bundle work at
// once.
func TestCancelCreate(t *testing.T) {
	l := newCancelLab(t)
	id := cancelID("create")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	create := func(ctx context.Context) (*runckit.Container, error) {
		return runckit.NewContainer(ctx, id, bundle, l.opts()...)
	}
	remove := func(c *runckit.Container) {
		t.Helper()
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	typ := typical(t, func() {
		c, err := create(bg)
		if err != nil {
			t.Fatal(err)
		}
		remove(c)
	})
	fdBase, gBase := openFDs(), runtime.NumGoroutine()
	for i := range cancelTries(t) * 2 {
		ctx, cancel := l.deadline(typ)
		c, err := create(ctx)
		cancel()
		if l.outcome("create", err) {
			l.expect(fmt.Sprintf("create try %d: %v", i, err), l.leftovers(id, bundle, false))
		} else {
			remove(c)
		}
		l.expect("create", fdsSettle(fdBase))
		// The same ID and bundle work again at once.
		c, err = create(bg)
		if err != nil {
			t.Fatalf("create again after try %d: %v", i, err)
		}
		remove(c)
		l.expect("create again", l.leftovers(id, bundle, false))
	}
	goroutinesSettle(t, gBase)
	l.report("create")
}

// TestCancelExecStart cancels Process.Start at random points across runc
// exec, every other time while a sibling exec of the same container starts
// too: the cancelled exec is created again, has no exec-started event, no
// process of it runs untracked, the sibling is untouched, and the same exec
// ID starts at once.
// It runs in a container with a PID namespace of its own and in one that
// shares the host's, where strays are told by cgroup rather than namespace.
func TestCancelExecStart(t *testing.T) {
	t.Run("pidns", func(t *testing.T) { cancelExecStart(t, runckittest.Spec(t, "sleep", "100000")) })
	t.Run("hostpid", func(t *testing.T) { cancelExecStart(t, hostPIDSpec(t, "sleep", "100000")) })
}

func cancelExecStart(t *testing.T, spec0 *specs.Spec) {
	l := newCancelLab(t)
	id := cancelID("exec")
	bundle := runckittest.Bundle(t, spec0)
	c, err := runckit.NewContainer(bg, id, bundle, l.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Errorf("delete: %v", err)
		}
		l.expect("delete", l.leftovers(id, bundle, false))
	}()
	if err := c.Start(bg); err != nil {
		t.Fatal(err)
	}
	spec := runckittest.ProcessSpec("sleep", "100000")
	finish := func(p *runckit.Process) {
		t.Helper()
		if err := p.Kill(bg, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(bg); err != nil {
			t.Fatal(err)
		}
		if err := p.Delete(bg); err != nil {
			t.Fatal(err)
		}
	}
	typ := typical(t, func() {
		p, err := c.Exec(bg, "probe", spec, runckit.Stdio{})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(bg); err != nil {
			t.Fatal(err)
		}
		finish(p)
	})
	fdBase, gBase := openFDs(), runtime.NumGoroutine()
	for i := range cancelTries(t) {
		p, err := c.Exec(bg, "probe", spec, runckit.Stdio{})
		if err != nil {
			t.Fatal(err)
		}
		startedBefore := countEvents(l.rec.Events(), runckit.EventExecStarted, "probe")
		var sib *runckit.Process
		var sibErr error
		var wg sync.WaitGroup
		if i%2 == 1 {
			if sib, err = c.Exec(bg, "sibling", spec, runckit.Stdio{}); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() { defer wg.Done(); sibErr = sib.Start(bg) }()
		}
		ctx, cancel := l.deadline(typ)
		err = p.Start(ctx)
		cancel()
		wg.Wait()
		if sib != nil {
			if sibErr != nil {
				t.Fatalf("sibling exec start beside a cancelled one: %v", sibErr)
			}
			if st := sib.Status(); st != runckit.StatusRunning {
				t.Errorf("sibling exec is %s after a cancelled start beside it, want running", st)
			}
		}
		if l.outcome("exec start", err) {
			what := fmt.Sprintf("exec start try %d: %v", i, err)
			if st := p.Status(); st != runckit.StatusCreated {
				t.Errorf("%s: exec is %s, want created", what, st)
			}
			c.Flush(bg)
			if n := countEvents(l.rec.Events(), runckit.EventExecStarted, "probe"); n != startedBefore {
				t.Errorf("%s: exec-started published for a cancelled start", what)
			}
			found := l.leftovers(id, bundle, true)
			u, perr := untracked(bg, c)
			if perr != nil {
				t.Fatal(perr)
			}
			l.expect(what, append(found, u...))
			// The same exec ID starts at once.
			if err := p.Start(bg); err != nil {
				t.Fatalf("start again after try %d: %v", i, err)
			}
		}
		u, err := untracked(bg, c)
		if err != nil {
			t.Fatal(err)
		}
		l.expect("exec start again", u)
		finish(p)
		if sib != nil {
			finish(sib)
		}
		l.expect("exec", fdsSettle(fdBase))
	}
	goroutinesSettle(t, gBase)
	l.report("exec start " + t.Name())
}

// TestCancelStart cancels Container.Start at random points across runc
// start: runckit's state agrees with runc's and with init itself, a start
// event is published exactly when init runs, and a container left created
// starts at once.
func TestCancelStart(t *testing.T) {
	l := newCancelLab(t)
	id := cancelID("start")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	var typ time.Duration
	stopped := 0 // tries whose init died of the cut (see Container.Start)
	cycle := func(cut bool, i int) {
		c, err := runckit.NewContainer(bg, id, bundle, l.opts()...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := bg, context.CancelFunc(func() {})
		if cut {
			ctx, cancel = l.deadline(typ)
		}
		start := time.Now()
		err = c.Start(ctx)
		took := time.Since(start)
		cancel()
		if !cut {
			typ += took / 3
		}
		if cut && l.outcome("start", err) {
			what := fmt.Sprintf("start try %d: %v", i, err)
			st, _ := c.State(bg)
			rs := runcStatus(l.root, id)
			c.Flush(bg)
			starts := countEvents(l.rec.Events(), runckit.EventStart, "")
			switch st.Status {
			case runckit.StatusCreated:
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", st.Pid))
				if rs != "created" || !strings.HasPrefix(string(comm), "runc:[2:INIT]") {
					t.Errorf("%s: runckit says created, runc says %s, init is %q", what, rs, comm)
				}
				if !strings.Contains(err.Error(), "not started") && !strings.Contains(err.Error(), "not run") {
					t.Errorf("%s: the error does not say init was not started", what)
				}
				if err := c.Start(bg); err != nil {
					t.Fatalf("start again after try %d: %v", i, err)
				}
			case runckit.StatusStopped:
				// runc start killed just as it released init: init died.
				if rs != "stopped" || !strings.Contains(err.Error(), "init is stopped") {
					t.Errorf("%s: runckit says stopped, runc says %s", what, rs)
				}
				stopped++
			case runckit.StatusRunning:
				if rs != "running" {
					t.Errorf("%s: runckit says running, runc says %s", what, rs)
				}
				if !strings.Contains(err.Error(), "started anyway") {
					t.Errorf("%s: the error does not say init started anyway", what)
				}
			default:
				t.Errorf("%s: container is %s", what, st.Status)
			}
			c.Flush(bg)
			if got := countEvents(l.rec.Events(), runckit.EventStart, ""); st.Status != runckit.StatusStopped && (got != starts+boolInt(st.Status == runckit.StatusCreated) || got < 1) {
				t.Errorf("%s: %d start events", what, got)
			}
		}
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Fatal(err)
		}
		l.expect("start", l.leftovers(id, bundle, false))
	}
	for range 3 {
		cycle(false, -1)
	}
	l.tries, l.completed = 0, 0
	l.rec = &runckittest.Recorder{}
	fdBase, gBase := openFDs(), runtime.NumGoroutine()
	for i := range cancelTries(t) * 2 {
		l.rec = &runckittest.Recorder{}
		cycle(true, i)
		l.expect("start", fdsSettle(fdBase))
	}
	goroutinesSettle(t, gBase)
	l.report("start")
	t.Logf("start: init died of the cut in %d tries", stopped)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestCancelDelete cancels Container.Delete at random points across runc
// delete: either the container is gone with nothing left and its ID free,
// or it is still there and a second Delete works.
func TestCancelDelete(t *testing.T) {
	l := newCancelLab(t)
	id := cancelID("delete")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	mk := func() *runckit.Container {
		c, err := runckit.NewContainer(bg, id, bundle, l.opts()...)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(bg); err != nil {
			t.Fatal(err)
		}
		return c
	}
	typ := typical(t, func() {
		c := mk()
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Fatal(err)
		}
	}) / 2 // create and start took about half of it
	fdBase, gBase := openFDs(), runtime.NumGoroutine()
	for i := range cancelTries(t) * 2 {
		c := mk()
		ctx, cancel := l.deadline(typ)
		err := c.Delete(ctx, runckit.DeleteForce())
		cancel()
		if l.outcome("delete", err) {
			what := fmt.Sprintf("delete try %d: %v", i, err)
			if _, serr := c.State(bg); errdefs.IsNotFound(serr) {
				if !strings.Contains(err.Error(), "deleted anyway") {
					t.Errorf("%s: gone, but the error does not say so", what)
				}
				c.Flush(bg)
				if ev := l.rec.Events(); len(ev) == 0 || ev[len(ev)-1].Kind != runckit.EventDelete {
					t.Errorf("%s: the stream does not end with delete: %s", what, kinds(ev))
				}
			} else {
				if rs := runcStatus(l.root, id); rs == "gone" {
					t.Errorf("%s: runckit keeps a container runc no longer has", what)
				}
				if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
					t.Fatalf("delete again after try %d: %v", i, err)
				}
			}
		}
		l.expect(fmt.Sprintf("delete try %d", i), l.leftovers(id, bundle, false))
		l.expect("delete", fdsSettle(fdBase))
	}
	goroutinesSettle(t, gBase)
	l.report("delete")
}

// TestCancelPauseResume cancels Pause and Resume at random points: no
// half-frozen cgroup is left, runckit's state agrees with runc's, and the
// container pauses and resumes at once afterwards.
func TestCancelPauseResume(t *testing.T) {
	l := newCancelLab(t)
	id := cancelID("pause")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	c, err := runckit.NewContainer(bg, id, bundle, l.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Errorf("delete: %v", err)
		}
		l.expect("delete", l.leftovers(id, bundle, false))
	}()
	if err := c.Start(bg); err != nil {
		t.Fatal(err)
	}
	freezer := ""
	for mount, dir := range testCgroupDirs(t, id) {
		if strings.HasSuffix(mount, "/freezer") {
			freezer = filepath.Join(dir, "freezer.state")
		}
	}
	agree := func(what string) runckit.Status {
		t.Helper()
		st, _ := c.State(bg)
		rs := runcStatus(l.root, id)
		if string(st.Status) != rs {
			t.Errorf("%s: runckit says %s, runc says %s", what, st.Status, rs)
		}
		if freezer != "" {
			fs, _ := os.ReadFile(freezer)
			want := map[runckit.Status]string{runckit.StatusRunning: "THAWED", runckit.StatusPaused: "FROZEN"}[st.Status]
			if strings.TrimSpace(string(fs)) != want {
				t.Errorf("%s: %s holds %q, want %s", what, freezer, fs, want)
			}
		}
		return st.Status
	}
	typP := typical(t, func() {
		if err := c.Pause(bg); err != nil {
			t.Fatal(err)
		}
		if err := c.Resume(bg); err != nil {
			t.Fatal(err)
		}
	}) / 2
	gBase := runtime.NumGoroutine()
	pause, resume := &cancelLab{t: t, root: l.root, rng: l.rng, rec: l.rec}, &cancelLab{t: t, root: l.root, rng: l.rng, rec: l.rec}
	for i := range cancelTries(t) {
		ctx, cancel := pause.deadline(typP)
		err := c.Pause(ctx)
		cancel()
		if pause.outcome("pause", err) {
			agree(fmt.Sprintf("pause try %d: %v", i, err))
		}
		if st, _ := c.State(bg); st.Status == runckit.StatusRunning {
			if err := c.Pause(bg); err != nil {
				t.Fatalf("pause again after try %d: %v", i, err)
			}
		}
		ctx, cancel = resume.deadline(typP)
		err = c.Resume(ctx)
		cancel()
		if resume.outcome("resume", err) {
			agree(fmt.Sprintf("resume try %d: %v", i, err))
		}
		if st, _ := c.State(bg); st.Status == runckit.StatusPaused {
			if err := c.Resume(bg); err != nil {
				t.Fatalf("resume again after try %d: %v", i, err)
			}
		}
		agree("resumed")
		l.expect("pause/resume", l.leftovers(id, bundle, true))
	}
	goroutinesSettle(t, gBase)
	pause.report("pause")
	resume.report("resume")
	if pause.found+resume.found+l.found > 0 {
		t.Errorf("%d leftovers", pause.found+resume.found+l.found)
	}
}

// TestCancelKillUpdatePids cancels Kill, Update and Pids at random points:
// each returns the context's error and the container carries on.
func TestCancelKillUpdatePids(t *testing.T) {
	l := newCancelLab(t)
	id := cancelID("signal")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	c, err := runckit.NewContainer(bg, id, bundle, l.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
			t.Errorf("delete: %v", err)
		}
		l.expect("delete", l.leftovers(id, bundle, false))
	}()
	if err := c.Start(bg); err != nil {
		t.Fatal(err)
	}
	limit := int64(1000)
	ops := map[string]func(context.Context) error{
		"kill": func(ctx context.Context) error { return c.Kill(ctx, syscall.SIGCONT) },
		"update": func(ctx context.Context) error {
			limit++
			return c.Update(ctx, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}})
		},
		"ps": func(ctx context.Context) error { _, err := c.Pids(ctx); return err },
	}
	for _, name := range []string{"kill", "update", "ps"} {
		op := ops[name]
		lab := &cancelLab{t: t, root: l.root, rng: l.rng, rec: l.rec}
		typ := typical(t, func() {
			if err := op(bg); err != nil {
				t.Fatal(err)
			}
		})
		for i := range cancelTries(t) {
			ctx, cancel := lab.deadline(typ)
			err := op(ctx)
			cancel()
			lab.outcome(name, err)
			if st, _ := c.State(bg); st.Status != runckit.StatusRunning || runcStatus(l.root, id) != "running" {
				t.Errorf("%s try %d: container is %s", name, i, st.Status)
			}
			lab.expect(name, l.leftovers(id, bundle, true))
			if err := op(bg); err != nil {
				t.Fatalf("%s again after try %d: %v", name, i, err)
			}
		}
		lab.report(name)
	}
}

// TestCancelBeforeRunc gives every operation a context that is already
// cancelled: each fails at once with context.Canceled, runs no runc and
// changes nothing.
func TestCancelBeforeRunc(t *testing.T) {
	l := newCancelLab(t)
	rt := faultrunc.New(t)
	// Any runc invocation would fail loudly: none may happen.
	for _, sub := range []string{"create", "start", "exec", "kill", "pause", "resume", "update", "ps", "delete", "checkpoint", "restore"} {
		rt.Set(t, sub, faultrunc.Fault{Action: faultrunc.Fail, Message: "runc ran for a cancelled context"})
	}
	done, cancel := context.WithCancel(bg)
	cancel()
	id := cancelID("before")
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) || strings.Contains(fmt.Sprint(err), "runc ran") {
			t.Errorf("%s with a cancelled context = %v, want context.Canceled before runc", op, err)
		}
	}
	_, err := runckit.NewContainer(done, id, bundle, l.opts(runckit.WithRuntime(rt.Path))...)
	check("NewContainer", err)
	l.expect("NewContainer", l.leftovers(id, bundle, false))
	_, err = runckit.Restore(done, id, bundle, runckit.RestoreOptions{ImagePath: t.TempDir()}, l.opts(runckit.WithRuntime(rt.Path))...)
	check("Restore", err)
	l.expect("Restore", l.leftovers(id, bundle, false))

	for _, sub := range []string{"create", "start", "exec"} {
		rt.Clear(sub)
	}
	c, err := runckit.NewContainer(bg, id, bundle, l.opts(runckit.WithRuntime(rt.Path))...)
	if err != nil {
		t.Fatal(err)
	}
	check("Start", c.Start(done))
	if st, _ := c.State(bg); st.Status != runckit.StatusCreated {
		t.Errorf("after a cancelled Start the container is %s", st.Status)
	}
	if err := c.Start(bg); err != nil {
		t.Fatal(err)
	}
	p, err := c.Exec(bg, "probe", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	c.Flush(bg)
	before := len(l.rec.Events())
	check("exec Start", p.Start(done))
	check("Kill", c.Kill(done, syscall.SIGKILL))
	check("Pause", c.Pause(done))
	limit := int64(100)
	check("Update", c.Update(done, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}}))
	_, err = c.Pids(done)
	check("Pids", err)
	check("Checkpoint", c.Checkpoint(done, runckit.CheckpointOptions{ImagePath: t.TempDir()}))
	check("Delete", c.Delete(done, runckit.DeleteForce()))
	c.Flush(bg)
	if ev := l.rec.Events(); len(ev) != before {
		t.Errorf("events published by cancelled calls: %s", kinds(ev[before:]))
	}
	if st, _ := c.State(bg); st.Status != runckit.StatusRunning || p.Status() != runckit.StatusCreated {
		t.Errorf("after cancelled calls: container %s, exec %s", st.Status, p.Status())
	}
	rt.Clear("pause")
	rt.Clear("resume")
	check("Resume", func() error {
		if err := c.Pause(bg); err != nil {
			t.Fatal(err)
		}
		return c.Resume(done)
	}())
	if st, _ := c.State(bg); st.Status != runckit.StatusPaused {
		t.Errorf("after a cancelled Resume the container is %s", st.Status)
	}
	rt.Clear("delete")
	rt.Clear("kill")
	if err := c.Delete(bg, runckit.DeleteForce()); err != nil {
		t.Fatal(err)
	}
	l.expect("delete", l.leftovers(id, bundle, false))
}

// TestCancelStalledRunc cancels each operation at two fixed points made with
// faultrunc: while the runc invocation is held before runc runs (Stall) and
// after runc has done its work but before it exits (StallAfter, the "right
// after" case). The call returns promptly with the context's error, nothing
// is left, and the container (or the same ID) works at once.
func TestCancelStalledRunc(t *testing.T) {
	for _, action := range []faultrunc.Action{faultrunc.Stall, faultrunc.StallAfter} {
		for _, sub := range []string{"create", "exec", "start", "delete", "pause", "resume", "kill", "update", "ps"} {
			t.Run(string(action)+"/"+sub, func(t *testing.T) {
				stalledCancel(t, action, sub)
			})
		}
	}
}

func stalledCancel(t *testing.T, action faultrunc.Action, sub string) {
	l := newCancelLab(t)
	rt := faultrunc.New(t)
	id := cancelID("stall-" + sub)
	bundle := runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000"))
	opts := l.opts(runckit.WithRuntime(rt.Path))
	var c *runckit.Container
	var p *runckit.Process
	var err error
	if sub != "create" {
		if c, err = runckit.NewContainer(bg, id, bundle, opts...); err != nil {
			t.Fatal(err)
		}
		if sub != "start" {
			if err := c.Start(bg); err != nil {
				t.Fatal(err)
			}
		}
		if sub == "resume" {
			if err := c.Pause(bg); err != nil {
				t.Fatal(err)
			}
		}
		if sub == "exec" {
			if p, err = c.Exec(bg, "probe", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	limit := int64(500)
	call := map[string]func(context.Context) error{
		"create": func(ctx context.Context) (err error) {
			c, err = runckit.NewContainer(ctx, id, bundle, opts...)
			return err
		},
		"exec":   func(ctx context.Context) error { return p.Start(ctx) },
		"start":  func(ctx context.Context) error { return c.Start(ctx) },
		"delete": func(ctx context.Context) error { return c.Delete(ctx, runckit.DeleteForce()) },
		"pause":  func(ctx context.Context) error { return c.Pause(ctx) },
		"resume": func(ctx context.Context) error { return c.Resume(ctx) },
		"kill":   func(ctx context.Context) error { return c.Kill(ctx, syscall.SIGCONT) },
		"update": func(ctx context.Context) error {
			return c.Update(ctx, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}})
		},
		"ps": func(ctx context.Context) error { _, err := c.Pids(ctx); return err },
	}[sub]
	rt.Set(t, sub, faultrunc.Fault{Action: action, Once: true})
	ctx, cancel := context.WithCancel(bg)
	result := make(chan error, 1)
	go func() { result <- call(ctx) }()
	wctx, wcancel := context.WithTimeout(bg, 30*time.Second)
	defer wcancel()
	if err := rt.WaitStalled(wctx, sub); err != nil {
		cancel()
		<-result
		t.Fatal(err)
	}
	cancel()
	start := time.Now()
	select {
	case err = <-result:
	case <-time.After(cleanupBound):
		rt.Release(sub)
		t.Fatalf("%s still running %v after its context was cancelled", sub, cleanupBound)
	}
	took := time.Since(start)
	rt.Release(sub)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%s cancelled while stalled (%s) = %v, want context.Canceled", sub, action, err)
	}
	t.Logf("%s (%s): returned in %v: %v", sub, action, took.Round(time.Millisecond), err)
	exists := true
	switch sub {
	case "create":
		exists = false
	case "delete":
		_, serr := c.State(bg)
		exists = !errdefs.IsNotFound(serr)
		if exists != (action == faultrunc.Stall) {
			t.Errorf("delete cancelled %s: container exists = %v", action, exists)
		}
	case "exec":
		if st := p.Status(); st != runckit.StatusCreated {
			t.Errorf("exec cancelled %s: exec is %s, want created", action, st)
		}
	case "start":
		want := map[faultrunc.Action]runckit.Status{faultrunc.Stall: runckit.StatusCreated, faultrunc.StallAfter: runckit.StatusRunning}[action]
		if st, _ := c.State(bg); st.Status != want {
			t.Errorf("start cancelled %s: container is %s, want %s", action, st.Status, want)
		}
	case "pause", "resume":
		if st, _ := c.State(bg); st.Status != runckit.StatusRunning && !(sub == "resume" && action == faultrunc.Stall) {
			t.Errorf("%s cancelled %s: container is %s", sub, action, st.Status)
		}
	}
	found := l.leftovers(id, bundle, exists)
	if exists {
		u, err := untracked(bg, c)
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, u...)
	}
	l.expect(fmt.Sprintf("%s cancelled %s", sub, action), found)
	// The same call works at once.
	switch {
	case sub == "create":
		if c, err = runckit.NewContainer(bg, id, bundle, opts...); err != nil {
			t.Fatalf("create again: %v", err)
		}
	case sub == "delete" && !exists:
		if c, err = runckit.NewContainer(bg, id, bundle, opts...); err != nil {
			t.Fatalf("create again after a cancelled delete: %v", err)
		}
	case sub == "start":
		if st, _ := c.State(bg); st.Status == runckit.StatusCreated {
			if err := c.Start(bg); err != nil {
				t.Fatalf("start again: %v", err)
			}
		}
	case sub == "resume":
		if st, _ := c.State(bg); st.Status == runckit.StatusPaused {
			if err := c.Resume(bg); err != nil {
				t.Fatalf("resume again: %v", err)
			}
		}
	default:
		if err := call(bg); err != nil {
			t.Fatalf("%s again: %v", sub, err)
		}
	}
	if sub != "delete" || !exists {
		if st, _ := c.State(bg); st.Status != runckit.StatusDeleted {
			if err := c.Delete(bg, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
	l.expect("final delete", l.leftovers(id, bundle, false))
}

// cleanupBound is how soon a cancelled call must return: it kills runc at
// once, and clean-up takes milliseconds.
const cleanupBound = 5 * time.Second

package runckit_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// stressOp is one planned step of TestStress: a single exec lifecycle, or a
// race group of execs whose starts race the container's kill and delete.
type stressOp struct {
	kind  string // "true", "exit", "kill", "race"
	slot  int    // which container
	code  int    // for "exit"
	sig   syscall.Signal
	race  raceOp
	delay time.Duration // jitter before the step
}

// raceOp is how a race group ends its container.
type raceOp struct {
	execs   int             // execs whose Start races the end
	ending  string          // "kill+delete", "delete", "killall+delete"
	jitters []time.Duration // per exec start, and last for the ending
}

// stressSlot is one of the test's containers. Lifecycles share it (read
// lock); a race group ends it and puts a new one in its place (write lock).
type stressSlot struct {
	mu sync.RWMutex
	c  *runckit.Container
}

// TestStress runs N exec lifecycles (RUNCKIT_STRESS_N, default 1000) across
// 20 containers, at most 16 in flight, with a seeded random mixture of
// instant exits, exit codes, execs killed with Process.Kill and execs whose
// start races a kill and delete of their container. Every event goes through
// the rule checker; every Wait status must match its exit event.
func TestStress(t *testing.T) {
	n := 1000
	if s := os.Getenv("RUNCKIT_STRESS_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("RUNCKIT_STRESS_N=%q: want a positive integer", s)
		}
		n = v
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("RUNCKIT_STRESS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("RUNCKIT_STRESS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with RUNCKIT_STRESS_SEED=%d), N=%d", seed, seed, n)
	const (
		containers = 20
		inFlight   = 16
		raceExecs  = 3
		waitLimit  = 30 * time.Second
	)
	budget := 2*time.Minute + time.Duration(n)*150*time.Millisecond
	if dl, ok := t.Deadline(); ok && time.Until(dl)-10*time.Second < budget {
		budget = time.Until(dl) - 10*time.Second
	}
	ctx := runckittest.Context(t, budget)
	plan := planStress(rand.New(rand.NewSource(seed)), n, containers, raceExecs)

	e := newEnv(t)
	chk := newEventChecker()
	var created []*runckit.Container // every container, for the final sweep
	var createdMu sync.Mutex
	newContainer := func() *runckit.Container {
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"), runckit.WithEventSink(chk))
		if err := c.Start(ctx); err != nil {
			t.Fatalf("start container %s: %v", c.ID(), err)
		}
		createdMu.Lock()
		created = append(created, c)
		createdMu.Unlock()
		return c
	}
	slots := make([]*stressSlot, containers)
	for i := range slots {
		slots[i] = &stressSlot{c: newContainer()}
	}

	var (
		lifecycles atomic.Int64 // exec lifecycles attempted
		startedOK  atomic.Int64 // of which Start succeeded
		raceFailed atomic.Int64 // racing starts that failed cleanly
		recreated  atomic.Int64
		execSeq    atomic.Int64
		failures   atomic.Int64
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 20 {
			t.Errorf(format, args...)
		}
	}
	// waitExec waits for a started exec, checks its status against want
	// (when given) and registers it with the checker.
	waitExec := func(c *runckit.Container, p *runckit.Process, want func(runckit.ExitStatus) bool, what string) {
		// A lifecycle that hangs is reported with what the kernel and the
		// event stream say about it, and does not hold the others up long.
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		st, err := p.Wait(wctx)
		cancel()
		if err != nil {
			pid := strconv.Itoa(p.Pid())
			stat, _ := os.ReadFile("/proc/" + pid + "/stat")
			status, _ := os.ReadFile("/proc/" + pid + "/status")
			fail("%s: exec %s/%s Wait: %v; runckit says %s, pid %s: stat %q, %s; %s; pidfds for it: %v; its events: %v",
				what, c.ID(), p.ID(), err, p.Status(), pid, stat, sigLines(status), freezerState(pid), pidfdsFor(pid), chk.history(c.ID(), p.ID()))
			return
		}
		chk.expectExit(c.ID(), p.ID(), st)
		if want != nil && !want(st) {
			fail("%s: exec %s/%s exited with %v", what, c.ID(), p.ID(), st)
		}
	}
	newExecID := func(prefix string) string { return fmt.Sprintf("%s-%d", prefix, execSeq.Add(1)) }

	runOne := func(op stressOp) {
		s := slots[op.slot]
		s.mu.RLock()
		defer s.mu.RUnlock()
		c := s.c
		lifecycles.Add(1)
		var (
			args []string
			want func(runckit.ExitStatus) bool
			out  syncBuffer
		)
		stdio := runckit.Stdio{}
		switch op.kind {
		case "true":
			args, want = []string{"true"}, runckit.ExitStatus.Success
		case "exit":
			args = []string{"sh", "-c", fmt.Sprintf("echo %d; exit %d", op.code, op.code)}
			stdio.Stdout = &out
			want = func(st runckit.ExitStatus) bool { return st.Code == op.code && st.Signal == 0 && !st.Unknown }
		case "kill":
			args = []string{"sleep", "100000"}
			want = func(st runckit.ExitStatus) bool { return st.Signal == op.sig && st.Code == 128+int(op.sig) }
		}
		p, err := c.Exec(ctx, newExecID(op.kind), runckittest.ProcessSpec(args...), stdio)
		if err != nil {
			fail("Exec %s in %s: %v", op.kind, c.ID(), err)
			return
		}
		if err := p.Start(ctx); err != nil {
			fail("Start %s/%s: %v", c.ID(), p.ID(), err)
			return
		}
		startedOK.Add(1)
		what := op.kind
		if op.kind == "kill" {
			pid := strconv.Itoa(p.Pid())
			what = fmt.Sprintf("kill with %v (pid %s was %q with %d pidfds when signalled)", op.sig, pid, procComm(pid), len(pidfdsFor(pid)))
			if err := p.Kill(ctx, op.sig); err != nil {
				fail("Kill %s/%s: %v", c.ID(), p.ID(), err)
			}
		}
		waitExec(c, p, want, what)
		if op.kind == "exit" && out.String() != strconv.Itoa(op.code)+"\n" {
			fail("exec %s/%s wrote %q, want %q", c.ID(), p.ID(), out.String(), strconv.Itoa(op.code)+"\n")
		}
		if err := p.Delete(ctx); err != nil {
			fail("Delete exec %s/%s: %v", c.ID(), p.ID(), err)
		}
	}

	runRace := func(op stressOp) {
		s := slots[op.slot]
		s.mu.Lock()
		defer s.mu.Unlock()
		c := s.c
		// One exec already runs when the container ends: it must be killed
		// with it, and its exit published before init's.
		lifecycles.Add(1)
		running, err := c.Exec(ctx, newExecID("victim"), runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{})
		if err == nil {
			err = running.Start(ctx)
		}
		if err != nil {
			fail("race: running exec in %s: %v", c.ID(), err)
			running = nil
		} else {
			startedOK.Add(1)
		}
		var wg sync.WaitGroup
		gate := make(chan struct{})
		type result struct {
			p   *runckit.Process
			err error
		}
		results := make([]result, op.race.execs)
		for i := range results {
			lifecycles.Add(1)
			args := []string{"true"}
			if i%2 == 1 {
				args = []string{"sleep", "100000"}
			}
			p, err := c.Exec(ctx, newExecID("race"), runckittest.ProcessSpec(args...), runckit.Stdio{})
			if err != nil {
				fail("race: Exec in %s: %v", c.ID(), err)
				continue
			}
			results[i].p = p
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				time.Sleep(op.race.jitters[i])
				results[i].err = p.Start(ctx)
			}()
		}
		var endErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			time.Sleep(op.race.jitters[len(op.race.jitters)-1])
			switch op.race.ending {
			case "kill+delete":
				endErr = c.Kill(ctx, syscall.SIGKILL)
			case "killall+delete":
				endErr = c.Kill(ctx, syscall.SIGKILL, runckit.KillAll())
			}
			if endErr != nil {
				endErr = fmt.Errorf("kill: %w", endErr)
				return
			}
			if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
				endErr = fmt.Errorf("delete: %w", err)
			}
		}()
		close(gate)
		wg.Wait()
		if endErr != nil {
			pid := strconv.Itoa(c.Init().Pid())
			stat, _ := os.ReadFile("/proc/" + pid + "/stat")
			status, _ := os.ReadFile("/proc/" + pid + "/status")
			var starts []string
			for _, r := range results {
				if r.p != nil {
					starts = append(starts, fmt.Sprintf("%s: %v (%s)", r.p.ID(), r.err, r.p.Status()))
				}
			}
			fail("race: ending %s with %s: %v; init pid %s: stat %q, %s; %s; pidfds for it: %v; racing starts: %v; container events: %v; zombie children now: %v",
				c.ID(), op.race.ending, endErr, pid, stat, sigLines(status), freezerState(pid), pidfdsFor(pid), starts, chk.history(c.ID(), ""), describeZombies())
			if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) {
				fail("race: delete %s again: %v", c.ID(), err)
			}
		}
		killed := func(st runckit.ExitStatus) bool { return st.Signal == syscall.SIGKILL }
		for _, r := range results {
			if r.p == nil {
				continue
			}
			if r.err != nil {
				raceFailed.Add(1)
				if st := r.p.Status(); st != runckit.StatusCreated && st != runckit.StatusDeleted {
					fail("race: exec %s/%s failed to start (%v) but is %s", c.ID(), r.p.ID(), r.err, st)
				}
				continue
			}
			startedOK.Add(1)
			waitExec(c, r.p, nil, "race")
		}
		if running != nil {
			waitExec(c, running, killed, "race victim")
		}
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		st, err := c.Wait(wctx)
		cancel()
		if err != nil {
			fail("race: container %s Wait: %v", c.ID(), err)
		} else {
			chk.expectExit(c.ID(), "", st)
		}
		recreated.Add(1)
		s.c = newContainer()
	}

	zombiesBefore := make(map[string]bool)
	for _, pid := range zombieChildren() {
		zombiesBefore[pid] = true
	}
	start := time.Now()
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for _, op := range plan {
		if ctx.Err() != nil || failures.Load() > 100 {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			time.Sleep(op.delay)
			if op.kind == "race" {
				runRace(op)
			} else {
				runOne(op)
			}
		}()
	}
	wg.Wait()

	// End the surviving containers; every stream must reach its delete.
	for _, s := range slots {
		c := s.c
		if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
			fail("kill %s: %v", c.ID(), err)
		}
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		st, err := c.Wait(wctx)
		cancel()
		if err != nil {
			fail("wait %s: %v", c.ID(), err)
		} else {
			chk.expectExit(c.ID(), "", st)
		}
		if err := c.Delete(ctx); err != nil {
			fail("delete %s: %v", c.ID(), err)
		}
	}
	for _, c := range created {
		if err := c.Flush(ctx); err != nil {
			fail("flush %s: %v", c.ID(), err)
		}
	}
	wall := time.Since(start)

	// runc helpers (runc:[1:CHILD], runc:[2:INIT]) of an exec that failed
	// because its container was going away are orphaned to this program,
	// the child subreaper. Nothing may be left behind: report them, then
	// reap them so that TestMain's check does not blame the wrong test.
	time.Sleep(100 * time.Millisecond)
	var orphans []string
	for _, pid := range zombieChildren() {
		if zombiesBefore[pid] {
			continue
		}
		comm := procComm(pid)
		orphans = append(orphans, pid+" "+comm)
		if strings.HasPrefix(comm, "runc:") {
			if n, err := strconv.Atoi(pid); err == nil {
				var ws syscall.WaitStatus
				syscall.Wait4(n, &ws, syscall.WNOHANG, nil)
			}
		}
	}
	if len(orphans) > 0 {
		t.Errorf("%d zombie children left unreaped by runckit after racing exec starts with Kill+Delete: %v", len(orphans), orphans)
	}

	r := chk.report(true)
	for _, v := range r.Samples {
		t.Errorf("violation: %v", v)
	}
	if r.Violations != 0 || r.Lost != 0 || r.Duplicates != 0 || r.Mismatched != 0 || r.Unexpected != 0 {
		t.Errorf("checker: %v", r)
	}
	if r.Containers != len(created) {
		t.Errorf("events from %d containers, %d were created", r.Containers, len(created))
	}
	if got := lifecycles.Load(); got < int64(n) && failures.Load() == 0 {
		t.Errorf("ran %d lifecycles, planned %d", got, n)
	}
	t.Logf("stress: lifecycles=%d started=%d race-start-failed=%d containers=%d recreated=%d events=%d exits=%d violations=%d lost=%d duplicates=%d mismatched=%d unexpected=%d zombies=%d wall=%s rate=%.0f/s seed=%d",
		lifecycles.Load(), startedOK.Load(), raceFailed.Load(), len(created), recreated.Load(), r.Events, r.Exits,
		r.Violations, r.Lost, r.Duplicates, r.Mismatched, r.Unexpected, len(orphans), wall.Round(time.Millisecond),
		float64(lifecycles.Load())/wall.Seconds(), seed)
}

// sigLines keeps the state and signal lines of /proc/pid/status.
func sigLines(status []byte) string {
	var out []string
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "State:") || strings.HasPrefix(l, "Sig") || strings.HasPrefix(l, "ShdPnd:") || strings.HasPrefix(l, "PPid:") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return strings.Join(out, "; ")
}

// freezerState reports the cgroup v1 freezer state of pid's cgroup, or ""
// on a cgroup v2 host.
func freezerState(pid string) string {
	data, _ := os.ReadFile("/proc/" + pid + "/cgroup")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "freezer" {
			st, _ := os.ReadFile("/sys/fs/cgroup/freezer" + f[2] + "/freezer.state")
			return "freezer " + f[2] + " " + strings.TrimSpace(string(st))
		}
	}
	return ""
}

// pidfdsFor lists this program's fds that are pidfds for pid.
func pidfdsFor(pid string) []string {
	var fds []string
	entries, _ := os.ReadDir("/proc/self/fdinfo")
	for _, e := range entries {
		info, _ := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		for _, l := range strings.Split(string(info), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "Pid:" && f[1] == pid {
				fds = append(fds, e.Name())
			}
		}
	}
	return fds
}

// describeZombies counts this program's zombie children and lists those
// inside a nested PID namespace (NSpid has two levels): such a zombie keeps
// its namespace's init from finishing its exit until it is reaped.
func describeZombies() []string {
	zombies := zombieChildren()
	out := []string{fmt.Sprintf("%d in all", len(zombies))}
	for _, pid := range zombies {
		status, _ := os.ReadFile("/proc/" + pid + "/status")
		nspid := ""
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "NSpid:") {
				nspid = strings.Join(strings.Fields(l)[1:], "/")
			}
		}
		if strings.Contains(nspid, "/") {
			out = append(out, fmt.Sprintf("%s %s nspid=%s", pid, procComm(pid), nspid))
		}
	}
	return out
}

// procComm is the command name of pid, from /proc/pid/stat.
func procComm(pid string) string {
	stat, _ := os.ReadFile("/proc/" + pid + "/stat")
	i, j := strings.IndexByte(string(stat), '('), strings.LastIndexByte(string(stat), ')')
	if i < 0 || j < i {
		return "?"
	}
	return string(stat[i+1 : j])
}

// planStress draws the test's steps: N lifecycles in all, about one in a
// hundred of them in race groups of 1+raceExecs.
func planStress(rng *rand.Rand, n, containers, raceExecs int) []stressOp {
	groups := n / 100
	if groups < 2 {
		groups = 2
	}
	if groups*(raceExecs+1) > n/2 {
		groups = n / 2 / (raceExecs + 1)
	}
	raceAt := make(map[int]bool)
	for len(raceAt) < groups {
		raceAt[rng.Intn(n)] = true
	}
	var plan []stressOp
	for total := 0; total < n; {
		op := stressOp{slot: rng.Intn(containers), delay: time.Duration(rng.Intn(3)) * time.Millisecond}
		if raceAt[len(plan)] && n-total >= raceExecs+1 {
			op.kind = "race"
			op.race = raceOp{execs: raceExecs, ending: []string{"kill+delete", "delete", "killall+delete"}[rng.Intn(3)]}
			for i := 0; i <= raceExecs; i++ {
				op.race.jitters = append(op.race.jitters, time.Duration(rng.Intn(40))*time.Millisecond)
			}
			total += raceExecs + 1
		} else {
			switch x := rng.Intn(100); {
			case x < 35:
				op.kind = "true"
			case x < 70:
				op.kind, op.code = "exit", rng.Intn(126)
			default:
				op.kind = "kill"
				op.sig = []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1}[rng.Intn(4)]
			}
			total++
		}
		plan = append(plan, op)
	}
	return plan
}

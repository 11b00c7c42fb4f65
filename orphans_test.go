package runckit_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// zombieInfo is one zombie child of the test process.
type zombieInfo struct {
	pid, session int
	comm         string
}

func (z zombieInfo) String() string { return fmt.Sprintf("%d %q sid=%d", z.pid, z.comm, z.session) }

// zombieChildInfo lists this process's zombie children with their command
// name and session, which a zombie still shows.
func zombieChildInfo() []zombieInfo {
	var out []zombieInfo
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		data, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		for _, f := range strings.Fields(string(data)) {
			stat, _ := os.ReadFile("/proc/" + f + "/stat")
			i := strings.LastIndexByte(string(stat), ')')
			if i < 0 || len(stat) < i+2 {
				continue
			}
			// After the name: state ppid pgrp session ...
			rest := strings.Fields(string(stat[i+2:]))
			if len(rest) < 4 || rest[0] != "Z" {
				continue
			}
			pid, _ := strconv.Atoi(f)
			sid, _ := strconv.Atoi(rest[3])
			comm, _ := os.ReadFile("/proc/" + f + "/comm")
			out = append(out, zombieInfo{pid: pid, session: sid, comm: strings.TrimSpace(string(comm))})
		}
	}
	return out
}

// awaitNoZombies polls until no zombie child matches, or d has passed; it
// returns those still left.
func awaitNoZombies(d time.Duration, match func(zombieInfo) bool) []zombieInfo {
	deadline := time.Now().Add(d)
	for {
		var left []zombieInfo
		for _, z := range zombieChildInfo() {
			if match(z) {
				left = append(left, z)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Background children of a host-PID container's init are re-parented to
// this program when init exits (it is the subreaper). They belong to the
// container and must be reaped, not left as zombies after Delete.
func TestOrphansOfHostPIDContainerAreReaped(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	// init exits once told (after the exec below), leaving its sleeps behind.
	c := e.create(ctx, hostPIDSpec(t, "sh", "-c", "sleep 0.3 & sleep 0.3 & while [ ! -e /tmp/go ]; do sleep 0.01; done; exit 0"))
	init := c.Init().Pid()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// An exec's background children are orphans of its session in turn.
	p, err := c.Exec(ctx, "bg", runckittest.ProcessSpec("sh", "-c", "sleep 0.2 & exit 3"), runckit.Stdio{})
	if err == nil {
		err = p.Start(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || st.Code != 3 || st.Unknown {
		t.Fatalf("exec = %v, %v; want exit code 3", st, err)
	}
	execPid := p.Pid()
	// Only now may init exit: in the host PID namespace its exit kills the
	// execs still running (rule 7), which would race the exec's own exit.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/root/tmp/go", init), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil || st.Code != 0 || st.Unknown {
		t.Fatalf("init = %v, %v; want exit code 0", st, err)
	}
	// The sleeps outlive init and end on their own, as zombies of ours.
	time.Sleep(500 * time.Millisecond)
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	// runc makes init a session leader; its children stay in its session.
	left := awaitNoZombies(2*time.Second, func(z zombieInfo) bool { return z.session == init || z.session == execPid })
	if len(left) > 0 {
		t.Errorf("the container's orphans are zombies 2 s after Delete: %v", left)
	}
}

// A cancelled runc create leaves runc's helper (runc init, or runc:[...]
// further on) re-parented to this program; it must be reaped. Meanwhile
// the program's own runc commands, run with os/exec, keep their exits.
func TestCancelledCreateLeavesNoRuncZombie(t *testing.T) {
	e := newEnv(t)
	spec := runckittest.Spec(t, "sleep", "1000")
	stop := make(chan struct{})
	var own sync.Map // pids of the parallel runc --version commands
	var versions, versionFailures atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			cmd := exec.Command("runc", "--version")
			if err := cmd.Start(); err != nil {
				t.Error(err)
				return
			}
			own.Store(cmd.Process.Pid, true)
			if err := cmd.Wait(); err != nil {
				versionFailures.Add(1)
				t.Errorf("runc --version beside runckit: %v", err)
			}
			own.Delete(cmd.Process.Pid)
			versions.Add(1)
		}
	}()
	ownRunc := func(z zombieInfo) bool {
		_, mine := own.Load(z.pid)
		return !mine && strings.HasPrefix(z.comm, "runc")
	}
	// Cancel anywhere from the start to a little past a whole create, as
	// long as one takes on this machine now.
	t0 := time.Now()
	c, err := runckit.NewContainer(context.Background(), newID(t), runckittest.Bundle(t, spec), runckit.WithRuntimeRoot(e.root))
	if err != nil {
		t.Fatal(err)
	}
	span := time.Since(t0) * 6 / 5
	if err := c.Delete(context.Background(), runckit.DeleteForce()); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	created := 0
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Duration(rng.Int63n(int64(span))), cancel)
		c, err := runckit.NewContainer(ctx, newID(t), runckittest.Bundle(t, spec), runckit.WithRuntimeRoot(e.root))
		cancel()
		if err == nil {
			created++
			dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := c.Delete(dctx, runckit.DeleteForce()); err != nil {
				t.Error(err)
			}
			dcancel()
		}
		if left := awaitNoZombies(2*time.Second, ownRunc); len(left) > 0 {
			t.Errorf("round %d: runc zombies left 2 s after a cancelled create: %v", i, left)
			break
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("cancelled within %v: %d of 100 creates completed first; %d runc --version beside them, %d failed", span, created, versions.Load(), versionFailures.Load())
}

// A cancelled runc exec leaves runc's helpers behind as well, in the
// program's session or the container's PID namespace; they are reaped, and
// the container still ends with exact exits.
func TestCancelledExecLeavesNoRuncZombie(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	t0 := time.Now()
	p, err := c.Exec(ctx, "probe", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err == nil {
		err = p.Start(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	span := time.Since(t0) * 6 / 5
	if st, err := p.Wait(ctx); err != nil || !st.Success() {
		t.Fatalf("probe exec = %v, %v", st, err)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	started := 0
	for i := 0; i < 30; i++ {
		p, err := c.Exec(ctx, fmt.Sprintf("x%d", i), runckittest.ProcessSpec("sh", "-c", "exit 6"), runckit.Stdio{})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(time.Duration(rng.Int63n(int64(span))), cancel)
		err = p.Start(sctx)
		cancel()
		if err == nil {
			started++
			if st, err := p.Wait(ctx); err != nil || st.Code != 6 || st.Unknown {
				t.Errorf("exec %d = %v, %v; want exit code 6", i, st, err)
			}
		}
		if left := awaitNoZombies(2*time.Second, func(z zombieInfo) bool { return strings.HasPrefix(z.comm, "runc") }); len(left) > 0 {
			t.Errorf("round %d: runc zombies left 2 s after a cancelled exec: %v", i, left)
			break
		}
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Errorf("init = %v, %v; want killed by SIGKILL", st, err)
	}
	t.Logf("cancelled within %v: %d of 30 execs started first", span, started)
}

// The program's own children started with os/exec keep exact exit
// statuses next to runckit, and what they leave behind in the background
// (re-parented to the program, which runckit made a subreaper) does not
// pile up as zombies.
func TestProgramOrphansReapedOwnExitsExact(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx) // runckit is active, in its default mode
	const n = 1000
	start := time.Now()
	var wg sync.WaitGroup
	var wrong atomic.Int64
	stop := make(chan struct{})
	sevens := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := exec.Command("sh", "-c", "exit 7").Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 7 {
				wrong.Add(1)
				t.Errorf("sh -c 'exit 7' beside runckit: %v", err)
			}
			sevens++
		}
	}()
	var next atomic.Int64
	var runners sync.WaitGroup
	for w := 0; w < 4; w++ {
		runners.Add(1)
		go func() {
			defer runners.Done()
			for next.Add(1) <= n {
				if err := exec.Command("sh", "-c", "sleep 0.1 &").Run(); err != nil {
					t.Errorf("sh -c 'sleep 0.1 &': %v", err)
				}
			}
		}()
	}
	runners.Wait()
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	left := awaitNoZombies(3*time.Second, func(z zombieInfo) bool { return z.pid != c.Init().Pid() })
	t.Logf("%d background sleeps in %v, %d exact exit 7s beside them", n, elapsed.Round(time.Millisecond), sevens)
	if len(left) > 0 {
		shown := left
		if len(shown) > 10 {
			shown = shown[:10]
		}
		t.Errorf("%d zombies left 3 s after %d runs of sh -c 'sleep 0.1 &': %v...", len(left), n, shown)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// ReapProgramOrphans(false) gives the program its own zombies back: a child
// forked without os/exec holds no pidfd, so the reaper can not tell it
// from an orphan, and only with the program's orphans left alone does the
// program's own wait4 get its status.
func TestReapProgramOrphansOff(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	e.sleeper(ctx) // runckit is active: subreaper, orphan reaper running
	runckit.ReapProgramOrphans(false)
	defer runckit.ReapProgramOrphans(true)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	// One direct child without a pidfd, one orphan of a direct child.
	pid, err := syscall.ForkExec(sh, []string{"sh", "-c", "exit 3"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("sh", "-c", "sleep 0.05 &").Run(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let SIGCHLD reach the reaper
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || ws.ExitStatus() != 3 {
		t.Errorf("wait4 on our own forked child = %v, %v; want exit 3 (taken by the reaper?)", ws, err)
	}
	if left := zombieChildInfo(); len(left) == 0 {
		t.Errorf("the orphaned sleep was reaped although the program keeps its orphans")
	}
	runckit.ReapProgramOrphans(true)
	if left := awaitNoZombies(2*time.Second, func(zombieInfo) bool { return true }); len(left) > 0 {
		t.Errorf("zombies left once the program's orphans are reaped again: %v", left)
	}
}

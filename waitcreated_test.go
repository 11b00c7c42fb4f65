package runckit_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// waitResult is what a Wait begun in a goroutine returned.
type waitResult struct {
	st  runckit.ExitStatus
	err error
}

// waitAsync starts p.Wait and checks that it is still blocked a moment
// later: the exec has not been started, so it has nothing to report yet.
func waitAsync(t *testing.T, ctx context.Context, p *runckit.Process) <-chan waitResult {
	t.Helper()
	ch := make(chan waitResult, 1)
	go func() {
		st, err := p.Wait(ctx)
		ch <- waitResult{st, err}
	}()
	select {
	case r := <-ch:
		t.Fatalf("Wait on a created exec returned at once: %v, %v; want it to block until the exec exits", r.st, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	return ch
}

func awaitWait(t *testing.T, ch <-chan waitResult) waitResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("Wait still blocked 20 s on")
	}
	return waitResult{}
}

// containerd's client waits for an exec before it starts it. A Wait on a
// created exec blocks and returns the exit of the start that follows.
// Unfixed, it returned ErrFailedPrecondition at once.
func TestWaitOnCreatedExecReturnsItsExit(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	p, err := c.Exec(ctx, "later", runckittest.ProcessSpec("sh", "-c", "exit 5"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	ch := waitAsync(t, ctx, p)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r := awaitWait(t, ch); r.err != nil || r.st.Code != 5 {
		t.Fatalf("Wait = %v, %v; want exit code 5", r.st, r.err)
	}
}

// A Wait on a created exec ends with ErrNotFound when the exec, or its
// container, is deleted without being started.
func TestWaitOnCreatedExecEndsOnDelete(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	p, err := c.Exec(ctx, "never", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	ch := waitAsync(t, ctx, p)
	if err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if r := awaitWait(t, ch); !errdefs.IsNotFound(r.err) {
		t.Errorf("Wait after Delete of the exec = %v, %v; want ErrNotFound", r.st, r.err)
	}

	q, err := c.Exec(ctx, "orphan", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	ch = waitAsync(t, ctx, q)
	if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
		t.Fatal(err)
	}
	if r := awaitWait(t, ch); !errdefs.IsNotFound(r.err) {
		t.Errorf("Wait after Delete of the container = %v, %v; want ErrNotFound", r.st, r.err)
	}
	if st := q.Status(); st != runckit.StatusDeleted {
		t.Errorf("the never-started exec of a deleted container is %s, want deleted", st)
	}
}

// A Wait begun on a created exec returns ErrFailedPrecondition when the
// start that follows fails; one begun after the failure blocks again, for
// the exec may be started again.
func TestWaitOnCreatedExecEndsOnFailedStart(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
	p, err := c.Exec(ctx, "doomed", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	ch := waitAsync(t, ctx, p)
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Fail, Message: "injected exec failure"})
	if err := p.Start(ctx); err == nil {
		t.Fatal("Start succeeded under an injected failure")
	}
	if r := awaitWait(t, ch); !errdefs.IsFailedPrecondition(r.err) {
		t.Errorf("Wait across a failed start = %v, %v; want ErrFailedPrecondition", r.st, r.err)
	}
	ch = waitAsync(t, ctx, p)
	rt.Clear("exec")
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r := awaitWait(t, ch); r.err != nil || !r.st.Success() {
		t.Errorf("Wait across the second start = %v, %v; want exit code 0", r.st, r.err)
	}
}

// containerd's TestIssue10589: init dies while an exec's start is under
// way, so its exit is held back; meanwhile the client reserves another
// exec. The reservation succeeds (init's exit is not published yet), its
// start fails with ErrFailedPrecondition, and both execs are created again.
// Unfixed, the reservation was refused.
func TestExecReservedWhileInitExitIsHeld(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Stall})
	p1, err := c.Exec(ctx, "exec1", runckittest.ProcessSpec("sleep", "301"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	start1 := make(chan error, 1)
	go func() { start1 <- p1.Start(ctx) }()
	if err := rt.WaitStalled(ctx, "exec"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(c.Init().Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for !c.InitExitHeld() {
		if ctx.Err() != nil {
			t.Fatal("init not seen to exit")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p2, err := c.Exec(ctx, "exec2", runckittest.ProcessSpec("sleep", "302"), runckit.Stdio{})
	if err != nil {
		t.Fatalf("Exec while init's exit is held for a starting exec: %v", err)
	}
	if err := p2.Start(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("start of exec2 after init's exit = %v, want ErrFailedPrecondition", err)
	}
	rt.Release("exec")
	if err := <-start1; err == nil {
		t.Error("exec1 started in a container whose init is gone")
	}
	if st, err := c.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
		t.Errorf("init Wait = %v, %v; want killed by SIGKILL", st, err)
	}
	for _, p := range []*runckit.Process{p1, p2} {
		if st := p.Status(); st != runckit.StatusCreated {
			t.Errorf("exec %s is %s, want created", p.ID(), st)
		}
	}
	if _, err := c.Exec(ctx, "exec3", runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Exec after init's exit was published = %v, want ErrFailedPrecondition", err)
	}
}

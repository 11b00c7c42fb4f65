package runckit_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// TestInitStatusWhileItsExitIsHeld: once init has died while an exec is
// still inside runc exec, init's exit is held back until that exec is
// accounted for (rule 2: execs' exits first). Until then init reports
// running, as containerd's runc shim does, so a caller that sees "stopped"
// can always Wait for the exit at once; before, Status said stopped and a
// Wait behind it blocked until the exec's start ended (containerd's
// TestIssue10589 timed out in the shim's State).
func TestInitStatusWhileItsExitIsHeld(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
	pid := c.Init().Pid()
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Stall})
	p, err := c.Exec(ctx, "held", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- p.Start(ctx) }()
	if err := rt.WaitStalled(ctx, "exec"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for !c.InitExitHeld() {
		if ctx.Err() != nil {
			t.Fatal("init's exit not seen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := c.Init().Status(); got != runckit.StatusRunning {
		t.Errorf("init while its exit is held: %s, want %s", got, runckit.StatusRunning)
	}
	if st, err := c.State(ctx); err != nil || st.Status != runckit.StatusRunning {
		t.Errorf("State while init's exit is held = %v, %v; want running", st.Status, err)
	}

	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Fail, Message: "injected exec failure"})
	rt.Release("exec")
	if err := <-started; err == nil {
		t.Error("exec started after init died")
	}
	st, err := c.Wait(ctx)
	if err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("init Wait = %v, %v; want SIGKILL", st, err)
	}
	if got := c.Init().Status(); got != runckit.StatusStopped {
		t.Errorf("init after its exit event: %s, want %s", got, runckit.StatusStopped)
	}
}

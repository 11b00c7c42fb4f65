package runckit_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// An exec whose runc exec is held back while init exits is accounted for:
// either its exit is published before init's, or its start fails with
// ErrFailedPrecondition; nothing hangs. Meanwhile other operations on the
// container go on, because no lock is held across runc (rule 6).
func TestExecStalledInRuncWhileInitExits(t *testing.T) {
	for _, stall := range []faultrunc.Action{faultrunc.Stall, faultrunc.StallAfter} {
		t.Run(string(stall), func(t *testing.T) {
			ctx := runckittest.Context(t, time.Minute)
			rt := faultrunc.New(t)
			e := newEnv(t)
			c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
			rt.Set(t, "exec", faultrunc.Fault{Action: stall, Once: true})

			p, err := c.Exec(ctx, "held", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{})
			if err != nil {
				t.Fatal(err)
			}
			startErr := make(chan error, 1)
			go func() { startErr <- p.Start(ctx) }()
			if err := rt.WaitStalled(ctx, "exec"); err != nil {
				t.Fatal(err)
			}

			// While runc exec is stalled: another exec runs and init is killed.
			other := runExec(t, ctx, c, "other", "true")
			if st, err := other.Wait(ctx); err != nil || !st.Success() {
				t.Fatalf("exec beside a stalled one = %v, %v", st, err)
			}
			if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			// Init's exit can not be published while the start is under way.
			waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = c.Wait(waitCtx)
			cancel()
			if err == nil {
				t.Fatal("init's exit was published while an exec start was under way")
			}
			rt.Release("exec")

			err = <-startErr
			if err != nil && !errdefs.IsFailedPrecondition(err) {
				t.Errorf("stalled exec start = %v, want success or ErrFailedPrecondition", err)
			}
			if _, werr := c.Wait(ctx); werr != nil {
				t.Fatalf("init Wait: %v", werr)
			}
			if err == nil {
				if _, werr := p.Wait(ctx); werr != nil {
					t.Errorf("stalled exec Wait: %v", werr)
				}
			}
			if err := c.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			exits := checkOrder(t, e.rec.Events())
			_, heldExited := exits["held"]
			if heldExited != (err == nil) {
				t.Errorf("held exec: start error %v but exit published = %v", err, heldExited)
			}
			t.Logf("stalled exec start: %v; events %s", err, kinds(e.rec.Events()))
		})
	}
}

// An exec whose start fails in runc while init is exiting does not hold
// init's exit back: counts stay right and nothing hangs.
func TestExecStartFailsWhileInitExits(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Stall})
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		p, err := c.Exec(ctx, "doomed"+itoa(i), runckittest.ProcessSpec("true"), runckit.Stdio{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = p.Start(ctx) }()
	}
	if err := rt.WaitStalled(ctx, "exec"); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Let init's exit be seen, then make every stalled exec fail.
	time.Sleep(100 * time.Millisecond)
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Fail, Message: "injected exec failure"})
	rt.Release("exec")
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			t.Errorf("exec %d started despite the injected failure", i)
		}
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if exits := checkOrder(t, e.rec.Events()); len(exits) != 1 {
		t.Errorf("exits = %v, want init's only", exits)
	}
}

// A runc failure at create carries runc's message, the container ID and
// the step, and leaves nothing: no state, no mount, no open IO.
func TestInjectedCreateFailure(t *testing.T) {
	for _, action := range []faultrunc.Action{faultrunc.Fail, faultrunc.CrashBefore, faultrunc.CrashAfter} {
		t.Run(string(action), func(t *testing.T) {
			ctx := runckittest.Context(t, time.Minute)
			rt := faultrunc.New(t)
			rt.Set(t, "create", faultrunc.Fault{Action: action, Message: "injected create failure"})
			root := runckittest.RuntimeRoot(t)
			spec := runckittest.Spec(t, "sleep", "10")
			spec.Process.Terminal = true
			var out syncBuffer
			_, err := runckit.NewContainer(ctx, "injected", runckittest.Bundle(t, spec),
				runckit.WithRuntime(rt.Path), runckit.WithRuntimeRoot(root),
				runckit.WithStdio(runckit.Stdio{Terminal: true, Stdout: &out}))
			if err == nil {
				t.Fatal("NewContainer succeeded")
			}
			if action == faultrunc.Fail && !strings.Contains(err.Error(), "injected create failure") {
				t.Errorf("error %q lacks runc's message", err)
			}
			if !strings.Contains(err.Error(), `"injected"`) {
				t.Errorf("error %q lacks the container ID", err)
			}
			if _, serr := os.Stat(root + "/injected"); serr == nil {
				t.Errorf("runc state left behind")
			}
		})
	}
}

// A runc start that fails leaves init created; the container can still be
// deleted and its stream stays whole.
func TestInjectedStartFailure(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"), runckit.WithRuntime(rt.Path))
	rt.Set(t, "start", faultrunc.Fault{Action: faultrunc.Fail, Message: "injected start failure", Once: true})
	err := c.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "injected start failure") || !strings.Contains(err.Error(), "start") {
		t.Fatalf("Start = %v, want the injected failure", err)
	}
	if st, _ := c.State(ctx); st.Status != runckit.StatusCreated {
		t.Errorf("status after failed start = %s, want created", st.Status)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, e.rec.Events())
	if got := kinds(e.rec.Events()); got != "create exit delete" {
		t.Errorf("events = %s", got)
	}
}

// A fault in runc exec (failure, crash before or after runc did its work,
// stall with the caller giving up) returns an error, leaves no process
// running untracked and does not hold init's exit back.
func TestInjectedExecFaults(t *testing.T) {
	for _, action := range []faultrunc.Action{faultrunc.Fail, faultrunc.CrashBefore, faultrunc.CrashAfter, faultrunc.Stall} {
		t.Run(string(action), func(t *testing.T) {
			ctx := runckittest.Context(t, time.Minute)
			rt := faultrunc.New(t)
			e := newEnv(t)
			c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
			rt.Set(t, "exec", faultrunc.Fault{Action: action, Message: "injected exec failure", Once: true})
			p, err := c.Exec(ctx, "faulty", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{})
			if err != nil {
				t.Fatal(err)
			}
			startCtx := ctx
			if action == faultrunc.Stall {
				var cancel context.CancelFunc
				startCtx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
			}
			if err := p.Start(startCtx); err == nil {
				t.Fatal("Start succeeded despite the fault")
			} else if action == faultrunc.Stall && !errdefs.IsDeadlineExceeded(err) {
				t.Errorf("Start after a stall past the deadline = %v, want a deadline error", err)
			} else {
				t.Logf("Start: %v", err)
			}
			if st := p.Status(); st != runckit.StatusCreated {
				t.Errorf("status after failed start = %s, want created", st)
			}
			// The container still works, and a retry of the same exec runs.
			if err := p.Start(ctx); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if exits := checkOrder(t, e.rec.Events()); len(exits) != 2 {
				t.Errorf("exits = %v, want the retried exec's and init's", exits)
			}
		})
	}
}

// A Wait begun while an exec's start is under way returns when that start
// fails, instead of waiting for an exit that will never come.
func TestWaitDuringFailingStartReturns(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	rt := faultrunc.New(t)
	e := newEnv(t)
	c := e.sleeper(ctx, runckit.WithRuntime(rt.Path))
	rt.Set(t, "exec", faultrunc.Fault{Action: faultrunc.Stall})
	p, err := c.Exec(ctx, "doomed", runckittest.ProcessSpec("true"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	startCtx, cancelStart := context.WithCancel(ctx)
	startErr := make(chan error, 1)
	go func() { startErr <- p.Start(startCtx) }()
	if err := rt.WaitStalled(ctx, "exec"); err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() {
		_, err := p.Wait(ctx)
		waitErr <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Wait block
	cancelStart()                     // the caller gives up: runc is killed, the start fails
	if err := <-startErr; err == nil {
		t.Fatal("Start succeeded")
	}
	select {
	case err := <-waitErr:
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("Wait = %v, want ErrFailedPrecondition", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked 10 s after the start failed")
	}
}

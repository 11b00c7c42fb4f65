package runckit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/faultrunc"
	"github.com/runckit/runckit/runckittest"
)

// The states a container is driven into for the lifecycle table test, and
// the operations tried in each.
var (
	lcStates = []string{"created", "starting", "running", "pausing", "paused", "resuming", "init exited", "deleting", "deleted"}
	lcOps    = []string{"Start", "Exec", "Process.Start", "Kill", "Pause", "Resume", "Update", "Pids", "Stats",
		"Checkpoint", "Stop", "Wait", "Delete", "DeleteForce", "State"}
)

// lcExpect is what a user may expect of each (operation, state) pair,
// written independently of lifecycle.go's table: Y runs, F is
// ErrFailedPrecondition, N is ErrNotFound. Refusals change nothing.
var lcExpect = map[string]string{
	//               created starting running pausing paused resuming exited deleting deleted
	"Start":         "Y F F F F F F F N",
	"Exec":          "Y Y Y F F F F F N",
	"Process.Start": "Y Y Y F F F F F N",
	"Kill":          "Y Y Y Y Y Y F F N",
	"Pause":         "F F Y F F F F F N",
	"Resume":        "F F F F Y F F F N",
	"Update":        "Y Y Y Y Y Y F F N",
	"Pids":          "Y Y Y Y Y Y Y F N",
	"Stats":         "Y Y Y Y Y Y F F N",
	"Checkpoint":    "F F Y F Y F F F N",
	"Stop":          "Y Y Y F Y F Y F N",
	"Wait":          "Y Y Y Y Y Y Y Y Y",
	"Delete":        "Y F F F F F Y F N",
	"DeleteForce":   "Y Y Y Y Y Y Y F N",
	"State":         "Y Y Y Y Y Y Y Y N",
}

// lcFixture is a container driven into one state.
type lcFixture struct {
	c    *runckit.Container
	exec *runckit.Process // reserved while created, for Process.Start
	rec  *runckittest.Recorder
	rt   *faultrunc.Runtime
	// release ends a stalled runc call that holds a transitional state.
	release func()
}

// enterState makes a container and drives it into state for real: runc
// calls stalled by faultrunc hold the transitional states.
func enterState(t *testing.T, ctx context.Context, state string) *lcFixture {
	t.Helper()
	rt := faultrunc.New(t)
	rec := &runckittest.Recorder{}
	root := runckittest.RuntimeRoot(t)
	c, err := runckit.NewContainer(ctx, newID(t), runckittest.Bundle(t, runckittest.Spec(t, "sleep", "100000")),
		runckit.WithRuntime(rt.Path), runckit.WithRuntimeRoot(root), runckit.WithEventSink(rec))
	if err != nil {
		t.Fatalf("NewContainer: %v", err)
	}
	f := &lcFixture{c: c, rec: rec, rt: rt, release: func() {}}
	t.Cleanup(func() {
		f.release()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			t.Errorf("cleanup delete: %v", err)
		}
		// A delete still under way (the deleting state) finishes on its own.
		c.Wait(ctx)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := c.State(ctx); errdefs.IsNotFound(err) {
				break
			}
		}
	})
	if f.exec, err = c.Exec(ctx, "lc-exec", runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{}); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("entering %s: %s: %v", state, what, err)
		}
	}
	// stall runs op in the background while runc's subcommand is held.
	stall := func(sub string, op func() error) {
		t.Helper()
		rt.Set(t, sub, faultrunc.Fault{Action: faultrunc.Stall, Once: true})
		done := make(chan error, 1)
		go func() { done <- op() }()
		if err := rt.WaitStalled(ctx, sub); err != nil {
			t.Fatal(err)
		}
		f.release = func() {
			rt.Release(sub)
			<-done
			f.release = func() {}
		}
	}
	switch state {
	case "created":
	case "starting":
		stall("start", func() error { return c.Start(context.Background()) })
	case "running":
		must("start", c.Start(ctx))
	case "pausing":
		must("start", c.Start(ctx))
		stall("pause", func() error { return c.Pause(context.Background()) })
	case "paused":
		must("start", c.Start(ctx))
		must("pause", c.Pause(ctx))
	case "resuming":
		must("start", c.Start(ctx))
		must("pause", c.Pause(ctx))
		stall("resume", func() error { return c.Resume(context.Background()) })
	case "init exited":
		must("start", c.Start(ctx))
		must("kill", c.Kill(ctx, syscall.SIGKILL))
		_, err := c.Wait(ctx)
		must("wait", err)
	case "deleting":
		must("start", c.Start(ctx))
		stall("delete", func() error { return c.Delete(context.Background(), runckit.DeleteForce()) })
	case "deleted":
		must("delete", c.Delete(ctx, runckit.DeleteForce()))
	default:
		t.Fatalf("unknown state %q", state)
	}
	return f
}

// stalledSub is the runc subcommand held to keep a transitional state.
var stalledSub = map[string]string{"starting": "start", "pausing": "pause", "resuming": "resume", "deleting": "delete"}

// run performs op on the fixture and returns its error.
func (f *lcFixture) run(ctx context.Context, op string) error {
	c := f.c
	switch op {
	case "Start":
		return c.Start(ctx)
	case "Exec":
		_, err := c.Exec(ctx, "lc-other", runckittest.ProcessSpec("true"), runckit.Stdio{})
		return err
	case "Process.Start":
		return f.exec.Start(ctx)
	case "Kill":
		return c.Kill(ctx, syscall.SIGKILL)
	case "Pause":
		return c.Pause(ctx)
	case "Resume":
		return c.Resume(ctx)
	case "Update":
		limit := int64(100)
		return c.Update(ctx, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}})
	case "Pids":
		_, err := c.Pids(ctx)
		return err
	case "Stats":
		_, err := c.Stats(ctx)
		return err
	case "Checkpoint":
		return c.Checkpoint(ctx, runckit.CheckpointOptions{ImagePath: "/nonexistent-runckit/ckpt", LeaveRunning: true})
	case "Stop":
		_, err := c.Stop(ctx, 50*time.Millisecond)
		return err
	case "Wait":
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := c.Wait(wctx)
		if errors.Is(err, context.DeadlineExceeded) {
			return nil // waiting is allowed; init simply has not exited
		}
		return err
	case "Delete":
		return c.Delete(ctx)
	case "DeleteForce":
		return c.Delete(ctx, runckit.DeleteForce())
	case "State":
		_, err := c.State(ctx)
		return err
	}
	panic("unknown operation " + op)
}

// TestLifecycleTable drives a real container into every state and tries
// every operation there: each refused pair returns the kind the table
// names and changes nothing (status and event stream stay as they were);
// each allowed pair is not refused by the guard.
func TestLifecycleTable(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the lifecycle table starts ~100 containers")
	}
	for si, state := range lcStates {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			ctx := runckittest.Context(t, 3*time.Minute)
			var refused []string
			for _, op := range lcOps {
				want := lcExpect[op][2*si]
				if want != 'Y' {
					refused = append(refused, op)
					continue
				}
				t.Run(op, func(t *testing.T) {
					f := enterState(t, ctx, state)
					// While runc start is held, an exit is held too (its
					// start event comes first): Stop and a forced Delete
					// wait for it, so their wait is bounded here.
					opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
					defer cancel()
					err := f.run(opCtx, op)
					if errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err) {
						t.Errorf("%s while %s = %v, want it allowed", op, state, err)
					}
				})
			}
			// Refusals change nothing, so one container serves them all.
			f := enterState(t, ctx, state)
			before, _ := f.c.State(ctx)
			f.c.Flush(ctx)
			events := len(f.rec.Events())
			// A refusal must come from the guard, before runc: any runc
			// call now fails with a message the checks below look for.
			subs := []string{"start", "exec", "kill", "pause", "resume", "update", "ps", "checkpoint", "delete"}
			for _, sub := range subs {
				if sub != stalledSub[state] {
					f.rt.Set(t, sub, faultrunc.Fault{Action: faultrunc.Fail, Message: "guard let runc run"})
				}
			}
			defer func() {
				for _, sub := range subs {
					if sub != stalledSub[state] {
						f.rt.Clear(sub)
					}
				}
			}()
			for _, op := range refused {
				want := lcExpect[op][2*si]
				err := f.run(ctx, op)
				switch {
				case err != nil && strings.Contains(err.Error(), "guard let runc run"):
					t.Errorf("%s while %s ran runc: %v", op, state, err)
				case want == 'F' && !errdefs.IsFailedPrecondition(err):
					t.Errorf("%s while %s = %v, want ErrFailedPrecondition", op, state, err)
				case want == 'N' && !errdefs.IsNotFound(err):
					t.Errorf("%s while %s = %v, want ErrNotFound", op, state, err)
				}
				after, _ := f.c.State(ctx)
				if fmt.Sprint(after) != fmt.Sprint(before) {
					t.Errorf("refused %s while %s changed the state: %+v -> %+v", op, state, before, after)
				}
				f.c.Flush(ctx)
				if n := len(f.rec.Events()); n != events {
					t.Errorf("refused %s while %s published %d events", op, state, n-events)
				}
			}
		})
	}
}

// An exec runs in a created container before Start, and its exit comes
// before init's.
func TestExecInCreatedContainer(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "exit 3"))
	var out strings.Builder
	p, err := c.Exec(ctx, "prepare", runckittest.ProcessSpec("sh", "-c", "echo ready; exit 4"), runckit.Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("exec in a created container: %v", err)
	}
	if st, err := p.Wait(ctx); err != nil || st.Code != 4 || out.String() != "ready\n" {
		t.Fatalf("exec = %v, %v, output %q; want code 4 and \"ready\"", st, err, out.String())
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Code != 3 {
		t.Fatalf("init = %v, %v; want code 3", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kinds(e.rec.Events()); got != "create exec-added:prepare exec-started:prepare exit:prepare start exit delete" {
		t.Errorf("events = %s", got)
	}
}

// Stop on a paused container resumes it, so the stop signal and the
// SIGKILL after the grace period act, and returns init's exit.
func TestStopPausedContainer(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stop(ctx, 200*time.Millisecond)
	if err != nil || st.Signal == 0 {
		t.Fatalf("Stop of a paused container = %v, %v; want a signal exit", st, err)
	}
	c.Flush(ctx)
	if got := kinds(e.rec.Events()); !strings.HasPrefix(got, "create start pause resume exit") {
		t.Errorf("events = %s", got)
	}
}

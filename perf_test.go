package runckit_test

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/internal/phase"
	"github.com/runckit/runckit/runckittest"
)

// pidfdCount counts the pidfds this process holds.
func pidfdCount(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if link, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && link == "anon_inode:[pidfd]" {
			n++
		}
	}
	return n
}

// TestPerfIdleContainerHoldsOnePidfd: a running container's init is
// signalled and watched through one pidfd, not one each (issue 12: at most
// 2 fds per idle container, the other being the OOM notifier). So is a
// running exec.
func TestPerfIdleContainerHoldsOnePidfd(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	// A first container starts the shared watcher's loop (its epoll fd),
	// which the count below must not see.
	warm := e.create(ctx, runckittest.Spec(t, "sleep", "1000"))
	if err := warm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := pidfdCount(t)
	c := e.create(ctx, runckittest.Spec(t, "sleep", "1000"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pidfdCount(t) - before; got != 1 {
		t.Errorf("a running container holds %d pidfds, want 1", got)
	}
	p, err := c.Exec(ctx, "perf-exec", runckittest.ProcessSpec("sleep", "1000"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pidfdCount(t) - before; got != 2 {
		t.Errorf("a running container with a running exec holds %d pidfds, want 2", got)
	}
	// The shared pidfd still signals, and the exit still comes, once.
	if err := p.Kill(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(ctx); err != nil || st.Signal != 9 {
		t.Errorf("exec Wait = %v, %v; want killed by SIGKILL", st, err)
	}
	if got := pidfdCount(t) - before; got != 1 {
		t.Errorf("after the exec's exit %d pidfds are held for the container, want 1", got)
	}
	if err := c.Kill(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Signal != 9 {
		t.Errorf("init Wait = %v, %v; want killed by SIGKILL", st, err)
	}
	if got := pidfdCount(t) - before; got != 0 {
		t.Errorf("after init's exit %d pidfds are held for the container, want 0", got)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var mine []runckit.Event
	for _, ev := range e.rec.Events() {
		if ev.ContainerID == c.ID() {
			mine = append(mine, ev)
		}
	}
	if got, want := kinds(mine), "create start exec-added:perf-exec exec-started:perf-exec exit:perf-exec exit"; got != want {
		t.Errorf("events = %q, want %q", got, want)
	}
}

// TestPerfPhaseHookSeesLifecycle: with a hook installed, a lifecycle reports
// the phases the bench breaks down; without one, Begin does not read the
// clock.
func TestPerfPhaseHookSeesLifecycle(t *testing.T) {
	if !phase.Begin().IsZero() {
		t.Fatal("Begin read the clock with no hook installed")
	}
	var mu sync.Mutex
	seen := map[phase.Phase]int{}
	phase.SetHook(func(p phase.Phase, d time.Duration) {
		if d < 0 {
			t.Errorf("phase %v took %v", p, d)
		}
		mu.Lock()
		seen[p]++
		mu.Unlock()
	})
	defer phase.SetHook(nil)
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "true"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range []phase.Phase{phase.Checks, phase.Bundle, phase.Cgroups, phase.CreateIO, phase.RuncCreate,
		phase.CreateAfter, phase.Pidfd, phase.Namespace, phase.Watch, phase.Publish, phase.RuncStart,
		phase.Exit, phase.RuncDelete, phase.Undo, phase.Flush} {
		if seen[p] == 0 {
			t.Errorf("phase %v was not reported", p)
		}
	}
}

package runckit_test

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// checkOrder verifies DESIGN.md rules 1-4 over one container's events:
// create first and delete last, seq contiguous, each started process's start
// before its exit, exactly one exit per process, and every exec exit before
// init's. It returns the exits by exec ID ("" is init).
func checkOrder(t *testing.T, events []runckit.Event) map[string]runckit.Event {
	t.Helper()
	exits := map[string]runckit.Event{}
	started := map[string]bool{}
	initExited := false
	for i, e := range events {
		if e.Seq != uint64(i+1) {
			t.Errorf("event %d has seq %d", i, e.Seq)
		}
		if i == 0 && e.Kind != runckit.EventCreate {
			t.Errorf("first event is %v, want create", e.Kind)
		}
		if e.Kind == runckit.EventDelete && i != len(events)-1 {
			t.Errorf("delete is event %d of %d, want last", i+1, len(events))
		}
		switch e.Kind {
		case runckit.EventStart, runckit.EventExecStarted:
			started[e.ExecID] = true
		case runckit.EventExit:
			if _, dup := exits[e.ExecID]; dup {
				t.Errorf("second exit for %q: %v", e.ExecID, e)
			}
			exits[e.ExecID] = e
			if e.ExecID == "" {
				initExited = true
			} else if initExited {
				t.Errorf("exec %q exit %v after init's exit", e.ExecID, e)
			}
			if e.ExecID != "" && !started[e.ExecID] {
				t.Errorf("exec %q exit before its start event", e.ExecID)
			}
		}
	}
	return exits
}

// sleeper starts a container whose init sleeps, ready for execs.
func (e *env) sleeper(ctx context.Context, opts ...runckit.Option) *runckit.Container {
	e.t.Helper()
	c := e.create(ctx, runckittest.Spec(e.t, "sleep", "100000"), opts...)
	if err := c.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func TestExecStartBeforeExitUnderBurst(t *testing.T) {
	ctx := runckittest.Context(t, 3*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	const n = 200
	var wg sync.WaitGroup
	sem := make(chan struct{}, 25)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p, err := c.Exec(ctx, fmt.Sprintf("true-%d", i), runckittest.ProcessSpec("true"), runckit.Stdio{})
			if err == nil {
				err = p.Start(ctx)
			}
			if err == nil {
				var st runckit.ExitStatus
				st, err = p.Wait(ctx)
				if err == nil && !st.Success() {
					err = fmt.Errorf("exec %d: %v", i, st)
				}
			}
			if err == nil {
				err = p.Delete(ctx)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
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
	exits := checkOrder(t, e.rec.Events())
	if len(exits) != n+1 {
		t.Errorf("%d exits, want %d", len(exits), n+1)
	}
}

// Init killed while 20 execs run: the kernel kills the execs with the PID
// namespace, and each of their exits is published before init's.
func TestInitExitAfterEveryExecExit(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	c := e.sleeper(ctx)
	startSleepers(t, ctx, c, 20)
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "late", runckittest.ProcessSpec("true"), runckit.Stdio{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Exec after init exit = %v, want ErrFailedPrecondition", err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	exits := checkOrder(t, e.rec.Events())
	if len(exits) != 21 {
		t.Errorf("%d exits, want 21", len(exits))
	}
}

func startSleepers(t *testing.T, ctx context.Context, c *runckit.Container, n int) []*runckit.Process {
	t.Helper()
	ps := make([]*runckit.Process, n)
	var wg sync.WaitGroup
	for i := range ps {
		p, err := c.Exec(ctx, fmt.Sprintf("sleep-%d", i), runckittest.ProcessSpec("sleep", "100000"), runckit.Stdio{})
		if err != nil {
			t.Fatal(err)
		}
		ps[i] = p
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Start(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return ps
}

// In the host PID namespace init's death does not end the execs: runckit
// kills them (DESIGN.md rule 7) so that init's exit can be published.
func TestHostPIDNamespaceInitExitKillsExecs(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	spec := hostPIDSpec(t, "sleep", "100000")
	c := e.create(ctx, spec)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ps := startSleepers(t, ctx, c, 5)
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait(ctx)
	if err != nil || st.Signal != syscall.SIGKILL {
		t.Fatalf("init Wait = %v, %v; want SIGKILL", st, err)
	}
	for _, p := range ps {
		if st, err := p.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
			t.Errorf("exec %s = %v, %v; want killed", p.ID(), st, err)
		}
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if exits := checkOrder(t, e.rec.Events()); len(exits) != 6 {
		t.Errorf("%d exits, want 6", len(exits))
	}
}

// The host program's own children are not reaped by runckit: it never
// calls wait(-1).
func TestHostChildrenUnaffected(t *testing.T) {
	ctx := runckittest.Context(t, 3*time.Minute)
	e := newEnv(t)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			c := e.create(ctx, runckittest.Spec(t, "true"))
			if err := c.Start(ctx); err != nil {
				t.Error(err)
				return
			}
			if _, err := c.Wait(ctx); err != nil {
				t.Error(err)
			}
			if err := c.Delete(ctx); err != nil {
				t.Error(err)
			}
		}
	}()
	var cmds sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := 0; i < 200; i++ {
		cmds.Add(1)
		sem <- struct{}{}
		go func() {
			defer cmds.Done()
			defer func() { <-sem }()
			if err := exec.Command("true").Run(); err != nil {
				t.Errorf("exec.Command(true).Run() #%d: %v", i, err)
			}
		}()
	}
	cmds.Wait()
	close(done)
	wg.Wait()
}

// A sink that blocks does not hold up operations or exit handling.
func TestSlowSinkBlocksNothing(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	sink := newGatedSink(func(ev runckit.Event) bool { return ev.Kind == runckit.EventCreate })
	c := e.sleeper(ctx, runckit.WithEventSink(sink))
	if _, err := runExec(t, ctx, c, "quick", "true").Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(sink.events()); n != 0 {
		t.Errorf("sink got %d events while blocked", n)
	}
	close(sink.release)
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	sink.expect(t, "create start exec-added:quick exec-started:quick exit:quick exit delete")
}

// A sink that blocks on an exit event, which runckit's watcher hands to the
// sink on its own goroutine when the queue is idle, holds up no other
// container's exit: the watcher's loop moves to a new goroutine.
func TestSlowSinkAtExitBlocksNoOtherExit(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	blocking := newGatedSink(func(ev runckit.Event) bool { return ev.Kind == runckit.EventExit && ev.ExecID == "quick" })
	otherExit := make(chan runckit.Event, 1)
	other := runckit.EventSinkFunc(func(ev runckit.Event) {
		if ev.Kind == runckit.EventExit && ev.ExecID == "other" {
			otherExit <- ev
		}
	})
	slow := e.sleeper(ctx, runckit.WithEventSink(blocking))
	fast := e.sleeper(ctx, runckit.WithEventSink(other))
	for _, p := range []*runckit.Process{
		runExec(t, ctx, slow, "quick", "true"), // its exit event gets stuck in the sink
		runExec(t, ctx, fast, "other", "true"),
	} {
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-otherExit:
	case <-ctx.Done():
		t.Fatal("the other container's exit event never came while a sink was blocked on an exit")
	}
	if err := slow.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	close(blocking.release)
	if err := fast.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*runckit.Container{slow, fast} {
		if _, err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	blocking.expect(t, "create start exec-added:quick exec-started:quick exit:quick exit delete")
}

// gatedSink records a container's events; Send blocks on each event gate
// matches until release is closed, as a slow sink would.
type gatedSink struct {
	gate    func(runckit.Event) bool
	release chan struct{}
	mu      sync.Mutex
	got     []runckit.Event
}

func newGatedSink(gate func(runckit.Event) bool) *gatedSink {
	return &gatedSink{gate: gate, release: make(chan struct{})}
}

func (s *gatedSink) Send(ev runckit.Event) {
	if s.gate(ev) {
		<-s.release
	}
	s.mu.Lock()
	s.got = append(s.got, ev)
	s.mu.Unlock()
}

func (s *gatedSink) events() []runckit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]runckit.Event(nil), s.got...)
}

// expect checks the kinds of the events received so far.
func (s *gatedSink) expect(t *testing.T, want string) {
	t.Helper()
	if got := kinds(s.events()); got != want {
		t.Errorf("events = %s, want %s", got, want)
	}
}

// hostPIDSpec is runckittest.Spec without a PID namespace: the container
// shares the host's, as DESIGN.md rule 7 is about.
func hostPIDSpec(t *testing.T, args ...string) *specs.Spec {
	spec := runckittest.Spec(t, args...)
	var ns []specs.LinuxNamespace
	for _, n := range spec.Linux.Namespaces {
		if n.Type != specs.PIDNamespace {
			ns = append(ns, n)
		}
	}
	spec.Linux.Namespaces = ns
	return spec
}

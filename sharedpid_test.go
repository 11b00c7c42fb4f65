package runckit_test

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestJoinedPIDNamespaceInitExitKillsExecs is DESIGN.md rule 7 for a
// container that joins another container's PID namespace by path: when its
// init exits, nothing else ends its execs (the namespace's init is the other
// container's), so runckit must kill them, and Wait must return with the
// exec's exit first. Unfixed, the exec lived on and Wait hung until the
// other container died.
func TestJoinedPIDNamespaceInitExitKillsExecs(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	a := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}

	spec := runckittest.Spec(t, "sleep", "100000")
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			spec.Linux.Namespaces[i].Path = "/proc/" + strconv.Itoa(a.Init().Pid()) + "/ns/pid"
		}
	}
	rec := &runckittest.Recorder{}
	b := e.create(ctx, spec, runckit.WithEventSink(rec))
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := b.Exec(ctx, "sleeper", runckittest.ProcessSpec("sleep", "1000"), runckit.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := b.Wait(waitCtx)
	if err != nil {
		t.Fatalf("Wait for the init of a container in a joined PID namespace: %v (its exec outlived init and holds its exit)", err)
	}
	if st.Signal != syscall.SIGKILL {
		t.Errorf("init status = %v, want killed by SIGKILL", st)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(rec.Events()), "create start exec-added:sleeper exec-started:sleeper exit:sleeper exit"; got != want {
		t.Errorf("events = %q, want %q", got, want)
	}
	// The other container, whose namespace it was, is untouched.
	if st := a.Init().Status(); st != runckit.StatusRunning {
		t.Errorf("container A's init is %s, want running", st)
	}
}

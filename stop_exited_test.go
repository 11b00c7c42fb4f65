package runckit_test

import (
	"testing"
	"time"

	"github.com/runckit/runckit/runckittest"
)

// TestStopAfterInitExited: Stop on a container whose init already exited
// returns init's recorded exit status, not a zero status with runc's "not
// running" error (what it returned unfixed).
func TestStopAfterInitExited(t *testing.T) {
	ctx := runckittest.Context(t, time.Minute)
	e := newEnv(t)
	c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "exit 3"))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Code != 3 {
		t.Fatalf("Wait = %v, %v; want exit code 3", st, err)
	}
	st, err := c.Stop(ctx, time.Second)
	if err != nil {
		t.Fatalf("Stop after init exited: %v", err)
	}
	if st.Code != 3 || st.Signal != 0 {
		t.Errorf("Stop after init exited = %v, want exit code 3", st)
	}
}

// TestStopWhileInitExiting calls Stop as init exits on its own: whichever
// way the race goes, Stop reports init's real status without error.
func TestStopWhileInitExiting(t *testing.T) {
	ctx := runckittest.Context(t, 2*time.Minute)
	e := newEnv(t)
	for i := 0; i < 10; i++ {
		c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "exit 3"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := c.Stop(ctx, 5*time.Second)
		if err != nil {
			t.Fatalf("try %d: Stop while init exits: %v", i, err)
		}
		// Either init exited with 3 first, or the stop signal killed it.
		if st.Code != 3 && st.Signal == 0 {
			t.Errorf("try %d: Stop = %v, want exit code 3 or a signal", i, st)
		}
	}
}

package runckit_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// TestExecRacingInitDeathIsFailedPrecondition starts execs in a loop in
// containers whose init exits on its own after 50ms, until one fails: an
// exec that can not start because init has exited or is exiting must fail
// with ErrFailedPrecondition, and with that kind only, however the race
// falls (runckit saw the exit first, or runc exec failed in setns, or runc
// found the container stopped). Unfixed, most such failures were
// ErrUnknown ("error executing setns process").
func TestExecRacingInitDeathIsFailedPrecondition(t *testing.T) {
	ctx := runckittest.Context(t, 4*time.Minute)
	e := newEnv(t)
	const containers = 12
	startFailures := 0
	for i := 0; i < containers; i++ {
		c := e.create(ctx, runckittest.Spec(t, "sh", "-c", "sleep 0.05"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for n := 0; ; n++ {
			p, err := c.Exec(ctx, "e"+strconv.Itoa(n), runckittest.ProcessSpec("true"), runckit.Stdio{})
			if err == nil {
				err = p.Start(ctx)
				if err != nil {
					startFailures++
				}
			}
			if err == nil {
				continue
			}
			if !errdefs.IsFailedPrecondition(err) {
				t.Errorf("container %d, exec %d: %v, want ErrFailedPrecondition", i, n, err)
			}
			for _, other := range []error{errdefs.ErrUnknown, errdefs.ErrNotFound, errdefs.ErrInvalidArgument} {
				if errors.Is(err, other) {
					t.Errorf("container %d, exec %d: %v is also %v", i, n, err, other)
				}
			}
			if strings.Contains(err.Error(), "setns") {
				t.Logf("container %d, exec %d: %v", i, n, err)
			}
			break
		}
		if _, err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d containers' first failure was in Start (runc exec), the rest in Exec", startFailures, containers)
}

package runckit_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runckit/runckit"
	"github.com/runckit/runckit/runckittest"
)

// checkRuncError checks that err is of the wanted errdefs kind and carries
// runc's own words as its message, right after the container's name (not
// only buried in go-runc's "did not terminate successfully" text).
func checkRuncError(t *testing.T, what string, err error, id, words string, kind error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded, want runc's %q", what, words)
		return
	}
	if !errors.Is(err, kind) {
		t.Errorf("%s = %v, want %v", what, err, kind)
	}
	if want := fmt.Sprintf("container %q: ", id); !strings.Contains(err.Error(), want+words) {
		t.Errorf("%s = %q, want runc's message %q after %q", what, err, words, want)
	}
}

// runcCmd runs plain runc on root behind runckit's back.
func runcCmd(t *testing.T, root string, args ...string) {
	t.Helper()
	if out, err := exec.Command("runc", append([]string{"--root", root}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("runc %v: %v: %s", args, err, out)
	}
}

// TestRuncErrorsCarryRuncWords drives each runc subcommand runckit calls
// into a failure with real runc and checks that the error says what runc
// said, with the right kind. Unfixed, the message was only inside go-runc's
// "<path> did not terminate successfully: exit status 1: ..." text, which
// runckit failed to parse.
func TestRuncErrorsCarryRuncWords(t *testing.T) {
	t.Run("start-already-started", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		runcCmd(t, e.root, "start", c.ID()) // behind runckit's back
		checkRuncError(t, "Start", c.Start(ctx), c.ID(), "cannot start an already running container", errdefs.ErrFailedPrecondition)
	})
	t.Run("kill-stopped", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "true"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		// runckit knows init has exited: its lifecycle guard answers, and
		// runc is not asked.
		if err := c.Kill(ctx, syscall.SIGTERM); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "stopped") {
			t.Errorf("Kill of a stopped container = %v, want ErrFailedPrecondition saying it is stopped", err)
		}
	})
	t.Run("kill-state-gone", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// runc's state is removed behind runckit's back while init runs:
		// runckit still sees a running container, runc knows none.
		if err := os.RemoveAll(filepath.Join(e.root, c.ID())); err != nil {
			t.Fatal(err)
		}
		checkRuncError(t, "Kill", c.Kill(ctx, syscall.SIGTERM), c.ID(), "container does not exist", errdefs.ErrNotFound)
		syscall.Kill(c.Init().Pid(), syscall.SIGKILL)
		if _, err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pause-paused", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		runcCmd(t, e.root, "pause", c.ID())
		defer runcCmd(t, e.root, "resume", c.ID())
		checkRuncError(t, "Pause", c.Pause(ctx), c.ID(), "container not running", errdefs.ErrFailedPrecondition)
	})
	t.Run("resume-not-paused", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		runcCmd(t, e.root, "resume", c.ID())
		checkRuncError(t, "Resume", c.Resume(ctx), c.ID(), "container not paused", errdefs.ErrFailedPrecondition)
	})
	t.Run("update-bad-cpuset", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// runckit does not check CPU lists; the kernel refuses a CPU that
		// is not there.
		err := c.Update(ctx, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "4095"}})
		checkRuncError(t, "Update", err, c.ID(), "", errdefs.ErrInvalidArgument)
		if err != nil && !strings.Contains(err.Error(), "cpuset.cpus") {
			t.Errorf("Update = %q, want runc's words naming cpuset.cpus", err)
		}
	})
	t.Run("unknown-to-runc", func(t *testing.T) {
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		runcCmd(t, e.root, "delete", "--force", c.ID()) // behind runckit's back
		_, err := c.Pids(ctx)
		checkRuncError(t, "Pids", err, c.ID(), "container does not exist", errdefs.ErrNotFound)
		// runc has nothing left to delete: Delete finishes runckit's part.
		if err := c.Delete(ctx, runckit.DeleteForce()); err != nil {
			t.Errorf("Delete of a container runc no longer knows = %v, want nil", err)
		}
	})
	t.Run("checkpoint-criu-fails", func(t *testing.T) {
		if out, err := exec.Command("criu", "check").CombinedOutput(); err == nil {
			t.Skipf("criu check passes here, so a checkpoint would not fail: %s", out)
		}
		ctx := runckittest.Context(t, time.Minute)
		e := newEnv(t)
		c := e.create(ctx, runckittest.Spec(t, "sleep", "100000"))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		err := c.Checkpoint(ctx, runckit.CheckpointOptions{ImagePath: filepath.Join(t.TempDir(), "img"), LeaveRunning: true})
		checkRuncError(t, "Checkpoint", err, c.ID(), "criu failed", errdefs.ErrUnknown)
	})
}
